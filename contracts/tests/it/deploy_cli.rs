//! `gridshare-deploy` run as a process: its reward epoch is the day by default and what
//! `--epoch-s` says for a demo chain (the anvil walk-through deploys with 20-second epochs).

use alloy::primitives::Address;
use gridshare_contracts::EmbeddedChain;
use gridshare_contracts::bindings::MeterStaking;
use gridshare_contracts::chain::ChainExt;
use std::process::Command;

fn deploy(state: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gridshare-deploy"))
        .arg("--embedded-state")
        .arg(state)
        .args(extra)
        .output()
        .expect("gridshare-deploy runs")
}

async fn timing(state: &std::path::Path, staking: Address) -> (u64, u64, u64) {
    let chain = EmbeddedChain::open(state).expect("state");
    (
        chain
            .view(staking, MeterStaking::epochDurationCall {})
            .await
            .expect("epoch"),
        chain
            .view(staking, MeterStaking::proofWindowCall {})
            .await
            .expect("window"),
        chain
            .view(staking, MeterStaking::unbondingPeriodCall {})
            .await
            .expect("unbonding"),
    )
}

fn staking_of(out: &std::process::Output) -> Address {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    json["staking"]
        .as_str()
        .expect("staking")
        .parse()
        .expect("address")
}

#[tokio::test]
async fn deploy_takes_the_reward_epoch_from_epoch_s() {
    let dir = tempfile::tempdir().expect("dir");
    let daily = dir.path().join("daily.json");
    let staking = staking_of(&deploy(&daily, &[]));
    assert_eq!(timing(&daily, staking).await, (86_400, 86_400, 7 * 86_400));

    let short = dir.path().join("short.json");
    let staking = staking_of(&deploy(&short, &["--epoch-s", "20"]));
    assert_eq!(timing(&short, staking).await, (20, 20, 140));

    let refused = deploy(&dir.path().join("zero.json"), &["--epoch-s", "0"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--epoch-s"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
