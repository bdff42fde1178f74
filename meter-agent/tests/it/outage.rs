//! Nothing is lost: a broker outage while the agent keeps polling, and `kill -9` of the agent
//! binary in the middle of a run.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use meter_agent::agent::{self, AgentStats};
use meter_agent::outbox::Outbox;
use tokio::sync::watch;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_every_reading_arrives_exactly_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut broker) = persistent_mosquitto(dir.path()) else {
        return;
    };
    let community = community("outage");
    let device = simulated_device(60_000).await;
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let config = agent_config(
        &agent_dir,
        "home-04",
        &community,
        device.addr,
        &broker.url(),
    );
    let key = public_key(&config);
    // A persistent session: what the agent publishes while the subscriber is still
    // reconnecting after the outage is kept for it, as for the market engine.
    let mut rx = subscribe(
        &broker.url(),
        &format!("gridshare/v1/{community}/meters/+/reading"),
        &format!("{community}-engine"),
        true,
    )
    .await;

    let stats = Arc::new(AgentStats::default());
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(agent::run(config.clone(), stopped, stats.clone()));
    let mut readings = collect_readings(&mut rx, &key, 10, Duration::from_secs(20)).await;

    broker.stop();
    let stored_before = stats.stored.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stored_during = stats.stored.load(Ordering::Relaxed) - stored_before;
    assert!(
        stored_during >= 5,
        "the agent keeps polling during the outage ({stored_during} readings)"
    );
    broker.restart();

    // Everything stored so far, and some more, arrives once each after dedupe, in order.
    let total = usize::try_from(stats.stored.load(Ordering::Relaxed)).unwrap() + 5;
    let mut seen: std::collections::BTreeSet<u64> =
        readings.iter().map(|r| r.reading.seq).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while readings.len() < total {
        let (_, payload) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {total} readings arrived", readings.len()))
            .unwrap();
        let signed = gridshare_core::reading::SignedReading::from_json_bytes(&payload).unwrap();
        signed.verify(&key).unwrap();
        if seen.insert(signed.reading.seq) {
            readings.push(signed);
        }
    }
    assert_gap_free(&readings, 1);

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let (outbox, _) = Outbox::open(&config.outbox_path(), &config.meter_id().unwrap())
        .await
        .unwrap();
    assert_eq!(outbox.len().await.unwrap(), 0);
}

fn write_config(
    path: &std::path::Path,
    dir: &std::path::Path,
    community: &str,
    device: std::net::SocketAddr,
    mqtt: &str,
) {
    std::fs::write(
        path,
        format!(
            r#"
meter_id = "home-05"
community = "{community}"
key_file = "{dir}/meter.key"
data_dir = "{dir}"
poll_interval_ms = 100
[modbus]
address = "{device}"
timeout_ms = 500
[mqtt]
url = "{mqtt}"
reconnect_initial_ms = 100
reconnect_max_ms = 500
"#,
            dir = dir.display()
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_then_restart_leaves_no_gap_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = broker_url();
    let community = community("kill9");
    let device = simulated_device(60_000).await;
    let key = meter_agent::keys::generate(&dir.path().join("meter.key"), false).unwrap();
    let config = dir.path().join("agent.toml");
    write_config(&config, dir.path(), &community, device.addr, &url);
    let mut rx = subscribe(
        &url,
        &format!("gridshare/v1/{community}/meters/+/reading"),
        &format!("{community}-engine"),
        true,
    )
    .await;
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_meter-agent"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };

    let mut agent = spawn();
    let mut readings = collect_readings(&mut rx, &key, 8, Duration::from_secs(30)).await;
    agent.kill().unwrap(); // SIGKILL
    agent.wait().unwrap();

    let mut agent = spawn();
    let mut seen: std::collections::BTreeSet<u64> =
        readings.iter().map(|r| r.reading.seq).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while readings.len() < 25 {
        let (_, payload) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("readings after restart")
            .unwrap();
        let signed = gridshare_core::reading::SignedReading::from_json_bytes(&payload).unwrap();
        signed.verify(&key).unwrap();
        if seen.insert(signed.reading.seq) {
            readings.push(signed);
        }
    }
    assert_gap_free(&readings, 1);

    // SIGTERM: a graceful stop that exits 0.
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(agent.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = agent.wait().unwrap();
    assert!(exit.success(), "agent exit after SIGTERM: {exit:?}");
}

#[test]
fn verify_command_accepts_a_good_reading_and_rejects_a_tampered_one() {
    let vectors: serde_json::Value =
        serde_json::from_str(include_str!("../../../core/tests/vectors/reading-v1.json")).unwrap();
    let key = vectors["public_key_sec1_hex"].as_str().unwrap();
    let good = vectors["vectors"][0]["envelope"].to_string();
    let mut tampered: serde_json::Value = vectors["vectors"][0]["envelope"].clone();
    tampered["export_wh"]["value"] = 9_999_999.into();
    let run = |input: String| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_meter-agent"))
            .args(["verify", "--public-key", key])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let ok = run(good);
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).contains("OK: meter home-07 seq 1"));
    let bad = run(tampered.to_string());
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("signature does not match"));
    let garbage = run("{\"format\":".into());
    assert_eq!(garbage.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&garbage.stderr).contains("malformed"));
}

/// Every reading message on `rx` within `within`, raw, by sequence number, in arrival order
/// (duplicates included), until `done` says enough arrived.
async fn receive_until(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    within: Duration,
    got: &mut Vec<(u64, Vec<u8>)>,
    done: impl Fn(&[(u64, Vec<u8>)]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + within;
    while !done(got.as_slice()) {
        let (topic, payload) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out; received seqs {:?}", seqs(got.as_slice())))
            .unwrap();
        if topic.ends_with("/reading") {
            let signed = gridshare_core::reading::SignedReading::from_json_bytes(&payload).unwrap();
            got.push((signed.reading.seq, payload));
        }
    }
}

fn seqs(got: &[(u64, Vec<u8>)]) -> Vec<u64> {
    got.iter().map(|(s, _)| *s).collect()
}

/// Publishes `payload` on the meter's resend topic, as the market engine does.
async fn ask(url: &str, community: &str, meter: &str, payload: &str) {
    let rest = url.split_once("://").unwrap().1;
    let (host, port) = rest.rsplit_once(':').unwrap();
    let options = rumqttc::MqttOptions::new(
        format!("{community}-asker"),
        host,
        port.parse::<u16>().unwrap(),
    );
    let (client, mut events) = rumqttc::AsyncClient::new(options, 10);
    let topic = gridshare_core::mqtt::MeterTopics::new("gridshare/v1", community, meter).resend;
    client
        .publish(
            topic,
            rumqttc::QoS::AtLeastOnce,
            false,
            payload.as_bytes().to_vec(),
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Incoming::PubAck(_)) =
                events.poll().await.unwrap()
            {
                return;
            }
        }
    })
    .await
    .expect("the broker acknowledged the request");
    let _ = client.disconnect().await;
}

/// Issue 11, item 6: the agent keeps acknowledged readings for its retention and, when the
/// market engine asks on the meter's resend topic, publishes the very same signed bytes again;
/// what it does not keep, and malformed requests, produce nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_readings_are_sent_again_on_the_engines_request() {
    let dir = tempfile::tempdir().unwrap();
    let url = broker_url();
    let community = community("resend");
    let device = simulated_device(60_000).await;
    let mut config = agent_config(dir.path(), "home-06", &community, device.addr, &url);
    let mut rx = subscribe(
        &url,
        &format!("gridshare/v1/{community}/meters/+/reading"),
        &format!("{community}-engine"),
        false,
    )
    .await;
    let stats = Arc::new(AgentStats::default());
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(agent::run(config.clone(), stopped, stats.clone()));
    let mut got = Vec::new();
    receive_until(&mut rx, Duration::from_secs(20), &mut got, |g| {
        (1..=10).all(|s| seqs(g).contains(&s))
    })
    .await;
    let publish = stats.publish.clone();
    for _ in 0..100 {
        if publish.acknowledged.load(Ordering::Relaxed) >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first: std::collections::BTreeMap<u64, Vec<u8>> = got.iter().cloned().collect();

    ask(&url, &community, "home-06", r#"{"ranges":[[2,4],[7,7]]}"#).await;
    let asked = [2u64, 3, 4, 7];
    receive_until(&mut rx, Duration::from_secs(10), &mut got, |g| {
        asked
            .iter()
            .all(|s| seqs(g).iter().filter(|x| *x == s).count() >= 2)
    })
    .await;
    for s in asked {
        for (_, payload) in got.iter().filter(|(x, _)| *x == s) {
            assert_eq!(payload, &first[&s], "seq {s} sent again byte for byte");
        }
    }
    assert_eq!(publish.resent.load(Ordering::Relaxed), 4);

    // Malformed or unbounded requests are refused; readings it never signed produce nothing.
    for bad in [
        r#"{"ranges":[[5,1]]}"#,
        r#"{"ranges":[[1,1000000]]}"#,
        "not json",
    ] {
        ask(&url, &community, "home-06", bad).await;
    }
    ask(
        &url,
        &community,
        "home-06",
        r#"{"ranges":[[100000,100010]]}"#,
    )
    .await;
    for _ in 0..100 {
        if publish.resend_requests.load(Ordering::Relaxed) >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(publish.resend_requests.load(Ordering::Relaxed), 5);
    assert_eq!(publish.resend_refused.load(Ordering::Relaxed), 3);
    assert_eq!(publish.resent.load(Ordering::Relaxed), 4);
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();

    // Past the retention the readings are gone: restarted with none, the agent answers nothing.
    let (outbox, _) = Outbox::open(&config.outbox_path(), &config.meter_id().unwrap())
        .await
        .unwrap();
    assert!(outbox.retained_len().await.unwrap() >= 10);
    outbox.close().await;
    config.resend_retention_s = 0;
    let stats = Arc::new(AgentStats::default());
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(agent::run(config.clone(), stopped, stats.clone()));
    for _ in 0..100 {
        if stats.publish.connections.load(Ordering::Relaxed) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    ask(&url, &community, "home-06", r#"{"ranges":[[1,10]]}"#).await;
    for _ in 0..100 {
        if stats.publish.resend_requests.load(Ordering::Relaxed) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stats.publish.resend_requests.load(Ordering::Relaxed), 1);
    assert_eq!(stats.publish.resent.load(Ordering::Relaxed), 0);
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
}
