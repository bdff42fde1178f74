//! `market-engine demo` restarted in the same directory carries on (issue 10, item 14): the
//! simulated inverters keep their counters, so the agents see no counter going backwards and
//! the engine keeps accepting their readings. And the demo runs the whole reward loop (issue
//! 15): with short epochs a home is paid a reward for local sales settled on chain, proven by
//! the engine, within minutes, as its stake in the API shows.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::crash::Process;
use crate::free_port;

async fn metric(http_port: u16, name: &str) -> Option<u64> {
    let text = http_get(http_port, "/metrics").await?;
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// GET over a fresh connection; `None` when the engine is not there.
pub(crate) async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

fn demo(dir: &std::path::Path, http_port: u16, mqtt_port: u16) -> Process {
    demo_with(dir, http_port, mqtt_port, &["--homes", "3"])
}

fn demo_with(dir: &std::path::Path, http_port: u16, mqtt_port: u16, more: &[&str]) -> Process {
    Process(
        Command::new(env!("CARGO_BIN_EXE_market-engine"))
            .arg("demo")
            .args(more)
            .arg("--listen")
            .arg(format!("127.0.0.1:{http_port}"))
            .arg("--mqtt-port")
            .arg(mqtt_port.to_string())
            .arg("--dir")
            .arg(dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Waits until the engine has accepted more than `above` readings; returns the count.
async fn accepted_above(http_port: u16, above: u64) -> u64 {
    for _ in 0..600 {
        if let Some(n) = metric(http_port, "gridshare_readings_accepted_total").await
            && n > above
        {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the demo accepted no more than {above} readings");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_demo_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, mqtt_port) = (free_port(), free_port());
    let first = demo(dir.path(), http_port, mqtt_port);
    accepted_above(http_port, 10).await;
    // Ctrl-C, as a person stops the demo.
    let pid = first.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    drop(first);
    let second = demo(dir.path(), http_port, mqtt_port);
    accepted_above(http_port, 20).await;
    for reason in ["counter_rollback", "clock_rollback", "exceeds_capacity"] {
        let name = format!("gridshare_readings_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(http_port, &name).await, Some(0), "{reason}");
    }
    // The devices carried on: every home's readings after the restart are plain `ok`, none
    // carried as implausible by its agent.
    let db = format!("sqlite://{}", dir.path().join("engine.sqlite").display());
    let store = market_engine::store::Store::open(&db).await.unwrap();
    for home in ["home-01", "home-02", "home-03"] {
        let readings = store.readings(home, 0, 10_000).await.unwrap();
        assert!(!readings.is_empty(), "{home}");
        let last: serde_json::Value = serde_json::from_str(readings.last().unwrap()).unwrap();
        assert!(
            !last.to_string().contains("implausible"),
            "{home}: the agent flagged a counter after the restart: {last}"
        );
    }
    drop(second);
}

/// The reward loop in the demo: meters staked, sales settled on chain, epochs proven by the
/// engine as the homes' delegate, rewards vested and claimed by the homes — seen from outside,
/// in `GET /api/v1/meters/{id}/stake`: an epoch whose settled sales (`sold_wh`, credited only
/// by the Settlement contract's batches) earned a reward greater than zero. Before, the demo's
/// epochs were a day long and nobody proved them: no demo ever paid a reward.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_pays_a_reward_for_settled_sales_within_minutes() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, mqtt_port) = (free_port(), free_port());
    let _demo = demo_with(
        dir.path(),
        http_port,
        mqtt_port,
        &["--homes", "8", "--epoch-s", "20"],
    );
    accepted_above(http_port, 0).await;
    let mut cookies = Vec::new();
    for home in ["home-02", "home-03", "home-05", "home-06", "home-07"] {
        // The demo creates its homes one after the other.
        let mut cookie = None;
        for _ in 0..120 {
            cookie = crate::prover::http_post(
                http_port,
                "/api/v1/sessions",
                &serde_json::json!({"name": home, "password": "demo-password"}),
            )
            .await
            .1;
            if cookie.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        cookies.push((home, cookie.expect("the demo's homes log in")));
    }
    let started = std::time::Instant::now();
    let mut last = serde_json::Value::Null;
    while started.elapsed() < Duration::from_secs(600) {
        for (home, cookie) in &cookies {
            let body = crate::prover::http_get_as(
                http_port,
                &format!("/api/v1/meters/{home}/stake"),
                cookie,
            )
            .await;
            let Ok(stake) = serde_json::from_str::<serde_json::Value>(&body) else {
                continue;
            };
            let paid = stake["epochs"].as_array().and_then(|epochs| {
                epochs
                    .iter()
                    .find(|e| e["reward"].as_str().is_some_and(|r| r != "0"))
                    .cloned()
            });
            if let Some(epoch) = paid {
                let sold = epoch["sold_wh"].as_u64().unwrap();
                let credited = epoch["credited_wh"].as_u64().unwrap();
                let exported = epoch["exported_wh"].as_u64().unwrap();
                assert!(sold > 0, "a reward only for settled local sales: {stake}");
                assert!(
                    credited > 0 && credited <= sold.min(exported),
                    "credited at most what was both sold and exported: {stake}"
                );
                assert_eq!(stake["proved_by_engine"], true, "{stake}");
                assert!(
                    stake["proofs"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p["status"] == "proved"),
                    "{stake}"
                );
                return;
            }
            last = stake;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    panic!("no home of the demo was paid a reward within 10 minutes; last stake seen: {last}");
}

/// The fraud watcher in the demo: with `--cheat` the last home's key also signs a second
/// inverter's readings through a second agent, and the engine's watcher gets that meter — and
/// only that one — slashed on the embedded chain, as its stake in the API shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_with_a_cloned_meter_has_it_slashed_by_the_watcher() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, mqtt_port) = (free_port(), free_port());
    let _demo = demo_with(
        dir.path(),
        http_port,
        mqtt_port,
        &["--homes", "2", "--cheat"],
    );
    accepted_above(http_port, 0).await;
    let mut slashes = None;
    for _ in 0..240 {
        slashes = metric(http_port, "gridshare_watcher_slashes_total").await;
        if slashes.is_some_and(|n| n > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        slashes,
        Some(1),
        "the cloned meter is slashed within two minutes"
    );
    for (home, slashed) in [("home-01", false), ("home-02", true)] {
        let cookie = crate::prover::http_post(
            http_port,
            "/api/v1/sessions",
            &serde_json::json!({"name": home, "password": "demo-password"}),
        )
        .await
        .1
        .expect("the demo's homes log in");
        let body =
            crate::prover::http_get_as(http_port, &format!("/api/v1/meters/{home}/stake"), &cookie)
                .await;
        let stake: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(stake["slashed"], slashed, "{home}: {stake}");
    }
}
