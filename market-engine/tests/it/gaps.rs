//! Readings lost between the broker and the engine (issue 11, item 6): a Mosquitto without
//! persistence restarted while the engine is away loses what it queued for the engine; the
//! engine notices the gap in the meter's sequence, asks the agent, and every reading arrives.
//! The gap bookkeeping on SQLite and PostgreSQL, and what the operator sees.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use market_engine::gaps::{Requester, ResendLink};
use market_engine::server::Engine;
use market_engine::store::gaps::{Gap, GapStatus};
use market_engine::store::{Store, Stored};
use meter_agent::agent::{self, AgentStats};
use meter_agent::config::AgentConfig;
use sqlx::Row;
use tokio::sync::watch;

use crate::api::call;
use crate::market::{login, signed};
use crate::{Fixture, Mosquitto, databases, unique};

/// Stored sequence numbers of `meter`, ascending.
async fn stored_seqs(store: &Store, meter: &str) -> Vec<u64> {
    sqlx::query("SELECT seq FROM readings WHERE meter_id = $1 ORDER BY seq")
        .bind(meter)
        .fetch_all(store.pool())
        .await
        .unwrap()
        .into_iter()
        .map(|r| u64::try_from(r.get::<i64, _>(0)).unwrap())
        .collect()
}

/// Issue 11, item 6 (regression): the engine is stopped, the agent keeps publishing into
/// Mosquitto's queue for the engine's session, Mosquitto (no persistence) restarts and loses
/// that queue, the engine starts again. Before, those readings were lost for good; now the
/// engine finds the gap, asks the agent on the meter's resend topic, and every reading
/// arrives. `GRIDSHARE_TEST_OUTAGE_S` sets how long the engine is away (default 2 s); the
/// test prints how long after the engine's restart every gap was filled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_a_restarted_broker_lost_are_asked_for_again_and_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut broker) = Mosquitto::start(dir.path(), "max_queued_messages 0\n") else {
        return;
    };
    let outage = Duration::from_secs(
        std::env::var("GRIDSHARE_TEST_OUTAGE_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2),
    );
    for url in databases(dir.path()).await {
        let community = unique("gaps");
        let mut config = crate::engine_config(&community, &url);
        config.mqtt.embedded_listen = String::new();
        config.mqtt.url = broker.url();
        let engine = Engine::start(&config).await.unwrap();

        let server = crate::simulated_inverter().await;
        let agent_dir = tempfile::tempdir().unwrap();
        let key_file = agent_dir.path().join("meter.key");
        let public = meter_agent::keys::generate(&key_file, false).unwrap();
        let meter = unique("m");
        let meter = meter[meter.len().saturating_sub(32)..].to_owned();
        let account = crate::household_account(&engine.store, "home").await;
        let device = crate::simulated_device("SIM-000001");
        crate::register_approved(
            &engine.store,
            &engine.keys,
            &meter,
            account,
            public,
            &device,
        )
        .await;
        let mut agent_config = AgentConfig {
            meter_id: meter.clone(),
            community: community.clone(),
            key_file,
            data_dir: agent_dir.path().to_path_buf(),
            poll_interval_ms: 100,
            ..AgentConfig::default()
        };
        agent_config.modbus.address = server.addr.to_string();
        agent_config.mqtt.url = broker.url();
        agent_config.mqtt.reconnect_initial_ms = 100;
        agent_config.mqtt.reconnect_max_ms = 500;
        let stats = Arc::new(AgentStats::default());
        let (stop, stopped) = watch::channel(false);
        let agent = tokio::spawn(agent::run(agent_config.clone(), stopped, stats.clone()));
        let (store, m) = (&engine.store, meter.as_str());
        wait_for(
            "10 readings stored",
            Duration::from_secs(30),
            || async move { stored_seqs(store, m).await.len() >= 10 },
        )
        .await;

        // The engine goes away; the broker acknowledges what the agent publishes meanwhile and
        // queues it for the engine's persistent session, in memory only.
        engine.stop().await;
        let acked_before = stats.publish.acknowledged.load(Ordering::Relaxed);
        tokio::time::sleep(outage).await;
        let acked_during = stats.publish.acknowledged.load(Ordering::Relaxed) - acked_before;
        assert!(
            acked_during >= 5,
            "{url}: the broker acknowledged readings while the engine was away ({acked_during})"
        );
        broker.stop();
        broker.restart();

        let engine = Engine::start(&config).await.unwrap();
        let back = Instant::now();
        let (store, m) = (&engine.store, meter.as_str());
        let signed_by = stats.stored.load(Ordering::Relaxed);
        wait_for(
            "every reading stored, no gap left",
            Duration::from_secs(60),
            || async move {
                let seqs = stored_seqs(store, m).await;
                let totals = store.gap_totals().await.unwrap();
                seqs.len() as u64 >= signed_by
                    && seqs.iter().copied().eq(1..=seqs.len() as u64)
                    && totals.open_gaps == 0
                    && totals.unfillable_gaps == 0
            },
        )
        .await;
        let filled = back.elapsed();
        let recovered = engine.ingest.recovered.load(Ordering::Relaxed);
        assert!(
            recovered >= 1,
            "{url}: the broker lost readings and the agent sent them again"
        );
        assert!(engine.ingest.gaps.requests.load(Ordering::Relaxed) >= 1);
        assert!(stats.publish.resent.load(Ordering::Relaxed) >= recovered);
        eprintln!(
            "{url}: engine away {} s, {acked_during} readings acknowledged by the broker meanwhile, \
             {recovered} lost by its restart and sent again; every gap filled {} ms after the \
             engine was back",
            outage.as_secs(),
            filled.as_millis()
        );
        stop.send(true).unwrap();
        agent.await.unwrap().unwrap();
        engine.stop().await;
    }
}

async fn wait_for<F, Fut>(what: &str, within: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The bookkeeping in the database: readings arriving out of order open, split and close
/// gaps in the transaction that stores them; the operator sees them, `/metrics` counts them;
/// a gap older than the agents keep readings is given up and never asked for again.
#[tokio::test]
async fn gaps_are_kept_with_the_readings_and_given_up_when_too_old() {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let f = Fixture::open(&url).await;
        let rng = ring::rand::SystemRandom::new();
        let key = gridshare_core::reading::MeterKey::from_pkcs8(
            &gridshare_core::reading::MeterKey::generate_pkcs8(&rng).unwrap(),
            &rng,
        )
        .unwrap();
        let meter = unique("g");
        let meter = meter[meter.len().saturating_sub(30)..].to_owned();
        let account = crate::household_account(&f.store, "gaps-home").await;
        market_engine::meters::register(
            &f.store,
            &f.keys,
            account,
            &meter,
            &key.public_key().to_hex(),
            10,
            0,
        )
        .await
        .unwrap();
        let now = crate::market::now_s();
        let reading = |seq: u64| {
            signed(
                &key,
                &meter,
                seq,
                now - 3600 + i64::try_from(seq).unwrap(),
                seq,
                0,
            )
        };
        let store = |seqs: &[u64]| {
            let batch = crate::accepted(&seqs.iter().map(|s| reading(*s)).collect::<Vec<_>>());
            let f = &f;
            async move {
                f.store
                    .store_readings(
                        &batch,
                        market_engine::pipeline::now_ms(),
                        &mut Default::default(),
                    )
                    .await
                    .unwrap()
            }
        };
        let ranges = |gaps: Vec<Gap>| -> Vec<(u64, u64)> {
            gaps.iter()
                .filter(|g| g.meter_id == meter)
                .map(|g| (g.first_seq, g.last_seq))
                .collect()
        };
        // 1..3, then 10: 4..9 missing; 6 arrives (sent again): two gaps; 4, 5 close one.
        store(&[1, 2, 3, 10]).await;
        assert_eq!(
            ranges(f.store.gaps(Some(&meter), 100).await.unwrap()),
            vec![(4, 9)],
            "{url}"
        );
        assert_eq!(store(&[6]).await, vec![Stored::Recovered], "{url}");
        assert_eq!(
            ranges(f.store.gaps(Some(&meter), 100).await.unwrap()),
            vec![(4, 5), (7, 9)],
            "{url}"
        );
        assert_eq!(
            store(&[5, 4]).await,
            vec![Stored::Recovered, Stored::Recovered]
        );
        assert_eq!(
            ranges(f.store.gaps(Some(&meter), 100).await.unwrap()),
            vec![(7, 9)],
            "{url}"
        );

        // The operator sees it, households do not; /metrics counts it.
        let operator = unique("op");
        let token = login(&f.app, &operator).await;
        f.store
            .set_role(&operator, market_engine::store::Role::Operator)
            .await
            .unwrap();
        let (status, body, _) = call(
            &f.app,
            "GET",
            &format!("/api/v1/operator/gaps?meter={meter}"),
            Some(&token),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["gaps"][0]["first_seq"], 7, "{body}");
        assert_eq!(body["gaps"][0]["missing"], 3, "{body}");
        assert_eq!(body["gaps"][0]["status"], "requesting", "{body}");
        let household = login(&f.app, &unique("home")).await;
        let (status, _, _) = call(
            &f.app,
            "GET",
            "/api/v1/operator/gaps",
            Some(&household),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _, _) = call(
            &f.app,
            "GET",
            "/api/v1/operator/gaps?limit=0",
            Some(&token),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (_, metrics, _) = call(&f.app, "GET", "/metrics", None, None).await;
        let metrics = metrics.as_str().unwrap_or_default().to_owned();
        assert!(
            metrics.contains("gridshare_reading_gaps_open 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("gridshare_readings_missing 3"),
            "{metrics}"
        );

        // Older than the agents keep readings: given up, reported, not asked for again. A
        // requester with a link that has no connection yet still gives up.
        let requester = Requester {
            store: f.store.clone(),
            link: Arc::new(ResendLink::default()),
            prefix: "gridshare/v1".into(),
            community: "c".into(),
            give_up_after_ms: 60_000,
            metrics: Arc::new(market_engine::ingest::IngestMetrics::default()),
        };
        let later = market_engine::pipeline::now_ms() + 61_000;
        requester.tick(later).await.unwrap();
        let listed = f.store.gaps(Some(&meter), 100).await.unwrap();
        assert_eq!(listed.len(), 1, "{url}");
        assert_eq!(listed[0].status, GapStatus::Unfillable, "{url}");
        assert_eq!(requester.metrics.gaps.given_up.load(Ordering::Relaxed), 1);
        let totals = f.store.gap_totals().await.unwrap();
        assert_eq!(
            (
                totals.open_gaps,
                totals.unfillable_gaps,
                totals.unfillable_missing
            ),
            (0, 1, 3),
            "{url}"
        );
        requester.tick(later + 1_000_000).await.unwrap();
        assert_eq!(requester.metrics.gaps.given_up.load(Ordering::Relaxed), 1);
        // Should the readings turn up after all, the gap closes.
        store(&[7, 8, 9]).await;
        assert!(
            f.store.gaps(Some(&meter), 100).await.unwrap().is_empty(),
            "{url}"
        );
        f.store.close().await;
    }
}
