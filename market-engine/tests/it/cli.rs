//! The operator's command line (issue 10, item 13): `market-engine operator` finds the
//! engine's database as `serve` does, and refuses to create a new, empty one.

use std::process::Command;

#[tokio::test]
async fn operator_refuses_a_database_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_market-engine"))
            .arg("operator")
            .args(args)
            .current_dir(dir.path())
            .env("GRIDSHARE_OPERATOR_PASSWORD", "a long operator passphrase")
            .env_remove("MARKET_ENGINE_CONFIG")
            .env_remove("DATABASE_URL")
            .output()
            .unwrap()
    };
    // Regression: without --config it silently created ./gridshare-engine.sqlite.
    let out = run(&["--name", "operator"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no market engine database"), "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing created in the working directory"
    );

    // Pointed at the engine's database (here: one the engine created), it works.
    let db = dir.path().join("engine.sqlite");
    let url = format!("sqlite://{}", db.display());
    market_engine::store::Store::open(&url)
        .await
        .unwrap()
        .close()
        .await;
    let config = dir.path().join("engine.toml");
    std::fs::write(&config, format!("[database]\nurl = \"{url}\"\n")).unwrap();
    let out = run(&["--config", config.to_str().unwrap(), "--name", "operator"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = market_engine::store::Store::open(&url).await.unwrap();
    let op = store.account_by_name("operator").await.unwrap().unwrap();
    assert_eq!(op.role, market_engine::store::Role::Operator);
}
