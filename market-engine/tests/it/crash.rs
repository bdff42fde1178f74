//! `kill -9` of the engine binary while orders and readings flow; after the restart every
//! order the clients were told was accepted is in the order log, and every reading the meter
//! agent signed is stored once, gap-free.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meter_agent::agent::{self, AgentStats};
use meter_agent::config::AgentConfig;
use serde_json::{Value, json};
use sqlx::Row;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::{Mosquitto, free_port};

/// One HTTP/1.1 request over a fresh connection; `None` when the server is not there.
async fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Option<(u16, Value)> {
    http_with_headers(port, method, path, token, body)
        .await
        .map(|(status, _, body)| (status, body))
}

/// [`http`], with the response's header lines.
async fn http_with_headers(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Option<(u16, String, Value)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let text = String::from_utf8_lossy(&response);
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Some((
        status,
        head.to_owned(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    ))
}

pub(crate) struct Process(pub(crate) Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_engine(config: &Path, http_port: u16) -> Process {
    let process = Process(
        Command::new(env!("CARGO_BIN_EXE_market-engine"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    for _ in 0..200 {
        if let Some((200, _)) = http(http_port, "GET", "/healthz", None, None).await {
            return process;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("engine did not come up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_order_or_reading() {
    let dir = tempfile::tempdir().unwrap();
    let Some(broker) = Mosquitto::start(dir.path(), "") else {
        return;
    };
    let mqtt_port = broker.port;
    let http_port = free_port();
    let db = dir.path().join("engine.sqlite");
    let config = dir.path().join("engine.toml");
    std::fs::write(
        &config,
        format!(
            "community = \"crash\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n[database]\nurl = \"sqlite://{}\"\n[mqtt]\nembedded_listen = \"\"\nurl = \"mqtt://127.0.0.1:{mqtt_port}\"\n[chain]\nbackend = \"none\"\n",
            db.display()
        ),
    )
    .unwrap();
    // The household exists and has paid in before the engine starts, so its bids flow too.
    {
        let store = market_engine::store::Store::open(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let hash = market_engine::api::auth::hash_password("correct horse battery")
            .await
            .unwrap();
        let id = store
            .create_account(
                "crash-home",
                &hash,
                market_engine::store::Role::Household,
                0,
            )
            .await
            .unwrap();
        store
            .create_account(
                "crash-operator",
                &hash,
                market_engine::store::Role::Operator,
                0,
            )
            .await
            .unwrap();
        sqlx::query("INSERT INTO funding (account_id, amount, reference, created_ms) VALUES ($1, $2, 'opening', 0)")
            .bind(id)
            .bind(1_000_000_000_000i64)
            .execute(store.pool())
            .await
            .unwrap();
        store.close().await;
    }
    let mut engine = start_engine(&config, http_port).await;

    let creds = json!({"name": "crash-home", "password": "correct horse battery"});
    let (_, head, _) = http_with_headers(http_port, "POST", "/api/v1/sessions", None, Some(&creds))
        .await
        .unwrap();
    // The session is in the cookie only; its secret also works as a bearer token.
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .map(str::to_owned);
    let token = crate::api::session_of(cookie);
    let agent_dir = tempfile::tempdir().unwrap();
    let key_file = agent_dir.path().join("meter.key");
    let public = meter_agent::keys::generate(&key_file, false).unwrap();
    let meter = json!({"meter_id": "crash-meter", "public_key": public.to_hex()});
    assert_eq!(
        http(
            http_port,
            "POST",
            "/api/v1/meters",
            Some(&token),
            Some(&meter)
        )
        .await
        .unwrap()
        .0,
        201
    );
    // The operator approves the meter; only then do its readings count.
    let operator = json!({"name": "crash-operator", "password": "correct horse battery"});
    let (_, head, _) =
        http_with_headers(http_port, "POST", "/api/v1/sessions", None, Some(&operator))
            .await
            .unwrap();
    let operator_token = crate::api::session_of(
        head.lines()
            .find_map(|l| l.strip_prefix("set-cookie: "))
            .map(str::to_owned),
    );
    let approval = json!({
        "export_capacity_w": market_engine::meters::MAX_CAPACITY_W,
        "import_capacity_w": market_engine::meters::MAX_CAPACITY_W,
        "manufacturer": "Gridshare", "model": "SIM-HYBRID", "serial": "SIM-000001",
    });
    let (status, body) = http(
        http_port,
        "POST",
        "/api/v1/meters/crash-meter/approval",
        Some(&operator_token),
        Some(&approval),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");

    // Readings flow: a simulated inverter read by a real agent.
    let server = crate::simulated_inverter().await;
    let mut agent_config = AgentConfig {
        meter_id: "crash-meter".into(),
        community: "crash".into(),
        key_file,
        data_dir: agent_dir.path().to_path_buf(),
        poll_interval_ms: 100,
        ..AgentConfig::default()
    };
    agent_config.modbus.address = server.addr.to_string();
    agent_config.mqtt.url = format!("mqtt://127.0.0.1:{mqtt_port}");
    let (stop_agent, agent_stopped) = watch::channel(false);
    let agent = tokio::spawn(agent::run(
        agent_config.clone(),
        agent_stopped,
        Arc::new(AgentStats::default()),
    ));

    // Orders flow: every order the engine answered 201 for is recorded.
    let (_, current) = http(http_port, "GET", "/api/v1/slots/current", None, None)
        .await
        .unwrap();
    let slot = current["delivering"].as_u64().unwrap() + 3;
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let (stop_orders, orders_stopped) = watch::channel(false);
    let orders = {
        let acknowledged = acknowledged.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            while !*orders_stopped.borrow() {
                i += 1;
                let side = if i.is_multiple_of(2) { "buy" } else { "sell" };
                let price = if side == "buy" { 12_000 } else { 20_000 };
                let order = json!({"meter_id": "crash-meter", "slot": slot, "side": side, "energy_wh": i, "price_per_kwh": price});
                match http(
                    http_port,
                    "POST",
                    "/api/v1/orders",
                    Some(&token),
                    Some(&order),
                )
                .await
                {
                    Some((201, body)) => acknowledged
                        .lock()
                        .unwrap()
                        .push(body["order_id"].as_u64().unwrap()),
                    Some(_) | None => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    engine.0.kill().unwrap(); // SIGKILL, mid-flow
    engine.0.wait().unwrap();
    let acked_before_crash = acknowledged.lock().unwrap().len();
    assert!(
        acked_before_crash >= 10,
        "orders flowed before the crash ({acked_before_crash})"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let engine = start_engine(&config, http_port).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_orders.send(true).unwrap();
    orders.await.unwrap();
    let _ = stop_agent.send(true);
    agent.await.unwrap().unwrap();

    // Nothing signed is lost: every reading the agent let go of (acknowledged, so gone from
    // its outbox) is stored by the engine, once; what the agent had not yet had acknowledged
    // when it was stopped — a second after the engine came back, so possibly the last few —
    // is still in its outbox, to be sent at its next start. (This asserted an empty outbox,
    // which depends on how fast the reconnect drained it: it failed under load.) Give the
    // engine time to store what the broker has.
    let (outbox, state) = meter_agent::outbox::Outbox::open(
        &agent_config.outbox_path(),
        &agent_config.meter_id().unwrap(),
    )
    .await
    .unwrap();
    let waiting: BTreeSet<i64> = outbox
        .pending(0, u32::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|p| i64::try_from(p.seq).unwrap())
        .collect();
    let signed = state.next_seq - 1;
    let store = market_engine::store::Store::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let mut stored: Vec<i64> = Vec::new();
    let covered = |stored: &[i64]| -> BTreeSet<i64> {
        stored.iter().chain(waiting.iter()).copied().collect()
    };
    for _ in 0..100 {
        stored =
            sqlx::query("SELECT seq FROM readings WHERE meter_id = 'crash-meter' ORDER BY seq")
                .fetch_all(store.pool())
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.get(0))
                .collect();
        if u64::try_from(covered(&stored).len()).unwrap() == signed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expected: Vec<i64> = (1..=i64::try_from(signed).unwrap()).collect();
    assert_eq!(
        covered(&stored).into_iter().collect::<Vec<_>>(),
        expected,
        "every signed reading stored or still waiting in the agent's outbox, gap-free (waiting: {waiting:?})"
    );
    let once: BTreeSet<i64> = stored.iter().copied().collect();
    assert_eq!(once.len(), stored.len(), "each reading stored once");
    assert!(
        waiting.len() < stored.len(),
        "most readings were delivered ({} stored, {} waiting)",
        stored.len(),
        waiting.len()
    );

    let logged: BTreeSet<u64> =
        sqlx::query("SELECT order_id FROM order_events WHERE kind = 'submit'")
            .fetch_all(store.pool())
            .await
            .unwrap()
            .into_iter()
            .map(|r| u64::try_from(r.get::<i64, _>(0)).unwrap())
            .collect();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > acked_before_crash,
        "orders were accepted again after the restart"
    );
    for id in &acknowledged {
        assert!(logged.contains(id), "acknowledged order {id} lost");
    }
    let unique: BTreeSet<_> = acknowledged.iter().collect();
    assert_eq!(
        unique.len(),
        acknowledged.len(),
        "no order id handed out twice"
    );
    // The restarted engine holds for every logged bid exactly its cost: funds are rebuilt
    // from the order log, nothing held twice or forgotten.
    let (_, funds) = http(http_port, "GET", "/api/v1/balance", Some(&token), None)
        .await
        .unwrap();
    let bids: i64 = sqlx::query(
        "SELECT energy_wh, price_per_kwh FROM order_events WHERE kind = 'submit' AND side = 'buy'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap()
    .into_iter()
    .map(|r| r.get::<i64, _>(0) * r.get::<i64, _>(1) / 1000)
    .sum();
    assert!(bids > 0, "bids were accepted");
    assert_eq!(funds["held_by_bids"], bids, "{funds}");
    assert_eq!(funds["available"], 1_000_000_000_000i64 - bids, "{funds}");

    // A graceful stop exits cleanly.
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(engine.0.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let mut engine = engine;
    assert!(engine.0.wait().unwrap().success());
}
