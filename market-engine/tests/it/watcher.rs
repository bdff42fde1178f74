//! The fraud watcher inside the engine (issue 15): a meter that signs two different readings
//! with one sequence number, published on the engine's broker, is reported to `MeterStaking`
//! and slashed, and `/metrics` counts it. Before, only the separate `gridshare watch` command
//! watched; an engine left to itself never did.

use std::time::Duration;

use alloy::primitives::{B256, U256};
use gridshare_contracts::bindings::GridToken;
use gridshare_contracts::chain::ChainExt;
use gridshare_contracts::staking::{StakingClient, device_hash, text_id};
use gridshare_core::reading::{ClockSync, DeviceIdentity, Measured, MeterId, MeterKey, Reading};
use market_engine::chain::{EMBEDDED_OPERATOR, WatchedChain};
use market_engine::server::Engine;
use ring::rand::SystemRandom;
use rumqttc::{AsyncClient, QoS};

use crate::{engine_client, engine_config, unique};

fn tokens(n: u64) -> U256 {
    U256::from(n) * U256::from(10u64).pow(U256::from(18u64))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_has_a_meter_that_signs_two_different_readings_slashed() {
    let dir = tempfile::tempdir().unwrap();
    let community = unique("watch");
    let mut config = engine_config(
        &community,
        &format!("sqlite://{}", dir.path().join("engine.sqlite").display()),
    );
    config.chain.backend = market_engine::chain::ChainBackend::Embedded;
    config.chain.state_file = dir.path().join("chain.json");
    let engine = Engine::start(&config).await.unwrap();
    let target = engine
        .settler
        .as_ref()
        .and_then(|s| s.watch_target())
        .cloned()
        .expect("the embedded chain is watched by default");
    let WatchedChain::Embedded(chain) = target.chain else {
        panic!("embedded chain expected");
    };
    // A household's meter, registered with its own key, attested and staked on chain.
    let staking = StakingClient::new(chain.clone(), target.staking);
    let deployer = EMBEDDED_OPERATOR;
    let owner = alloy::primitives::Address::repeat_byte(0x77);
    let token = staking.token().await.unwrap();
    chain
        .transact(
            deployer,
            token,
            GridToken::transferCall {
                to: owner,
                value: tokens(1_000),
            },
        )
        .await
        .unwrap();
    staking
        .set_verifier(deployer, deployer, true)
        .await
        .unwrap();
    let rng = SystemRandom::new();
    let key = MeterKey::from_pkcs8(&MeterKey::generate_pkcs8(&rng).unwrap(), &rng).unwrap();
    let name = "cheat-01";
    let id = text_id(name).unwrap();
    let sig =
        gridshare_operator::registration::sign_registration(&staking, &key, name, owner, false)
            .await
            .unwrap();
    let public = key.public_key();
    let xy = (B256::from(public.x()), B256::from(public.y()));
    staking.register(owner, id, xy, sig).await.unwrap();
    staking
        .attest(
            deployer,
            id,
            xy,
            device_hash("Gridshare", "SIM-HYBRID", "SN-W").unwrap(),
            5_000,
            5_000,
            text_id("gcp-w").unwrap(),
        )
        .await
        .unwrap();
    staking.approve(owner).await.unwrap();
    staking.stake(owner, id, tokens(200)).await.unwrap();

    // The meter signs one instant twice with different counters, on the community's broker.
    let (client, events) = AsyncClient::new(engine_client(&engine, &config, unique("cheater")), 16);
    crate::keep_polling(events);
    let topic =
        gridshare_core::mqtt::MeterTopics::new(&config.mqtt.topic_prefix, &community, name).reading;
    let now_ms = market_engine::pipeline::now_ms();
    for (seq, export_wh) in [(7, 2_000), (8, 2_100), (8, 2_900)] {
        let reading = Reading {
            meter_id: MeterId::new(name).unwrap(),
            device: DeviceIdentity::default(),
            seq,
            timestamp_ms: now_ms + (seq - 7) * 60_000,
            clock: ClockSync::Synchronised,
            import_wh: Measured::ok(0),
            export_wh: Measured::ok(export_wh),
            battery_charge_wh: Measured::not_implemented(),
            battery_discharge_wh: Measured::not_implemented(),
            power_w: Measured::not_implemented(),
            soc_bp: Measured::not_implemented(),
            flow: gridshare_core::reading::PowerFlow::NOT_MEASURED,
        };
        let signed = key.sign(reading, &rng).unwrap();
        client
            .publish(
                &topic,
                QoS::AtLeastOnce,
                false,
                signed.to_json().into_bytes(),
            )
            .await
            .unwrap();
    }
    let slashed = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if staking.meter(id).await.unwrap().slashed {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        slashed.is_ok(),
        "the cheating meter is slashed within a minute"
    );
    let metrics = crate::demo::http_get(engine.http.port(), "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains("gridshare_watcher_slashes_total 1"),
        "{metrics}"
    );
    engine.stop().await;
}
