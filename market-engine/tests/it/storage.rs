//! Storage that fails and recovers (issue 11, item 9): a full disk, a database that turns
//! read-only, backends terminated. The engine answers 503 with Retry-After while storage
//! fails (never 422, never a stuck connection), reports itself unhealthy, recovers by itself
//! once storage works again, refuses to start on a database it cannot write, and stops in
//! bounded time whatever storage does. On SQLite and PostgreSQL, through the HTTP API and the
//! binary.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::json;
use sqlx::Connection;

use crate::api::call;
use crate::market::{login, new_meter, now_s};
use crate::{Fixture, Mosquitto, free_port, peers, unique};

/// A household of `f` with an approved meter, and a sell order it can place again and again
/// (a sell holds no funds).
async fn seller(f: &Fixture) -> (String, serde_json::Value) {
    let token = login(&f.app, &unique("seller")).await;
    let (_, meter) = new_meter(&f.app, &f.store, &token, "st").await;
    let community = f.market.community();
    let slot = community.calendar.slot_delivering_at(now_s()).unwrap() + 2;
    let feed_in = community.terms(slot).unwrap().band.feed_in_per_kwh;
    let order = json!({"meter_id": meter, "slot": slot, "side": "sell", "energy_wh": 100, "price_per_kwh": feed_in});
    (token, order)
}

/// Places `order`: the status, the body and the Retry-After header.
async fn place(
    f: &Fixture,
    token: &str,
    order: &serde_json::Value,
) -> (StatusCode, serde_json::Value, Option<String>) {
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/api/v1/orders")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(order.to_string()))
        .unwrap();
    let res = tower::ServiceExt::oneshot(f.app.clone(), req)
        .await
        .unwrap();
    let status = res.status();
    let retry_after = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&body).unwrap_or_default(),
        retry_after,
    )
}

/// Sets `PRAGMA max_page_count` on every connection of the pool (all of them held at once, so
/// each is a different one): a full disk, or space freed again.
async fn set_page_limit(f: &Fixture, pages: Option<i64>) {
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(f.store.pool().acquire().await.unwrap());
    }
    for conn in &mut held {
        let limit = match pages {
            Some(p) => p,
            None => sqlx::query_scalar::<_, i64>("PRAGMA page_count")
                .fetch_one(&mut **conn)
                .await
                .unwrap(),
        };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "PRAGMA max_page_count = {limit}"
        )))
        .execute(&mut **conn)
        .await
        .unwrap();
    }
}

/// Regression (issue 11, item 9): after the disk filled, orders failed with 422 "attempted to
/// call begin_with at non-zero transaction depth" until a restart — SQLite rolls a transaction
/// back by itself on SQLITE_FULL, sqlx's own ROLLBACK then failed, and the connection went
/// back to the pool still counted inside a transaction. Now a full disk answers 503 with
/// Retry-After, and once space is free every order goes through again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_and_orders_flow_again_once_space_is_free() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("engine.sqlite").display());
    let f = Fixture::open(&url).await;
    let (token, order) = seller(&f).await;
    assert_eq!(place(&f, &token, &order).await.0, StatusCode::CREATED);

    set_page_limit(&f, None).await;
    let mut refused = None;
    for _ in 0..2000 {
        let answer = place(&f, &token, &order).await;
        match answer.0 {
            StatusCode::CREATED => {}
            // The test's order rate limit, not the disk.
            StatusCode::TOO_MANY_REQUESTS => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => {
                refused = Some(answer);
                break;
            }
        }
    }
    let (status, body, retry_after) = refused.expect("the full disk refuses an order");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(retry_after.is_some(), "503 carries Retry-After");
    assert!(
        body["error"].as_str().unwrap().contains("storage"),
        "{body}"
    );

    // Space is freed: every order goes through again, on every connection, without a restart.
    set_page_limit(&f, Some(1_000_000)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..40 {
        let (status, body, _) = place(&f, &token, &order).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "order {i} after space was freed: {body}"
        );
    }
    f.store.close().await;
}

/// A PostgreSQL database of its own (so it can be made read-only), or `None` without
/// PostgreSQL: its URL and an admin connection to the server.
async fn own_postgres_database() -> Option<(String, String, sqlx::AnyConnection)> {
    let server = peers::available(peers::Peer::Postgres)?.as_str().to_owned();
    sqlx::any::install_default_drivers();
    let mut admin = sqlx::AnyConnection::connect(&server).await.unwrap();
    let name = unique("ro").replace('-', "_");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let base = server.split('?').next().unwrap();
    let (host, _) = base.rsplit_once('/').unwrap();
    Some((format!("{host}/{name}"), name, admin))
}

/// Turns `db` read-only (or writable again) and ends every session on it, as an operator
/// or a failover would; the engine's next statements fail on dead connections, then on
/// read-only ones.
async fn set_read_only(admin: &mut sqlx::AnyConnection, db: &str, read_only: bool) {
    let setting = if read_only {
        "SET default_transaction_read_only = on"
    } else {
        "RESET default_transaction_read_only"
    };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {db} {setting}"
    )))
    .execute(&mut *admin)
    .await
    .unwrap();
    if read_only {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(db)
        .execute(&mut *admin)
        .await
        .unwrap();
    }
}

/// Regression (issue 11, item 9) on PostgreSQL: a database turned read-only with its sessions
/// terminated answered orders 422; now 503 with Retry-After and `/healthz` 503, and once it is
/// writable again orders go through and `/healthz` is 200 without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_postgres_answers_503_and_recovers_by_itself() {
    let Some((url, db, mut admin)) = own_postgres_database().await else {
        return;
    };
    let f = Fixture::open(&url).await;
    let (token, order) = seller(&f).await;
    assert_eq!(place(&f, &token, &order).await.0, StatusCode::CREATED);
    let (status, _, _) = call(&f.app, "GET", "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);

    set_read_only(&mut admin, &db, true).await;
    for i in 0..5 {
        let (status, body, retry_after) = place(&f, &token, &order).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "order {i}: {body}");
        assert!(retry_after.is_some());
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body, _) = call(&f.app, "GET", "/healthz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    set_read_only(&mut admin, &db, false).await;
    for i in 0..20 {
        let (status, body, _) = place(&f, &token, &order).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "order {i} once writable: {body}"
        );
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body, _) = call(&f.app, "GET", "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    f.store.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {db} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}

/// The engine binary with `config`, its standard error to `stderr`.
fn spawn_engine(config: &std::path::Path, stderr: Stdio) -> crate::crash::Process {
    crate::crash::Process(
        Command::new(env!("CARGO_BIN_EXE_market-engine"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap(),
    )
}

/// Waits up to `within` for the process to exit; its status, if it did.
fn exited(
    process: &mut crate::crash::Process,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = process.0.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Regression (issue 11, item 9): on a read-only SQLite database the engine started and
/// reported healthy. Now it refuses to start, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_refuses_to_start_on_a_read_only_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("engine.sqlite");
    // An engine database that exists, opened read-only (as root ignores file modes, the URL
    // says it).
    market_engine::store::Store::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap()
        .close()
        .await;
    let config = dir.path().join("engine.toml");
    std::fs::write(
        &config,
        format!(
            "community = \"ro\"\n[http]\nlisten = \"127.0.0.1:{}\"\n[database]\nurl = \"sqlite://{}?mode=ro\"\n[mqtt]\nembedded_listen = \"127.0.0.1:{}\"\n[chain]\nbackend = \"none\"\n",
            free_port(),
            db.display(),
            free_port()
        ),
    )
    .unwrap();
    let mut engine = spawn_engine(&config, Stdio::piped());
    let status = exited(&mut engine, Duration::from_secs(20))
        .expect("the engine exits instead of running on a read-only database");
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(engine.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("cannot write"), "{stderr}");
}

/// Regression (issue 11, item 9): with storage failing under a reading in flight, the engine
/// hung on SIGTERM (its ingest retried the store for ever). Now `/healthz` says 503 and
/// SIGTERM stops it within its grace period. PostgreSQL turned read-only under a running
/// engine binary, readings through a Mosquitto the test starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_storage_failing_the_engine_reports_unhealthy_and_stops_on_sigterm() {
    let Some((url, db, mut admin)) = own_postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(broker) = Mosquitto::start(dir.path(), "") else {
        return;
    };
    // The meter is approved before the engine starts.
    let meter = "ro-meter";
    let key = {
        let store = market_engine::store::Store::open(&url).await.unwrap();
        let account = store
            .create_account(
                "ro-home",
                "unused-hash",
                market_engine::store::Role::Household,
                0,
            )
            .await
            .unwrap();
        let rng = ring::rand::SystemRandom::new();
        let key = gridshare_core::reading::MeterKey::from_pkcs8(
            &gridshare_core::reading::MeterKey::generate_pkcs8(&rng).unwrap(),
            &rng,
        )
        .unwrap();
        let keys = market_engine::ingest::KeyRegistry::default();
        market_engine::meters::register(
            &store,
            &keys,
            account,
            meter,
            &key.public_key().to_hex(),
            10,
            0,
        )
        .await
        .unwrap();
        crate::approve(&store, &keys, meter, &Default::default(), 4_000).await;
        store.close().await;
        key
    };
    let http_port = free_port();
    let config = dir.path().join("engine.toml");
    std::fs::write(
        &config,
        format!(
            "community = \"ro\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n[database]\nurl = \"{url}\"\n[mqtt]\nembedded_listen = \"\"\nurl = \"{}\"\n[chain]\nbackend = \"none\"\n",
            broker.url()
        ),
    )
    .unwrap();
    // Not piped: a full pipe nobody reads would block the engine's logging, not its storage.
    let mut engine = spawn_engine(&config, Stdio::null());
    let healthz = move || async move {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", http_port))
            .await
            .ok()?;
        let (mut r, mut w) = stream.into_split();
        tokio::io::AsyncWriteExt::write_all(
            &mut w,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .ok()?;
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut r, &mut text)
            .await
            .ok()?;
        text.split(' ').nth(1)?.parse::<u16>().ok()
    };
    let mut up = false;
    for _ in 0..200 {
        if healthz().await == Some(200) {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the engine came up");

    set_read_only(&mut admin, &db, true).await;
    // A valid reading arrives: the engine cannot store it, so it cannot acknowledge it.
    let reading = crate::market::signed(&key, meter, 1, now_s(), 100, 0);
    let (client, mut events) = rumqttc::AsyncClient::new(
        rumqttc::MqttOptions::new(unique("ro-agent"), "127.0.0.1", broker.port),
        10,
    );
    client
        .publish(
            gridshare_core::mqtt::MeterTopics::new("gridshare/v1", "ro", meter).reading,
            rumqttc::QoS::AtLeastOnce,
            false,
            reading.to_json().into_bytes(),
        )
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while !matches!(
            events.poll().await,
            Ok(rumqttc::Event::Incoming(rumqttc::Incoming::PubAck(_))) | Err(_)
        ) {}
    })
    .await;
    let mut unhealthy = false;
    for _ in 0..50 {
        if healthz().await == Some(503) {
            unhealthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(unhealthy, "/healthz reports the read-only database");

    let signalled = Instant::now();
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(engine.0.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let stopped = exited(&mut engine, Duration::from_secs(25));
    assert!(
        stopped.is_some(),
        "the engine did not stop within 25 s of SIGTERM"
    );
    eprintln!(
        "stopped {} ms after SIGTERM with storage failing",
        signalled.elapsed().as_millis()
    );
    set_read_only(&mut admin, &db, false).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {db} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}
