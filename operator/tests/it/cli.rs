//! An operator's whole path through the `gridshare` command: a verifier is appointed and
//! attests, the owner registers (signed by the meter key), stakes, proves an epoch from the
//! agent's readings, claims the vested reward, unbonds and withdraws — on an embedded chain
//! state file and on anvil.

use crate::support::{
    ANVIL_KEY, ANVIL_SERIAL, Anvil, advance_to, deploy, fund, random_account, settle_sale, tokens,
};
use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;
use gridshare_contracts::bindings::GridToken;
use gridshare_contracts::chain::ChainExt;
use gridshare_contracts::staking::text_id;
use gridshare_contracts::{Chain, Deployment, EmbeddedChain, RpcChain, StakingParams};
use gridshare_core::reading::{ClockSync, DeviceIdentity, Measured, MeterId, Reading};
use ring::rand::SystemRandom;
use serde_json::Value;

/// Who runs a command: an address on the embedded chain, a key on a node.
#[derive(Clone)]
struct Account {
    address: Address,
    key: Option<String>,
}

struct World<F> {
    /// Opens the chain afresh (the embedded state file changes under us when the command runs).
    open: F,
    /// `--embedded-state <file>` or `--rpc-url <url>`.
    chain_args: Vec<String>,
    d: Deployment,
    params: StakingParams,
    deployer: Account,
    dir: tempfile::TempDir,
}

impl<C: Chain, F: Fn() -> C> World<F> {
    /// Runs `gridshare <args>` as `who`; the JSON it prints, or its error output.
    fn gridshare(&self, who: &Account, args: &[&str]) -> Result<Value, String> {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gridshare"));
        cmd.env_remove("GRIDSHARE_RPC_URL")
            .env_remove("GRIDSHARE_EMBEDDED_STATE")
            .args(["--staking", &self.d.staking.to_string()])
            .args(["--settlement", &self.d.settlement.to_string()])
            .args(&self.chain_args);
        match &who.key {
            Some(key) => cmd.env("GRIDSHARE_ACCOUNT_KEY", key),
            None => cmd.args(["--from", &who.address.to_string()]),
        };
        let out = cmd.args(args).output().expect("run gridshare");
        if out.status.success() {
            let stdout = String::from_utf8_lossy(&out.stdout);
            Ok(
                serde_json::from_str(stdout.lines().last().unwrap_or_default())
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}")),
            )
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn fails(&self, who: &Account, args: &[&str]) -> String {
        self.gridshare(who, args)
            .expect_err(&format!("gridshare {args:?} should fail"))
    }

    fn ok(&self, who: &Account, args: &[&str]) -> Value {
        self.gridshare(who, args)
            .unwrap_or_else(|e| panic!("gridshare {args:?} failed: {e}"))
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// A signed reading of `meter` (key file `key`) as the agent publishes it.
fn envelope(key: &str, meter: &str, seq: u64, at_ms: u64, export_wh: u64) -> String {
    let key = meter_agent::keys::load(std::path::Path::new(key)).expect("key");
    key.sign(
        Reading {
            meter_id: MeterId::new(meter).expect("id"),
            device: DeviceIdentity::new("Gridshare", "SIM-HYBRID-5K", "SN-A").expect("device"),
            seq,
            timestamp_ms: at_ms,
            clock: ClockSync::Synchronised,
            import_wh: Measured::ok(100),
            export_wh: Measured::ok(export_wh),
            battery_charge_wh: Measured::not_implemented(),
            battery_discharge_wh: Measured::not_implemented(),
            power_w: Measured::ok(-2_000),
            soc_bp: Measured::not_implemented(),
            flow: gridshare_core::reading::PowerFlow::NOT_MEASURED,
        },
        &SystemRandom::new(),
    )
    .expect("sign")
    .to_json()
}

async fn operator_stakes_earns_and_claims<C: Chain, F: Fn() -> C>(
    w: &World<F>,
    alice: Account,
    bob: Account,
) {
    let chain = (w.open)();
    for who in [&alice, &bob] {
        fund(&chain, &w.d, w.deployer.address, who.address, tokens(1_000)).await;
    }
    drop(chain);
    let deployer = w.deployer.address.to_string();
    w.ok(&w.deployer, &["verifier", &deployer]);
    let (ka, kb) = (w.path("alice.key"), w.path("bob.key"));
    let pa = meter_agent::keys::generate(std::path::Path::new(&ka), false).expect("keygen");
    let pb = meter_agent::keys::generate(std::path::Path::new(&kb), false).expect("keygen");

    // The owner registers with the meter key's signature; nobody else can use it.
    let out = w.ok(&alice, &["register", "alice-pv", "--meter-key", &ka]);
    assert_eq!(out["registered"], "alice-pv");
    w.ok(&bob, &["register", "bob-home", "--meter-key", &kb]);
    let err = w.fails(&bob, &["register", "alice-pv", "--meter-key", &ka]);
    assert!(err.contains("MeterExists"), "{err}");
    // Only a verifier attests.
    let attest = |who: &Account, meter: &str, key: &str, gcp: &str| {
        w.gridshare(
            who,
            &[
                "attest",
                meter,
                "--public-key",
                key,
                "--manufacturer",
                "Gridshare",
                "--model",
                "SIM-HYBRID-5K",
                "--serial",
                "SN-A",
                "--export-w",
                "5000",
                "--import-w",
                "5000",
                "--grid-point",
                gcp,
            ],
        )
    };
    let err =
        attest(&alice, "alice-pv", &pa.to_hex(), "gcp-a").expect_err("only a verifier attests");
    assert!(err.contains("NotVerifier"), "{err}");
    attest(&w.deployer, "alice-pv", &pa.to_hex(), "gcp-a").expect("attest alice");
    attest(&w.deployer, "bob-home", &pb.to_hex(), "gcp-b").expect("attest bob");

    // Bad input is refused with the reason, before anything is sent.
    let err = w.fails(&alice, &["stake", "alice-pv", "5 tokens"]);
    assert!(err.contains("not an amount of tokens"), "{err}");
    let out = w.ok(&alice, &["stake", "alice-pv", "150"]);
    assert_eq!(out["staked"], "150");
    w.ok(&bob, &["stake", "bob-home", "100.5"]);

    // Epoch 0: Alice sells 6 kWh to Bob and her meter signs its export.
    let g = w.params.genesis;
    let chain = (w.open)();
    settle_sale(
        &chain,
        &w.d,
        w.deployer.address,
        1,
        (g + 3_600) * 1000,
        (
            text_id("alice-pv").expect("id"),
            text_id("bob-home").expect("id"),
            6_000,
        ),
    )
    .await;
    let readings = [
        envelope(&ka, "alice-pv", 1, g * 1000, 0),
        envelope(&ka, "alice-pv", 2, (g + 43_200) * 1000, 3_000),
        envelope(&ka, "alice-pv", 3, (g + 86_399) * 1000, 6_000),
    ];
    let file = w.path("readings.jsonl");
    std::fs::write(&file, readings.join("\n")).expect("write readings");
    let err = w.fails(&alice, &["prove", "alice-pv", "--readings", &file]);
    assert!(err.contains("can be proven now"), "{err}");
    advance_to(&chain, g + 86_400 + 10).await;
    drop(chain);
    let out = w.ok(&alice, &["prove", "alice-pv", "--readings", &file]);
    assert_eq!(
        (out["epoch"].as_u64(), out["to_seq"].as_u64()),
        (Some(0), Some(3))
    );
    assert_eq!(out["credited_wh"].as_u64(), Some(6_000 * 86_399 / 86_400));

    // Epoch 1: the agent's newer readings appended; the proof continues where the last ended
    // (seq 3), and a reading that is not the newest provable one is not chosen.
    let chain = (w.open)();
    settle_sale(
        &chain,
        &w.d,
        w.deployer.address,
        2,
        (g + 86_400 + 3_600) * 1000,
        (
            text_id("alice-pv").expect("id"),
            text_id("bob-home").expect("id"),
            2_000,
        ),
    )
    .await;
    let mut more = readings.to_vec();
    more.push(envelope(
        &ka,
        "alice-pv",
        4,
        (g + 86_400 + 40_000) * 1000,
        7_000,
    ));
    more.push(envelope(
        &ka,
        "alice-pv",
        5,
        (g + 2 * 86_400 - 1) * 1000,
        9_500,
    ));
    std::fs::write(&file, more.join("\n")).expect("write readings");
    advance_to(&chain, g + 2 * 86_400 + 10).await;
    drop(chain);
    let out = w.ok(&alice, &["prove", "alice-pv", "--readings", &file]);
    assert_eq!(
        (
            out["epoch"].as_u64(),
            out["from_seq"].as_u64(),
            out["to_seq"].as_u64()
        ),
        (Some(1), Some(3), Some(5))
    );
    // Sold 2 kWh, exported 3.5 kWh: the sale decides, weighted by the epoch's coverage
    // (all but its last second).
    assert_eq!(out["credited_wh"].as_u64(), Some(2_000 * 86_399 / 86_400));

    // The reward vests a week after the epoch is final.
    let err = w.fails(&alice, &["claim", "alice-pv"]);
    assert!(err.contains("NotVested"), "{err}");
    let chain = (w.open)();
    advance_to(&chain, g + 2 * 86_400 + w.params.unbonding_period + 10).await;
    let before: alloy::primitives::U256 = chain
        .view(
            w.d.network_token,
            GridToken::balanceOfCall {
                account: alice.address,
            },
        )
        .await
        .expect("balance");
    drop(chain);
    let status = w.ok(&alice, &["status", "alice-pv"]);
    assert_eq!(
        (status["attested"].as_bool(), status["stake"].as_str()),
        (Some(true), Some("150"))
    );
    let claimable = status["claimable"].as_str().expect("claimable").to_owned();
    let out = w.ok(&alice, &["claim", "alice-pv"]);
    assert_eq!(
        out["claimed"].as_str(),
        Some(claimable.as_str()),
        "{status} {out}"
    );
    // Alone in epoch 0: all of its 1 000 tokens but rounding dust.
    assert!(claimable.starts_with("999.99999999999999"), "{claimable}");
    let chain = (w.open)();
    let after: alloy::primitives::U256 = chain
        .view(
            w.d.network_token,
            GridToken::balanceOfCall {
                account: alice.address,
            },
        )
        .await
        .expect("balance");
    assert_eq!(
        gridshare_operator::amount::format_tokens(after - before),
        claimable
    );
    drop(chain);
    assert_eq!(w.ok(&alice, &["status", "alice-pv"])["claimable"], "0");

    // Unbond, wait, withdraw.
    let out = w.ok(&alice, &["unbond", "alice-pv", "50"]);
    assert_eq!(out["unbonding"], "50");
    let err = w.fails(&alice, &["withdraw", "alice-pv"]);
    assert!(err.contains("NotUnbonded"), "{err}");
    let chain = (w.open)();
    chain
        .advance_time(w.params.unbonding_period + 1)
        .await
        .expect("advance");
    drop(chain);
    assert_eq!(w.ok(&alice, &["withdraw", "alice-pv"])["withdrawn"], "50");
    assert_eq!(w.ok(&alice, &["status", "alice-pv"])["stake"], "100");
}

/// A household through `gridshare account`: deposit, a stricter allowance that waits, a
/// withdrawal that waits; the owner through `gridshare operator`: a proposed operator waits,
/// only the owner revokes.
async fn household_keeps_its_money_and_the_owner_rotates_the_operator<C: Chain, F: Fn() -> C>(
    w: &World<F>,
    alice: Account,
) {
    let chain = (w.open)();
    fund(&chain, &w.d, w.deployer.address, alice.address, tokens(1)).await;
    chain
        .transact(
            w.deployer.address,
            w.d.payment_token,
            GridToken::transferCall {
                to: alice.address,
                value: alloy::primitives::U256::from(1_000_000u64),
            },
        )
        .await
        .expect("payment tokens");
    drop(chain);
    let out = w.ok(&alice, &["account", "deposit", "1000000"]);
    assert_eq!(
        (out["open"].clone(), out["balance"].clone()),
        (true.into(), "1000000".into())
    );
    let out = w.ok(
        &alice,
        &["account", "allowance", "2000", "--period", "week"],
    );
    assert_eq!(
        out["allowance"], "5000000",
        "a stricter allowance waits: {out}"
    );
    let err = w.fails(&alice, &["account", "allowance", "4294967297"]);
    assert!(err.contains("InvalidTerms"), "{err}");
    let out = w.ok(&alice, &["account", "request-withdrawal", "400000"]);
    assert_eq!(out["pending_withdrawal"], "400000");
    assert_eq!(out["balance"], "600000");
    let err = w.fails(&alice, &["account", "withdraw"]);
    assert!(err.contains("TooEarly"), "{err}");
    let chain = (w.open)();
    chain.advance_time(6 * 3_600 + 1).await.expect("advance");
    drop(chain);
    assert_eq!(
        w.ok(&alice, &["account", "withdraw"])["withdrawn"],
        "400000"
    );
    let out = w.ok(&alice, &["account", "status"]);
    assert_eq!(out["allowance"], "2000", "{out}");
    assert_eq!(out["allowance_period_s"], "604800", "{out}");

    let me = alice.address.to_string();
    let out = w.ok(&w.deployer, &["operator", "propose", &me]);
    assert!(out["ready_at"].as_u64().is_some_and(|t| t > 0), "{out}");
    let err = w.fails(&alice, &["operator", "activate"]);
    assert!(err.contains("TooEarly"), "{err}");
    let err = w.fails(&alice, &["operator", "revoke"]);
    assert!(err.contains("OwnableUnauthorizedAccount"), "{err}");
    let out = w.ok(&w.deployer, &["operator", "revoke"]);
    assert_eq!(out["operator"], Address::ZERO.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_path_on_the_embedded_chain() {
    let dir = tempfile::tempdir().expect("dir");
    let state = dir.path().join("chain.json");
    let deployer = Address::repeat_byte(0xde);
    let chain = EmbeddedChain::open(&state).expect("open");
    let (d, params) = deploy(&chain, deployer).await;
    drop(chain);
    let path = state.clone();
    let world = World {
        open: move || EmbeddedChain::open(&path).expect("open"),
        chain_args: vec!["--embedded-state".into(), state.display().to_string()],
        d,
        params,
        deployer: Account {
            address: deployer,
            key: None,
        },
        dir,
    };
    let account = |b: u8| Account {
        address: Address::repeat_byte(b),
        key: None,
    };
    operator_stakes_earns_and_claims(&world, account(0xa1), account(0xb2)).await;
    household_keeps_its_money_and_the_owner_rotates_the_operator(&world, account(0xc3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_path_on_anvil() {
    let _turn = ANVIL_SERIAL.lock().await;
    let Some(anvil) = Anvil::start() else {
        return;
    };
    let key: PrivateKeySigner = ANVIL_KEY.parse().expect("key");
    let deployer = key.address();
    let chain = RpcChain::connect(&anvil.url, Some(key)).expect("connect");
    let (d, params) = deploy(&chain, deployer).await;
    let url = anvil.url.clone();
    let world = World {
        open: move || {
            RpcChain::connect(&url, Some(ANVIL_KEY.parse().expect("key"))).expect("connect")
        },
        chain_args: vec!["--rpc-url".into(), anvil.url.clone()],
        d,
        params,
        deployer: Account {
            address: deployer,
            key: Some(ANVIL_KEY.into()),
        },
        dir: tempfile::tempdir().expect("dir"),
    };
    let account = || {
        let (key, address) = random_account();
        Account {
            address,
            key: Some(key),
        }
    };
    operator_stakes_earns_and_claims(&world, account(), account()).await;
    household_keeps_its_money_and_the_owner_rotates_the_operator(&world, account()).await;
    drop(anvil);
}
