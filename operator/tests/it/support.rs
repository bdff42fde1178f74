//! Chains, deployments and meters for the tests.

use alloy::primitives::{Address, B256, U256};
use alloy::signers::local::PrivateKeySigner;
use gridshare_contracts::bindings::{GridToken, Settlement};
use gridshare_contracts::chain::ChainExt;
use gridshare_contracts::staking::Sale;
use gridshare_contracts::{Chain, Deployment, StakingParams};

/// anvil's first development key (public knowledge, from its default mnemonic).
pub(crate) const ANVIL_KEY: &str =
    "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// Seconds between deployment and the start of epoch 0.
pub(crate) const GENESIS_DELAY_S: u64 = 600;

pub(crate) fn tokens(n: u64) -> U256 {
    U256::from(n) * U256::from(10u64).pow(U256::from(18u64))
}

/// Day-long epochs, 1 000 tokens emitted in epoch 0, a week of unbonding.
pub(crate) fn params(genesis: u64) -> StakingParams {
    StakingParams {
        min_stake: tokens(100),
        unbonding_period: 7 * 86_400,
        genesis,
        epoch_duration: 86_400,
        proof_window: 86_400,
        initial_emission: tokens(1_000),
        halving_epochs: 180,
        slash_bps: 5_000,
        reporter_bps: 1_000,
        max_reward_per_wh: tokens(1),
    }
}

/// Deploys the contracts from `deployer` (also settlement operator, treasury and verifier) and
/// funds the reward pool.
pub(crate) async fn deploy<C: Chain>(chain: &C, deployer: Address) -> (Deployment, StakingParams) {
    chain.prepare_account(deployer).await.expect("prepare");
    let now = chain.timestamp().await.expect("now");
    let params = params(now + GENESIS_DELAY_S);
    let d = Deployment::deploy(
        chain,
        deployer,
        deployer,
        None,
        tokens(1_000_000_000),
        &params,
    )
    .await
    .expect("deploy");
    chain
        .transact(
            deployer,
            d.network_token,
            GridToken::approveCall {
                spender: d.staking,
                value: U256::MAX,
            },
        )
        .await
        .expect("approve");
    chain
        .transact(
            deployer,
            d.staking,
            gridshare_contracts::bindings::MeterStaking::fundRewardsCall {
                amount: tokens(100_000),
            },
        )
        .await
        .expect("fund rewards");
    (d, params)
}

/// Gives `who` gas money and `amount` network tokens.
pub(crate) async fn fund<C: Chain>(
    chain: &C,
    d: &Deployment,
    deployer: Address,
    who: Address,
    amount: U256,
) {
    chain.prepare_account(who).await.expect("prepare");
    chain
        .transact(
            deployer,
            d.network_token,
            GridToken::transferCall {
                to: who,
                value: amount,
            },
        )
        .await
        .expect("transfer");
}

/// The operator settles an empty batch carrying one sale.
pub(crate) async fn settle_sale<C: Chain>(
    chain: &C,
    d: &Deployment,
    operator: Address,
    batch: u64,
    at_ms: u64,
    (seller, buyer, wh): (B256, B256, u64),
) {
    chain
        .transact(
            operator,
            d.settlement,
            Settlement::settleWithSalesCall {
                batchId: batch,
                root: B256::repeat_byte(0x77),
                deltas: vec![],
                deliveredAtMs: at_ms,
                sales: vec![Sale {
                    seller,
                    buyer,
                    energyWh: wh,
                }],
            },
        )
        .await
        .expect("settle with sales");
}

/// Moves the chain's clock to `target` (s) if it is behind.
pub(crate) async fn advance_to<C: Chain>(chain: &C, target: u64) {
    let now = chain.timestamp().await.expect("now");
    if target > now {
        chain.advance_time(target - now).await.expect("advance");
    }
}

/// A random account key (hex) and its address.
pub(crate) fn random_account() -> (String, Address) {
    let key = PrivateKeySigner::random();
    (
        alloy::primitives::hex::encode(key.to_bytes()),
        key.address(),
    )
}

pub(crate) use gridshare_testbed::anvil::Anvil;

/// Tests on one shared anvil take turns: they move its clock.
pub(crate) static ANVIL_SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
