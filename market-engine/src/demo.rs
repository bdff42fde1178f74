//! `market-engine demo`: the engine plus a simulated neighbourhood on this machine. Each home
//! is a simulated SunSpec hybrid inverter served over Modbus TCP on loopback and read by a real
//! meter agent, which signs its readings and publishes them to the engine's embedded broker.
//! Each home also has an automatic trading rule (the engine's `autotrade`: sell the forecast
//! surplus, buy the forecast need, from the meter's own recent readings), so orders, auctions,
//! trades and settlement follow within a minute. Each home's meter is registered on the
//! embedded chain's staking contract with its key's signed registration (as the `gridshare`
//! command does it), attested by the operator as verifier, and staked, so the wallet shows a
//! real stake and the rewards its settled local sales earn.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gridshare_testbed::register_server::Framing;
use gridshare_testbed::simulator::Household;
use meter_agent::agent::{self, AgentStats};
use meter_agent::config::AgentConfig;
use tokio::sync::watch;

use alloy::primitives::{Address, U256};
use gridshare_contracts::bindings::{GridToken, MeterStaking};
use gridshare_contracts::chain::{Chain, ChainExt};
use gridshare_contracts::staking::{StakingClient, describe, device_hash, text_id};
use gridshare_core::reading::{DeviceIdentity, MeterKey};
use market_engine::chain::{ChainHandle, EMBEDDED_OPERATOR};
use market_engine::config::EngineConfig;
use market_engine::ingest::{Approval, IngestMetrics};
use market_engine::market::Market;
use market_engine::meters;
use market_engine::pipeline::now_ms;
use market_engine::server::Engine;
use market_engine::store::{SlotStatus, TradingRule};

/// Demo settings.
#[derive(Debug, Clone)]
pub(crate) struct DemoOptions {
    /// Number of homes.
    pub(crate) homes: usize,
    /// HTTP listen address of the engine.
    pub(crate) listen: std::net::SocketAddr,
    /// Port of the embedded MQTT broker.
    pub(crate) mqtt_port: u16,
    /// Simulated seconds per real second in the homes' devices.
    pub(crate) speed: f64,
    /// Directory for the database and the meters' keys.
    pub(crate) dir: PathBuf,
    /// Reward epoch of the demo chain, s.
    pub(crate) epoch_s: u64,
    /// The last home's key also signs for a second inverter, through a second agent.
    pub(crate) cheat: bool,
}

/// Delivery slot length of the demo, seconds.
const SLOT_S: u32 = 15;

/// What each home has paid in to trade with, token units (a month of retail-priced imports).
const OPENING_DEPOSIT: i64 = 10_000_000;

fn now_s() -> i64 {
    i64::try_from(now_ms() / 1000).unwrap_or(i64::MAX)
}

/// Runs the demo until Ctrl-C (the future `stop` resolves).
pub(crate) async fn run(
    options: DemoOptions,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&options.dir)?;
    let mut config = EngineConfig {
        community: "demo".into(),
        ..EngineConfig::default()
    };
    config.http.listen = options.listen;
    config.database.url = format!("sqlite://{}", options.dir.join("engine.sqlite").display());
    config.mqtt.embedded_listen = format!("127.0.0.1:{}", options.mqtt_port);
    config.mqtt.url = format!("mqtt://127.0.0.1:{}", options.mqtt_port);
    config.chain.state_file = options.dir.join("chain.json");
    // Accelerated time: a 15-second slot is a quarter of an hour of the homes' simulated day
    // (at the default speed of 60), so orders, trades and the first settlement all come
    // within a minute.
    config.market.slot_length_s = SLOT_S;
    config.market.window_opens_before_s = 600;
    config.market.gate_closure_before_s = 3;
    config.market.settlement_after_s = 4;
    // Short reward epochs, proven by the engine (each home's delegate) a few seconds after
    // they end: the first reward is earned within minutes and vests about ten epochs after
    // the start.
    config.chain.embedded_epoch_s = options.epoch_s;
    config.chain.prove_after_s = 5;
    config.chain.prove_retry_s = 5;
    let engine = Engine::start(&config).await?;
    let market = engine.market.clone();
    let community = market.community().clone();

    println!(
        "Gridshare market engine demo: {} homes, {SLOT_S}-second delivery slots \
         (simulated time runs {}x faster in the homes)",
        options.homes, options.speed
    );
    println!(
        "  web app    http://{}/   (open it in a browser)",
        engine.http
    );
    println!(
        "  API        http://{}   (OpenAPI: /openapi.json, metrics: /metrics)",
        engine.http
    );
    println!("  broker     mqtt://127.0.0.1:{}", options.mqtt_port);
    println!("  database   {}", config.database.url);
    println!(
        "  chain      embedded EVM (revm), state {}",
        config.chain.state_file.display()
    );
    println!(
        "  log in as  home-01 … home-{:02} with password \"demo-password\"",
        options.homes
    );
    println!(
        "  rewards    {}-second epochs; the engine proves each home's epochs as its delegate, \
         the homes claim what vested (GET /api/v1/meters/home-01/stake)",
        options.epoch_s
    );
    println!();

    let (stop_agents, agents_stopped) = watch::channel(false);
    let mut agents = Vec::new();
    let mut homes = Vec::new();
    for i in 0..options.homes {
        let name = format!("home-{:02}", i + 1);
        let account = match engine.store.account_by_name(&name).await? {
            Some(a) => a.id,
            None => {
                let hash = market_engine::api::auth::hash_password("demo-password")
                    .await
                    .map_err(anyhow::Error::msg)?;
                engine
                    .store
                    .create_account(
                        &name,
                        &hash,
                        market_engine::store::Role::Household,
                        now_ms(),
                    )
                    .await?
            }
        };
        // Idempotent by its reference: a demo restarted in the same directory pays in once.
        market
            .fund(account, OPENING_DEPOSIT, "demo-opening-deposit", now_ms())
            .await?;
        // A mix: most homes have PV, every third a battery, some only consume.
        let household = Household {
            pv_peak_w: if i % 4 == 3 {
                0.0
            } else {
                3000.0 + 700.0 * (i % 5) as f64
            },
            battery_wh: if i % 3 == 0 { 8000.0 } else { 0.0 },
            base_load_w: 250.0 + 40.0 * (i % 6) as f64,
            seed: i as u64 + 1,
            serial: format!("SIM-{:06}", i + 1),
            ..Household::default()
        };
        // The device keeps its clock and counters in the demo directory: a demo restarted
        // there carries on, as a real inverter would, instead of starting its counters again.
        let export_capacity_w = household.pv_peak_w + household.battery_max_w;
        let import_capacity_w = 12_000.0 + household.battery_max_w;
        let serial = household.serial.clone();
        let server = gridshare_testbed::simulator::serve_persistent(
            household,
            10 * 3_600_000,
            "127.0.0.1:0".parse()?,
            Framing::Tcp,
            200,
            options.speed,
            options.dir.join(format!("{name}.device.json")),
        )
        .await?;
        let key_file = options.dir.join(format!("{name}.key"));
        if !key_file.exists() {
            meter_agent::keys::generate(&key_file, false)?;
        }
        let key = meter_agent::keys::load(&key_file)?;
        let public = key.public_key();
        if engine.store.meter_owner(&name).await?.is_none() {
            meters::register(
                &engine.store,
                &engine.keys,
                account,
                &name,
                &public.to_hex(),
                1,
                now_ms(),
            )
            .await?;
        }
        // The operator's approval, as after an installer's visit. The devices run on an
        // accelerated clock, so their counters move `speed` times faster than their ratings
        // in real time: the approved capacity is scaled the same way.
        let scaled = |w: f64| {
            // Bounded by the household's ratings times a speed of at most 10 000.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let w = (w * options.speed)
                .ceil()
                .min(f64::from(meters::MAX_CAPACITY_W)) as u32;
            w
        };
        let approval = Approval {
            export_capacity_w: scaled(export_capacity_w),
            import_capacity_w: scaled(import_capacity_w),
            device: DeviceIdentity::new("Gridshare", "SIM-HYBRID", serial)?,
        };
        meters::approve(&engine.store, &engine.keys, &name, &approval, 0, now_ms()).await?;
        if let Some(settler) = &engine.settler
            && let ChainHandle::Embedded(settlement) = settler.handle()
        {
            stake_on_chain(
                settlement.chain(),
                settlement.address(),
                settler.custody().address(account),
                &name,
                &key,
                &approval,
                i,
            )
            .await?;
        }
        let mut agent_config = AgentConfig {
            meter_id: name.clone(),
            community: config.community.clone(),
            key_file,
            data_dir: options.dir.join(&name),
            poll_interval_ms: 1000,
            // The simulated devices, the engine and the embedded chain share this machine's
            // clock, so the readings' time is the chain's: vouch for it, as an installer does
            // with `clock_sync = "synchronised"` for a meter with its own time source. (With
            // "auto" a host without a time daemon signs "unsynchronised" readings, which
            // MeterStaking refuses as proofs: the demo would earn nothing.)
            clock_sync: meter_agent::config::ClockPolicy::Synchronised,
            ..AgentConfig::default()
        };
        agent_config.modbus.address = server.addr.to_string();
        agent_config.mqtt.url = config.mqtt.url.clone();
        // The broker lets a meter in with the credentials issued at its approval (issued
        // anew at each start: the agents run in this process).
        agent_config.mqtt.username = Some(name.clone());
        agent_config.mqtt.password =
            Some(market_engine::broker::issue_meter_credentials(&engine.store, &name).await?);
        if options.cheat && i + 1 == options.homes {
            // The clone: the same key and meter id, another inverter (no PV, so its counters
            // part from the first's at once), its own outbox and broker session.
            let clone_device = gridshare_testbed::simulator::serve(
                Household {
                    pv_peak_w: 0.0,
                    battery_wh: 0.0,
                    serial: approval.device.serial.clone(),
                    ..Household::default()
                },
                10 * 3_600_000,
                "127.0.0.1:0".parse()?,
                Framing::Tcp,
                200,
                options.speed,
            )
            .await?;
            let mut clone = agent_config.clone();
            clone.data_dir = options.dir.join(format!("{name}-clone"));
            clone.modbus.address = clone_device.addr.to_string();
            clone.mqtt.client_id = Some(format!("meter-agent-{name}-clone"));
            println!(
                "  cheating   {name}: a second agent signs a second inverter's readings with its key"
            );
            agents.push(tokio::spawn(agent::run(
                clone,
                agents_stopped.clone(),
                Arc::new(AgentStats::default()),
            )));
        }
        agents.push(tokio::spawn(agent::run(
            agent_config,
            agents_stopped.clone(),
            Arc::new(AgentStats::default()),
        )));
        // Each home trades by an automatic rule, as a household would set it in the app.
        let band = community.tariff.band(0)?;
        let spread = band.retail_per_kwh - band.feed_in_per_kwh;
        let step = i as u64;
        let rule = TradingRule {
            meter_id: name.clone(),
            account_id: account,
            sell_at_least: Some(band.feed_in_per_kwh + spread * (20 + 5 * (step % 6)) / 100),
            buy_at_most: Some(band.feed_in_per_kwh + spread * (45 + 6 * (step % 7)) / 100),
            keep_battery_above_bp: (i % 3 == 0).then_some(3_000),
        };
        engine.store.set_rule(&rule, now_ms()).await?;
        homes.push((name.clone(), account));
    }

    let reporter = tokio::spawn(report_loop(market.clone(), engine.ingest.clone()));
    let claimer = engine.settler.clone().map(|settler| {
        // Each home claims to its account's chain address (its custodial key's).
        let homes: Vec<(String, Address)> = homes
            .iter()
            .map(|(name, account)| (name.clone(), settler.custody().address(*account)))
            .collect();
        tokio::spawn(async move {
            if let ChainHandle::Embedded(settlement) = settler.handle() {
                claim_loop(settlement.chain(), settlement.address(), &homes).await;
            }
        })
    });
    stop.await;
    reporter.abort();
    if let Some(claimer) = claimer {
        claimer.abort();
    }
    let _ = stop_agents.send(true);
    for a in agents {
        let _ = a.await;
    }
    engine.stop().await;
    Ok(())
}

/// Network tokens (whole tokens) the operator pays into the staking contract's reward pool
/// when the demo chain is new.
const DEMO_REWARD_POOL_TOKENS: u64 = 1_000_000;

/// Registers `meter` on the staking contract the embedded chain's settlement credits, for the
/// chain address of `account`, with the meter key's signature over the contract's registration
/// statement (the `gridshare register` path); the operator, as verifier, attests the device,
/// capacities and a grid connection point of its own; and the owner stakes the contract's
/// minimum stake plus a tenth per home number. Idempotent: a meter registered before (a demo
/// restarted in its directory) is left as it is.
async fn stake_on_chain<C: Chain>(
    chain: &C,
    settlement: Address,
    owner: Address,
    meter: &str,
    key: &MeterKey,
    approval: &Approval,
    home: usize,
) -> anyhow::Result<()> {
    let refused = |e: gridshare_contracts::chain::ChainError| anyhow::anyhow!(describe(&e));
    let Some(staking) = market_engine::staking::staking_contract(chain, settlement).await? else {
        return Ok(());
    };
    let client = StakingClient::new(chain, staking);
    let id = text_id(meter).map_err(anyhow::Error::msg)?;
    if client.meter(id).await.map_err(refused)?.owner != Address::ZERO {
        return Ok(());
    }
    let decimals = U256::from(10u64).pow(U256::from(18u64));
    let funded = chain
        .view(staking, MeterStaking::rewardsFundedCall {})
        .await
        .map_err(refused)?;
    if funded.is_zero() {
        client.approve(EMBEDDED_OPERATOR).await.map_err(refused)?;
        chain
            .transact(
                EMBEDDED_OPERATOR,
                staking,
                MeterStaking::fundRewardsCall {
                    amount: U256::from(DEMO_REWARD_POOL_TOKENS) * decimals,
                },
            )
            .await
            .map_err(refused)?;
        client
            .set_verifier(EMBEDDED_OPERATOR, EMBEDDED_OPERATOR, true)
            .await
            .map_err(refused)?;
    }
    chain.prepare_account(owner).await.map_err(refused)?;
    let signature =
        gridshare_operator::registration::sign_registration(&client, key, meter, owner, false)
            .await?;
    let public = key.public_key();
    let xy = (public.x().into(), public.y().into());
    client
        .register(owner, id, xy, signature)
        .await
        .map_err(refused)?;
    let d = &approval.device;
    client
        .attest(
            EMBEDDED_OPERATOR,
            id,
            xy,
            device_hash(&d.manufacturer, &d.model, &d.serial).map_err(anyhow::Error::msg)?,
            approval.export_capacity_w,
            approval.import_capacity_w,
            text_id(&format!("demo-gcp-{meter}")).map_err(anyhow::Error::msg)?,
        )
        .await
        .map_err(refused)?;
    let min = chain
        .view(staking, MeterStaking::minStakeCall {})
        .await
        .map_err(refused)?;
    let amount = min + min * U256::from(home) / U256::from(10u64);
    let token = client.token().await.map_err(refused)?;
    chain
        .transact(
            EMBEDDED_OPERATOR,
            token,
            GridToken::transferCall {
                to: owner,
                value: amount,
            },
        )
        .await
        .map_err(refused)?;
    client.approve(owner).await.map_err(refused)?;
    client.stake(owner, id, amount).await.map_err(refused)?;
    // The household lets the engine prove its epochs from the readings it holds.
    client
        .set_delegate(owner, id, EMBEDDED_OPERATOR)
        .await
        .map_err(refused)?;
    Ok(())
}

/// Plays the households' part in the reward loop: every few seconds each home claims what has
/// vested (as `gridshare claim` would), and the demo prints what was proven and paid.
async fn claim_loop<C: Chain>(chain: &C, settlement: Address, homes: &[(String, Address)]) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut shown: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut slashed = std::collections::HashSet::new();
    loop {
        tick.tick().await;
        let Ok(Some(staking)) = market_engine::staking::staking_contract(chain, settlement).await
        else {
            continue;
        };
        let client = StakingClient::new(chain, staking);
        let Ok(current) = client.current_epoch().await else {
            continue;
        };
        for (name, owner) in homes {
            let Ok(id) = text_id(name) else { continue };
            let Ok(m) = client.meter(id).await else {
                continue;
            };
            if m.slashed && slashed.insert(name.clone()) {
                println!(
                    "        {name} was slashed by the watcher: its key signed readings that cannot \
                     both be true; {} tokens of stake left (GET /api/v1/meters/{name}/stake)",
                    gridshare_operator::amount::format_tokens(m.stake)
                );
            }
            // Newly proven epochs, once each.
            for epoch in m.nextClaimEpoch..current {
                let Ok(c) = client.credit(id, epoch).await else {
                    continue;
                };
                if c.coveredS > 0 && shown.get(name).is_none_or(|e| *e < epoch + 1) {
                    shown.insert(name.clone(), epoch + 1);
                    println!(
                        "        {name}: epoch {epoch} proven by the engine: sold {} Wh, \
                         exported {} Wh, credited {} Wh",
                        c.soldWh, c.exportedWh, c.creditedWh
                    );
                }
            }
            let Ok(claimable) = client.claimable(id, current).await else {
                continue;
            };
            if claimable.is_zero() {
                continue;
            }
            match client.claim(*owner, id, current).await {
                Ok((paid, _)) => println!(
                    "        {name} claimed a reward of {} tokens for its settled local sales \
                     (GET /api/v1/meters/{name}/stake)",
                    gridshare_operator::amount::format_tokens(paid)
                ),
                Err(e) => tracing::warn!(target: "demo", "{name}: claim: {}", describe(&e)),
            }
        }
    }
}

async fn report_loop(market: Arc<Market>, ingest: Arc<IngestMetrics>) {
    let calendar = market.community().calendar;
    let mut reported_closed = 0;
    let mut reported_settled = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let accepted = ingest.accepted.load(Ordering::Relaxed);
        let now = now_s();
        let current = calendar.slot_delivering_at(now).unwrap_or(0);
        println!(
            "[{}] slot {current} delivering · {accepted} signed readings verified and stored",
            chrono_like(now)
        );
        for slot in current.saturating_sub(5)..=current {
            let Ok((status, price)) = market.slot_status(slot).await else {
                continue;
            };
            let Ok(trades) = market.trades(slot).await else {
                continue;
            };
            let volume: u64 = trades.iter().map(|t| t.energy_wh).sum();
            if status == SlotStatus::Closed && slot > reported_closed {
                reported_closed = slot;
                println!(
                    "        gate closed for slot {slot}: {} trades, {volume} Wh, clearing price {}",
                    trades.len(),
                    price.map_or("none".into(), |p| format!("{p} per kWh"))
                );
            }
            if status == SlotStatus::Settled && slot > reported_settled {
                reported_settled = slot;
                let moved = market
                    .settlements(slot.saturating_sub(1), 1)
                    .await
                    .ok()
                    .and_then(|s| {
                        s.first()
                            .map(|(_, accounts, debits, _)| (*accounts, *debits))
                    })
                    .unwrap_or_default();
                println!(
                    "        slot {slot} settled against the signed meter readings: {} accounts, \
                     {} token units paid (GET /api/v1/settlements, /api/v1/balance)",
                    moved.0, moved.1
                );
            }
        }
    }
}

fn chrono_like(now_s: i64) -> String {
    let s = now_s.rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}
