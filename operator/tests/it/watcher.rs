//! The watcher follows a community's readings on a real MQTT broker (Mosquitto at
//! `GRIDSHARE_TEST_MQTT_URL`, or the embedded broker) and gets a cheating meter slashed
//! within the epoch in which it cheated — on the embedded chain and on anvil.

use crate::support::{ANVIL_KEY, ANVIL_SERIAL, Anvil, deploy, fund, random_account, tokens};
use alloy::primitives::{Address, B256};
use alloy::signers::local::PrivateKeySigner;
use gridshare_contracts::staking::{StakingClient, text_id};
use gridshare_contracts::{Chain, EmbeddedChain, RpcChain};
use gridshare_core::mqtt::MeterTopics;
use gridshare_core::reading::{ClockSync, DeviceIdentity, Measured, MeterId, MeterKey, Reading};
use gridshare_operator::registration::sign_registration;
use gridshare_operator::watcher::{MqttSource, Outcome, Watcher, run_mqtt};
use ring::rand::SystemRandom;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use std::time::Duration;

fn broker() -> (String, u16) {
    let url = std::env::var("GRIDSHARE_TEST_MQTT_URL").unwrap_or_else(|_| {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        gridshare_mqtt::broker::start_embedded(([127, 0, 0, 1], port).into()).expect("broker");
        format!("mqtt://127.0.0.1:{port}")
    });
    let b = gridshare_core::mqtt::BrokerUrl::parse(&url).expect("broker url");
    (b.host, b.port)
}

/// A meter agent that signs what it is told to: the cheat is a second, different reading for
/// an instant it already reported (or a counter that goes back), signed with its real key.
struct CheatingAgent {
    key: MeterKey,
    meter: String,
    client: AsyncClient,
    topic: String,
}

impl CheatingAgent {
    async fn publish(&self, seq: u64, at_ms: u64, export_wh: u64) {
        let reading = Reading {
            meter_id: MeterId::new(self.meter.clone()).expect("id"),
            device: DeviceIdentity::new("Gridshare", "SIM-HYBRID-5K", "SN-A").expect("device"),
            seq,
            timestamp_ms: at_ms,
            clock: ClockSync::Synchronised,
            import_wh: Measured::ok(0),
            export_wh: Measured::ok(export_wh),
            battery_charge_wh: Measured::not_implemented(),
            battery_discharge_wh: Measured::not_implemented(),
            power_w: Measured::ok(0),
            soc_bp: Measured::not_implemented(),
            flow: gridshare_core::reading::PowerFlow::NOT_MEASURED,
        };
        let json = self
            .key
            .sign(reading, &SystemRandom::new())
            .expect("sign")
            .to_json();
        self.client
            .publish(&self.topic, QoS::AtLeastOnce, false, json.into_bytes())
            .await
            .expect("publish");
    }
}

async fn cheating_meter_is_slashed_within_one_epoch<C: Chain + Clone + 'static>(
    chain: C,
    deployer: Address,
    owner: Address,
    reporter: Address,
) {
    let (d, params) = deploy(&chain, deployer).await;
    fund(&chain, &d, deployer, owner, tokens(1_000)).await;
    fund(&chain, &d, deployer, reporter, tokens(0)).await;
    let staking = StakingClient::new(chain.clone(), d.staking);
    staking
        .set_verifier(deployer, deployer, true)
        .await
        .expect("verifier");
    let rng = SystemRandom::new();
    let community = format!("watch-{}-{}", std::process::id(), owner);
    let mut agents = Vec::new();
    let (host, port) = broker();
    for name in ["cheat-01", "honest-02"] {
        let key =
            MeterKey::from_pkcs8(&MeterKey::generate_pkcs8(&rng).expect("gen"), &rng).expect("key");
        let id = text_id(name).expect("id");
        let sig = sign_registration(&staking, &key, name, owner, false)
            .await
            .expect("sign");
        let public = key.public_key();
        let xy = (B256::from(public.x()), B256::from(public.y()));
        staking
            .register(owner, id, xy, sig)
            .await
            .expect("register");
        staking
            .attest(
                deployer,
                id,
                xy,
                gridshare_contracts::staking::device_hash("Gridshare", "SIM-HYBRID-5K", "SN-A")
                    .expect("d"),
                5_000,
                5_000,
                text_id(&format!("gcp-{name}")).expect("gcp"),
            )
            .await
            .expect("attest");
        staking.approve(owner).await.expect("approve");
        staking.stake(owner, id, tokens(200)).await.expect("stake");
        // Unique per test: the two tests of this file share one broker (Mosquitto in CI), which
        // disconnects the older of two clients with one id.
        let mut options = MqttOptions::new(format!("{name}-{community}"), host.clone(), port);
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut events) = AsyncClient::new(options, 64);
        tokio::spawn(async move {
            loop {
                if events.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        let topic = MeterTopics::new("gridshare/v1", &community, name).reading;
        agents.push(CheatingAgent {
            key,
            meter: name.into(),
            client,
            topic,
        });
    }

    let epoch_at_start = staking.current_epoch().await.expect("epoch");
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let (tx, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
    let source = MqttSource {
        host,
        port,
        prefix: "gridshare/v1".into(),
        community: community.clone(),
        client_id: format!("watcher-{community}"),
        credentials: None,
        tls: None,
    };
    let watch_chain = staking.clone();
    let watcher = tokio::spawn(async move {
        let mut w = Watcher::new(watch_chain, reporter);
        run_mqtt(&mut w, &source, shutdown, |o| {
            let _ = tx.send(o.clone());
        })
        .await
        .expect("watcher");
    });
    // Let the watcher subscribe.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let t0 = (params.genesis + 100) * 1000;
    let (cheat, honest) = (&agents[0], &agents[1]);
    // The honest agent lost its state and restarted its sequence: not fraud.
    honest.publish(40, t0, 1_000).await;
    honest.publish(1, t0 + 60_000, 1_050).await;
    // The cheater reports one instant twice with different counters.
    cheat.publish(7, t0, 2_000).await;
    cheat.publish(8, t0 + 60_000, 2_100).await;
    cheat.publish(8, t0 + 60_000, 2_900).await;

    let slashed = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match outcomes.recv().await.expect("watcher running") {
                Outcome::Slashed { meter, .. } => return meter,
                _ => continue,
            }
        }
    })
    .await
    .expect("the cheating meter is reported within a minute");
    assert_eq!(slashed, "cheat-01");
    let _ = stop.send(true);
    watcher.await.expect("watcher stops");

    let cheat_record = staking
        .meter(text_id("cheat-01").expect("id"))
        .await
        .expect("m");
    assert!(cheat_record.slashed);
    assert_eq!(cheat_record.stake, tokens(100));
    assert!(
        !staking
            .meter(text_id("honest-02").expect("id"))
            .await
            .expect("m")
            .slashed
    );
    // Slashed in the epoch it cheated in, and the reporter was paid a tenth of the slash.
    assert_eq!(
        staking.current_epoch().await.expect("epoch"),
        epoch_at_start
    );
    let token = staking.token().await.expect("token");
    let paid: alloy::primitives::U256 = gridshare_contracts::chain::ChainExt::view(
        staking.chain(),
        token,
        gridshare_contracts::bindings::GridToken::balanceOfCall { account: reporter },
    )
    .await
    .expect("balance");
    assert_eq!(paid, tokens(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_slashes_a_cheating_meter_on_the_embedded_chain() {
    let chain = EmbeddedChain::in_memory();
    cheating_meter_is_slashed_within_one_epoch(
        chain,
        Address::repeat_byte(0xde),
        Address::repeat_byte(0xa1),
        Address::repeat_byte(0xee),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_slashes_a_cheating_meter_on_anvil() {
    let _turn = ANVIL_SERIAL.lock().await;
    let Some(anvil) = Anvil::start() else {
        return;
    };
    let key: PrivateKeySigner = ANVIL_KEY.parse().expect("key");
    let deployer = key.address();
    let chain = RpcChain::connect(&anvil.url, Some(key)).expect("connect");
    let (_, owner) = random_account();
    let (_, reporter) = random_account();
    cheating_meter_is_slashed_within_one_epoch(chain, deployer, owner, reporter).await;
    drop(anvil);
}

/// The cheat the anvil walk-through plays (`scripts/walkthrough-anvil.sh`), through the real
/// agent's signing path and a real broker: two meter agents run on one meter key, each reading
/// its own simulated inverter (one with PV, one without), so the key signs counters that cannot
/// all be true. The watcher gets the meter slashed; its owner's honest neighbour is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_on_one_meter_key_are_slashed_by_the_watcher() {
    use gridshare_testbed::register_server::Framing;
    use gridshare_testbed::simulator::Household;
    use meter_agent::agent::{self, AgentStats};
    use meter_agent::config::{AgentConfig, ClockPolicy};

    let chain = EmbeddedChain::in_memory();
    let (deployer, owner, reporter) = (
        Address::repeat_byte(0xde),
        Address::repeat_byte(0xa2),
        Address::repeat_byte(0xe2),
    );
    let (d, _) = deploy(&chain, deployer).await;
    fund(&chain, &d, deployer, owner, tokens(1_000)).await;
    let staking = StakingClient::new(chain.clone(), d.staking);
    staking
        .set_verifier(deployer, deployer, true)
        .await
        .expect("verifier");
    let dir = tempfile::tempdir().expect("dir");
    let key_file = dir.path().join("cheat.key");
    meter_agent::keys::generate(&key_file, false).expect("keygen");
    let key = meter_agent::keys::load(&key_file).expect("key");
    let meter = "cheat-02";
    let id = text_id(meter).expect("id");
    let sig = sign_registration(&staking, &key, meter, owner, false)
        .await
        .expect("sign");
    let public = key.public_key();
    let xy = (B256::from(public.x()), B256::from(public.y()));
    staking
        .register(owner, id, xy, sig)
        .await
        .expect("register");
    staking
        .attest(
            deployer,
            id,
            xy,
            gridshare_contracts::staking::device_hash("Gridshare", "SIM-HYBRID", "SIM-000009")
                .expect("d"),
            500_000,
            500_000,
            text_id("gcp-cheat").expect("gcp"),
        )
        .await
        .expect("attest");
    staking.approve(owner).await.expect("approve");
    staking.stake(owner, id, tokens(200)).await.expect("stake");

    let (host, port) = broker();
    let community = format!("two-agents-{}", std::process::id());
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let (tx, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
    let source = MqttSource {
        host: host.clone(),
        port,
        prefix: "gridshare/v1".into(),
        community: community.clone(),
        client_id: format!("watcher-{community}"),
        credentials: None,
        tls: None,
    };
    let watch_chain = staking.clone();
    let watcher = tokio::spawn(async move {
        let mut w = Watcher::new(watch_chain, reporter);
        run_mqtt(&mut w, &source, shutdown, |o| {
            let _ = tx.send(o.clone());
        })
        .await
        .expect("watcher");
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    // One inverter with PV, one without: their counters part at once.
    let mut agents = Vec::new();
    let (stop_agents, agents_stopped) = tokio::sync::watch::channel(false);
    for (instance, pv_peak_w) in [("a", 6_000.0), ("b", 0.0)] {
        let device = gridshare_testbed::simulator::serve(
            Household {
                pv_peak_w,
                battery_wh: 0.0,
                serial: "SIM-000009".into(),
                ..Household::default()
            },
            11 * 3_600_000,
            "127.0.0.1:0".parse().expect("addr"),
            Framing::Tcp,
            50,
            1_200.0,
        )
        .await
        .expect("device");
        let mut config = AgentConfig {
            meter_id: meter.into(),
            community: community.clone(),
            key_file: key_file.clone(),
            data_dir: dir.path().join(instance),
            poll_interval_ms: 200,
            clock_sync: ClockPolicy::Synchronised,
            ..AgentConfig::default()
        };
        config.modbus.address = device.addr.to_string();
        config.mqtt.url = format!("mqtt://{host}:{port}");
        config.mqtt.client_id = Some(format!("{meter}-{instance}-{community}"));
        agents.push((
            device,
            tokio::spawn(agent::run(
                config,
                agents_stopped.clone(),
                std::sync::Arc::new(AgentStats::default()),
            )),
        ));
    }

    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Outcome::Slashed {
                meter,
                contradiction,
                ..
            } = outcomes.recv().await.expect("watcher running")
            {
                return (meter, contradiction);
            }
        }
    })
    .await
    .expect("the meter with two agents is reported within a minute");
    assert_eq!(outcome.0, meter);
    let _ = stop_agents.send(true);
    for (_device, agent) in agents {
        let _ = agent.await;
    }
    let _ = stop.send(true);
    watcher.await.expect("watcher stops");
    let record = staking.meter(id).await.expect("meter");
    assert!(record.slashed, "{outcome:?}");
    assert_eq!(record.stake, tokens(100));
}
