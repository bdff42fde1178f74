//! The engine proves its meters' epochs by itself (issue 15): a staked meter whose owner made
//! the engine's operator key its delegate has each finished epoch proven from the readings the
//! engine stored, without anyone calling `gridshare prove`; a restart — even between sending
//! a proof and recording it — neither proves an epoch twice nor skips the next one; a proof
//! the contract refuses is recorded with its reason, counted, and not sent again before its
//! retry time. On the embedded chain (in a running engine) and on anvil. Before, no code of
//! the engine proved anything: every meter's settled sales earned nothing unless its owner ran
//! the CLI once per epoch.

use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use gridshare_contracts::bindings::GridToken;
use gridshare_contracts::chain::{Chain, ChainExt, EmbeddedChain, RpcChain};
use gridshare_contracts::deploy::{Deployment, StakingParams};
use gridshare_contracts::staking::{StakingClient, device_hash, text_id};
use gridshare_core::reading::{
    ClockSync, DeviceIdentity, Measured, MeterId, MeterKey, Reading, SignedReading,
};
use market_engine::chain::{ChainConfig, ChainSettler, EMBEDDED_OPERATOR, WatchedChain};
use market_engine::ingest::KeyRegistry;
use market_engine::prover::{self, ProverSettings};
use market_engine::server::Engine;
use market_engine::store::Store;
use ring::rand::SystemRandom;
use rumqttc::{AsyncClient, QoS};
use sqlx::Row;

use crate::{engine_client, engine_config, register_approved, unique};

/// Epoch of the test deployments, s (proof window one epoch, unbonding seven).
const EPOCH_S: u64 = 600;
/// Seconds between the test meter's readings.
const EVERY_S: u64 = 100;
/// Readings: from 300 s after genesis, through epoch 3.
const READINGS: u64 = 25;

const SETTINGS: ProverSettings = ProverSettings {
    after_s: 10,
    retry_s: 120,
};

fn tokens(n: u64) -> U256 {
    U256::from(n) * U256::from(10u64).pow(U256::from(18u64))
}

fn device(serial: &str) -> DeviceIdentity {
    DeviceIdentity::new("Gridshare", "SIM-HYBRID", serial).unwrap()
}

/// The meter's k-th reading: every [`EVERY_S`] from `genesis + 300`, 50 Wh exported and 5 Wh
/// imported between two.
fn reading(key: &MeterKey, meter: &str, serial: &str, genesis: u64, k: u64) -> SignedReading {
    key.sign(
        Reading {
            meter_id: MeterId::new(meter).unwrap(),
            device: device(serial),
            seq: k + 1,
            timestamp_ms: (genesis + 300 + EVERY_S * k) * 1000,
            clock: ClockSync::Synchronised,
            import_wh: Measured::ok(10 + 5 * k),
            export_wh: Measured::ok(1_000 + 50 * k),
            battery_charge_wh: Measured::not_implemented(),
            battery_discharge_wh: Measured::not_implemented(),
            power_w: Measured::ok(1_800),
            soc_bp: Measured::not_implemented(),
            flow: gridshare_core::reading::PowerFlow::NOT_MEASURED,
        },
        &SystemRandom::new(),
    )
    .unwrap()
}

/// What a proof of `epoch` from the end of the one before credits: the export between the
/// last readings of the two epochs, and the epoch's seconds from its start to its last reading.
fn expected(epoch: u64) -> (u64, u32) {
    let starts = epoch * EPOCH_S;
    // Readings at 300 + 100 k after genesis: the last one inside the epoch.
    let last_k = (starts + EPOCH_S - 1 - 300) / EVERY_S;
    let first_k_after = (starts - 300).div_ceil(EVERY_S);
    let exported = 50 * (last_k - (first_k_after - 1));
    let covered = u32::try_from(300 + EVERY_S * last_k - starts).unwrap();
    (exported, covered)
}

/// Registers `meter` (its key signing the registration) for `owner`, has the deployer attest
/// it for the device `serial`, stakes 200 tokens and makes `engine` its delegate: what a
/// household does with `gridshare register`, `stake` and `delegate`.
#[allow(clippy::too_many_arguments)]
async fn onboard<A: Chain, B: Chain>(
    deployer_chain: &A,
    deployer: Address,
    owner_chain: &B,
    owner: Address,
    staking: Address,
    key: &MeterKey,
    meter: &str,
    serial: &str,
    engine: Address,
) -> B256 {
    let by_deployer = StakingClient::new(deployer_chain, staking);
    let by_owner = StakingClient::new(owner_chain, staking);
    let token = by_deployer.token().await.unwrap();
    deployer_chain
        .transact(
            deployer,
            token,
            GridToken::transferCall {
                to: owner,
                value: tokens(200),
            },
        )
        .await
        .unwrap();
    by_deployer
        .set_verifier(deployer, deployer, true)
        .await
        .unwrap();
    let id = text_id(meter).unwrap();
    let sig =
        gridshare_operator::registration::sign_registration(&by_owner, key, meter, owner, false)
            .await
            .unwrap();
    let public = key.public_key();
    let xy = (B256::from(public.x()), B256::from(public.y()));
    by_owner.register(owner, id, xy, sig).await.unwrap();
    by_deployer
        .attest(
            deployer,
            id,
            xy,
            device_hash("Gridshare", "SIM-HYBRID", serial).unwrap(),
            10_000,
            10_000,
            text_id(&format!("gcp-{meter}")).unwrap(),
        )
        .await
        .unwrap();
    by_owner.approve(owner).await.unwrap();
    by_owner.stake(owner, id, tokens(200)).await.unwrap();
    by_owner.set_delegate(owner, id, engine).await.unwrap();
    id
}

/// Moves the chain's clock to `to` (s), if it is not there yet.
async fn advance_to<C: Chain>(chain: &C, to: u64) {
    let now = chain.timestamp().await.unwrap();
    let wall = market_engine::pipeline::now_ms() / 1000;
    let now = now.max(wall);
    if to > now {
        chain.advance_time(to - now).await.unwrap();
    }
}

/// (status, attempts, last_error) of the engine's record of a meter's epoch.
async fn proof_row(
    store: &Store,
    meter: &str,
    epoch: u64,
) -> Option<(String, i64, Option<String>)> {
    sqlx::query(
        "SELECT status, attempts, last_error FROM epoch_proofs WHERE meter_id = $1 AND epoch = $2",
    )
    .bind(meter)
    .bind(i64::try_from(epoch).unwrap())
    .fetch_optional(store.pool())
    .await
    .unwrap()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
}

/// As if the engine stopped after sending the proof of `epoch` and before recording it.
async fn forget_receipt(store: &Store, meter: &str, epoch: u64) {
    sqlx::query(
        "UPDATE epoch_proofs SET status = 'sending', tx_hash = NULL WHERE meter_id = $1 \
         AND epoch = $2",
    )
    .bind(meter)
    .bind(i64::try_from(epoch).unwrap())
    .execute(store.pool())
    .await
    .unwrap();
}

/// The engine's prover on `settler`'s chain, round by round: the honest meter's epochs 1 and 2
/// proven once each, contiguous, across a lost receipt; the meter attested for another device
/// refused, recorded and not retried early.
#[allow(clippy::too_many_arguments)]
async fn rounds<A: Chain, B: Chain>(
    settler: &ChainSettler,
    store: &Store,
    deployer_chain: &A,
    deployer: Address,
    owner_chain: &B,
    owner: Address,
    staking: Address,
    genesis: u64,
    engine: Address,
) {
    let rng = SystemRandom::new();
    let keys = KeyRegistry::default();
    let account = store
        .create_account(
            &unique("owner"),
            "x",
            market_engine::store::Role::Household,
            0,
        )
        .await
        .unwrap();
    let mut ids = Vec::new();
    for (meter, serial, attested_serial) in [
        ("prove-honest", "SN-P1", "SN-P1"),
        ("prove-other-device", "SN-P2", "SN-ELSEWHERE"),
    ] {
        let key = MeterKey::from_pkcs8(&MeterKey::generate_pkcs8(&rng).unwrap(), &rng).unwrap();
        register_approved(
            store,
            &keys,
            meter,
            account,
            key.public_key(),
            &device(serial),
        )
        .await;
        let id = onboard(
            deployer_chain,
            deployer,
            owner_chain,
            owner,
            staking,
            &key,
            meter,
            attested_serial,
            engine,
        )
        .await;
        let signed: Vec<SignedReading> = (0..READINGS)
            .map(|k| reading(&key, meter, serial, genesis, k))
            .collect();
        let mut last = std::collections::HashMap::new();
        store
            .store_readings(&crate::accepted(&signed), 0, &mut last)
            .await
            .unwrap();
        ids.push(id);
    }
    let client = StakingClient::new(deployer_chain, staking);
    let (honest, other) = (ids[0], ids[1]);

    // Epoch 0 is running: nothing is due.
    let r = prover::step(settler, store, SETTINGS)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((r.proved, r.failed), (0, 0));

    // Epoch 1 has ended (the meters were staked during epoch 0, so 1 is their first).
    advance_to(deployer_chain, genesis + 2 * EPOCH_S + SETTINGS.after_s).await;
    let r = prover::step(settler, store, SETTINGS)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((r.proved, r.failed, r.failing), (1, 1, 1), "{r:?}");
    let c1 = client.credit(honest, 1).await.unwrap();
    assert_eq!((c1.exportedWh, c1.coveredS), expected(1));
    assert_eq!(client.credit(honest, 0).await.unwrap().coveredS, 0);
    let (status, attempts, _) = proof_row(store, "prove-honest", 1).await.unwrap();
    assert_eq!((status.as_str(), attempts), ("proved", 1));
    // The other meter's readings name a device the verifier did not attest: refused, with
    // the contract's reason kept for its owner.
    let (status, attempts, error) = proof_row(store, "prove-other-device", 1).await.unwrap();
    assert_eq!((status.as_str(), attempts), ("failed", 1));
    assert!(error.unwrap().contains("DeviceMismatch"));
    assert_eq!(client.credit(other, 1).await.unwrap().coveredS, 0);

    // A restart between sending the proof and recording its receipt: the chain has the proof,
    // so the next round sends nothing, and the failed proof waits for its retry time.
    forget_receipt(store, "prove-honest", 1).await;
    let r = prover::step(settler, store, SETTINGS)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((r.proved, r.failed, r.failing), (0, 0, 1), "{r:?}");
    assert_eq!(
        client.credit(honest, 1).await.unwrap(),
        c1,
        "epoch 1 proven once"
    );
    let (status, attempts, _) = proof_row(store, "prove-honest", 1).await.unwrap();
    assert_eq!((status.as_str(), attempts), ("proved", 1));
    assert_eq!(
        proof_row(store, "prove-other-device", 1).await.unwrap().1,
        1
    );

    // Epoch 2: proven from where epoch 1's proof ended — its whole export, nothing skipped.
    advance_to(deployer_chain, genesis + 3 * EPOCH_S + SETTINGS.after_s).await;
    let r = prover::step(settler, store, SETTINGS)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.proved, 1, "{r:?}");
    let c2 = client.credit(honest, 2).await.unwrap();
    assert_eq!((c2.exportedWh, c2.coveredS), expected(2));
    let m = client.meter(honest).await.unwrap();
    assert_eq!(m.lastSeq, (2 * EPOCH_S + EPOCH_S - 1 - 300) / EVERY_S + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_proves_each_epoch_once_from_its_readings_on_the_embedded_chain_and_anvil() {
    let dir = tempfile::tempdir().unwrap();
    // The embedded chain on each database (SQLite, and PostgreSQL where this machine has it).
    for (i, url) in crate::databases(dir.path()).await.into_iter().enumerate() {
        let store = Store::open(&url).await.unwrap();
        let embedded = ChainConfig {
            backend: market_engine::chain::ChainBackend::Embedded,
            state_file: dir.path().join(format!("chain-{i}.json")),
            embedded_epoch_s: EPOCH_S,
            ..ChainConfig::default()
        };
        let settler = ChainSettler::open(&embedded, store.clone())
            .await
            .unwrap()
            .unwrap();
        let target = settler.watch_target().cloned().unwrap();
        let WatchedChain::Embedded(chain) = target.chain else {
            panic!("embedded chain expected");
        };
        let client = StakingClient::new(&chain, target.staking);
        let (genesis, epoch, _) = client.schedule().await.unwrap();
        assert_eq!(
            epoch, EPOCH_S,
            "chain.embedded_epoch_s sets the deployment's epoch"
        );
        let owner = Address::repeat_byte(0x71);
        chain.prepare_account(owner).await.unwrap();
        rounds(
            &settler,
            &store,
            &chain,
            EMBEDDED_OPERATOR,
            &chain,
            owner,
            target.staking,
            genesis,
            EMBEDDED_OPERATOR,
        )
        .await;
    }

    // anvil: the engine's operator key is anvil's first account (deployer), the household's
    // anvil's second.
    let Some(node) = gridshare_testbed::anvil::Anvil::start_own() else {
        return;
    };
    let url = format!(
        "sqlite://{}",
        dir.path().join("engine-anvil.sqlite").display()
    );
    let store = Store::open(&url).await.unwrap();
    let signer: alloy::signers::local::PrivateKeySigner = crate::outbox::ANVIL_KEY.parse().unwrap();
    let deployer = signer.address();
    let chain = RpcChain::connect(&node.url, Some(signer)).unwrap();
    let now = chain.timestamp().await.unwrap();
    let d = Deployment::deploy(
        &chain,
        deployer,
        deployer,
        None,
        U256::from(10u64).pow(U256::from(30u64)),
        &StakingParams::with_epoch(now, EPOCH_S),
    )
    .await
    .unwrap();
    let owner_signer: alloy::signers::local::PrivateKeySigner = ANVIL_SECOND_KEY.parse().unwrap();
    let owner = owner_signer.address();
    let owner_chain = RpcChain::connect(&node.url, Some(owner_signer)).unwrap();
    let rpc = ChainConfig {
        backend: market_engine::chain::ChainBackend::Rpc,
        rpc_url: node.url.clone(),
        settlement_address: d.settlement.to_string(),
        // The custody secret beside it, in the test's directory (not the source tree).
        state_file: dir.path().join("chain-rpc.json"),
        ..ChainConfig::default()
    };
    let settler =
        ChainSettler::open_with_key(&rpc, store.clone(), Some(crate::outbox::ANVIL_KEY.into()))
            .await
            .unwrap()
            .unwrap();
    rounds(
        &settler,
        &store,
        &chain,
        deployer,
        &owner_chain,
        owner,
        d.staking,
        now,
        deployer,
    )
    .await;
}

/// anvil's second development account (the household on anvil).
const ANVIL_SECOND_KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

/// POSTs JSON over a fresh connection; returns the body and the session cookie it set.
pub(crate) async fn http_post(
    port: u16,
    path: &str,
    body: &serde_json::Value,
) -> (String, Option<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let cookie = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .and_then(|c| c.split(';').next())
        .map(str::to_owned);
    (body.to_owned(), cookie)
}

/// GET with a session cookie (`name=value`) over a fresh connection; the body.
pub(crate) async fn http_get_as(port: u16, path: &str, cookie: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // A chunked body: the JSON object between the chunk sizes.
    match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) => body[a..=b].to_owned(),
        _ => body.to_owned(),
    }
}

/// The engine's embedded chain and its `MeterStaking`.
fn embedded(engine: &Engine) -> (EmbeddedChain, Address) {
    let target = engine
        .settler
        .as_ref()
        .and_then(|s| s.watch_target())
        .cloned()
        .expect("an embedded chain, watched");
    match target.chain {
        WatchedChain::Embedded(chain) => (chain, target.staking),
        WatchedChain::Rpc(_) => panic!("embedded chain expected"),
    }
}

/// Waits until the engine has proven `epoch` of the meter; its credit.
async fn proven(
    client: &StakingClient<EmbeddedChain>,
    id: B256,
    epoch: u64,
) -> gridshare_contracts::staking::EpochCredit {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let c = client.credit(id, epoch).await.unwrap();
            if c.coveredS > 0 {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("epoch {epoch} proven by the engine within 30 s"))
}

/// The engine, running, with a household's meter that made it its delegate: the meter's
/// readings arrive over MQTT like an agent's, epoch 1 is proven by the engine's own task; the
/// engine is stopped and started again as if it had never recorded that proof, proves nothing
/// twice, then proves epoch 2 from where epoch 1 ended; `/metrics` and the stake API show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_engine_proves_its_meters_epochs_and_a_restart_neither_repeats_nor_skips() {
    let dir = tempfile::tempdir().unwrap();
    let community = unique("prove");
    let db = format!("sqlite://{}", dir.path().join("engine.sqlite").display());
    let mut config = engine_config(&community, &db);
    config.chain.backend = market_engine::chain::ChainBackend::Embedded;
    config.chain.state_file = dir.path().join("chain.json");
    config.chain.embedded_epoch_s = EPOCH_S;
    config.chain.prove_after_s = SETTINGS.after_s;
    // The test's readings lie up to half an hour ahead of the wall clock (the chain's clock is
    // moved forward instead of waiting).
    config.ingest.max_future_skew_ms = 3 * 3_600_000;
    let engine = Engine::start(&config).await.unwrap();
    let (chain, staking) = embedded(&engine);
    let client = StakingClient::new(chain.clone(), staking);
    let (genesis, _, _) = client.schedule().await.unwrap();

    let rng = SystemRandom::new();
    let key = MeterKey::from_pkcs8(&MeterKey::generate_pkcs8(&rng).unwrap(), &rng).unwrap();
    let meter = "prove-engine-01";
    let hash = market_engine::api::auth::hash_password("owner-password")
        .await
        .unwrap();
    let account = engine
        .store
        .create_account(
            "prove-owner",
            &hash,
            market_engine::store::Role::Household,
            0,
        )
        .await
        .unwrap();
    register_approved(
        &engine.store,
        &engine.keys,
        meter,
        account,
        key.public_key(),
        &device("SN-E1"),
    )
    .await;
    let owner = Address::repeat_byte(0x72);
    chain.prepare_account(owner).await.unwrap();
    let id = onboard(
        &chain,
        EMBEDDED_OPERATOR,
        &chain,
        owner,
        staking,
        &key,
        meter,
        "SN-E1",
        EMBEDDED_OPERATOR,
    )
    .await;

    // The meter's readings, on the community's broker.
    let (mqtt, events) = AsyncClient::new(engine_client(&engine, &config, unique("agent")), 64);
    crate::keep_polling(events);
    let topic =
        gridshare_core::mqtt::MeterTopics::new(&config.mqtt.topic_prefix, &community, meter)
            .reading;
    for k in 0..READINGS {
        let signed = reading(&key, meter, "SN-E1", genesis, k);
        mqtt.publish(
            &topic,
            QoS::AtLeastOnce,
            false,
            signed.to_json().into_bytes(),
        )
        .await
        .unwrap();
    }
    let stored = tokio::time::timeout(Duration::from_secs(30), async {
        while engine.store.readings(meter, 0, 100).await.unwrap().len() < READINGS as usize {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(stored.is_ok(), "the engine stored the meter's readings");

    advance_to(&chain, genesis + 2 * EPOCH_S + SETTINGS.after_s).await;
    let c1 = proven(&client, id, 1).await;
    assert_eq!((c1.exportedWh, c1.coveredS), expected(1));

    // The stake API shows the engine's proof to the owner.
    let port = engine.http.port();
    let (_, cookie) = http_post(
        port,
        "/api/v1/sessions",
        &serde_json::json!({"name": "prove-owner", "password": "owner-password"}),
    )
    .await;
    let cookie = cookie.expect("a session");
    let stake: serde_json::Value = serde_json::from_str(
        &http_get_as(port, &format!("/api/v1/meters/{meter}/stake"), &cookie).await,
    )
    .unwrap();
    assert_eq!(stake["proved_by_engine"], true, "{stake}");
    assert_eq!(stake["proofs"][0]["epoch"], 1, "{stake}");
    assert_eq!(stake["proofs"][0]["status"], "proved", "{stake}");
    let metrics = crate::demo::http_get(port, "/metrics").await.unwrap();
    assert!(
        metrics.contains("gridshare_epoch_proofs_total 1"),
        "{metrics}"
    );

    // Stopped, and started again as though the receipt had never been recorded.
    engine.stop().await;
    let store = Store::open(&db).await.unwrap();
    forget_receipt(&store, meter, 1).await;
    store.close().await;
    let engine = Engine::start(&config).await.unwrap();
    // The restarted engine has the chain's state file open anew.
    let (chain, staking) = embedded(&engine);
    let client = StakingClient::new(chain.clone(), staking);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        client.credit(id, 1).await.unwrap(),
        c1,
        "epoch 1 proven once"
    );
    let (status, attempts, _) = proof_row(&engine.store, meter, 1).await.unwrap();
    assert_eq!((status.as_str(), attempts), ("proved", 1));

    advance_to(&chain, genesis + 3 * EPOCH_S + SETTINGS.after_s).await;
    let c2 = proven(&client, id, 2).await;
    assert_eq!(
        (c2.exportedWh, c2.coveredS),
        expected(2),
        "contiguous from epoch 1's end"
    );
    engine.stop().await;
}
