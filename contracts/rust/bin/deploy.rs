//! `gridshare-deploy`: deploys the Gridshare contracts to an EVM chain over JSON-RPC (or to an
//! embedded chain state file) and prints their addresses as JSON.
//!
//! The deployer's private key is read from an environment variable, never from the command
//! line, so it does not end up in shell history or the process list.

use alloy::primitives::{Address, U256};
use alloy::signers::local::PrivateKeySigner;
use anyhow::{Context, bail};
use clap::Parser;
use gridshare_contracts::deploy::p256_precompile_available;
use gridshare_contracts::{
    Chain, Deployment, EmbeddedChain, RpcChain, SettlementParams, StakingParams,
};

/// Deploy GridToken, Settlement and MeterStaking.
#[derive(Debug, Parser)]
#[command(name = "gridshare-deploy", version)]
struct Args {
    /// JSON-RPC endpoint of the target chain (it must have the P256VERIFY precompile: Osaka
    /// or later, or an L2 with RIP-7212).
    #[arg(
        long,
        conflicts_with = "embedded_state",
        required_unless_present = "embedded_state"
    )]
    rpc_url: Option<String>,
    /// Deploy into an embedded chain state file instead (created if missing).
    #[arg(long)]
    embedded_state: Option<std::path::PathBuf>,
    /// Environment variable holding the deployer's hex private key (RPC only).
    #[arg(long, default_value = "GRIDSHARE_DEPLOYER_KEY")]
    key_env: String,
    /// Address allowed to submit settlement batches (the market engine's key). Defaults to
    /// the deployer.
    #[arg(long)]
    operator: Option<Address>,
    /// Existing ERC-20 to settle in (e.g. a stablecoin). Without it a second GridToken is
    /// deployed as a stand-in payment token, for demos only.
    #[arg(long)]
    payment_token: Option<Address>,
    /// Network token supply in whole tokens (18 decimals), minted to the deployer.
    #[arg(long, default_value_t = 1_000_000_000)]
    supply: u64,
    /// Unix time at which reward epoch 0 starts; defaults to the chain's latest block time.
    #[arg(long)]
    genesis: Option<u64>,
    /// Reward epoch, seconds (the proof window is one epoch, unbonding and vesting seven).
    /// Shorter than the default day only for demos and tests on a development chain.
    #[arg(long, default_value_t = StakingParams::daily(0).epoch_duration, value_parser = clap::value_parser!(u64).range(1..=u64::from(u32::MAX)))]
    epoch_s: u64,
    /// The community treasury account in Settlement (fronts what a household cannot pay, is
    /// repaid from its debt). Defaults to the deployer.
    #[arg(long)]
    treasury: Option<Address>,
    /// Operator allowance per day of a household that never set its own, in the payment
    /// token's smallest unit (the default assumes the engine's unit of 1/1 000 cent: 50 €).
    #[arg(long, default_value_t = SettlementParams::standard().default_allowance)]
    default_allowance: u128,
    /// Seconds between a withdrawal request and its payout; longer than settlement latency.
    #[arg(long, default_value_t = SettlementParams::standard().withdrawal_delay)]
    withdrawal_delay: u32,
    /// Seconds between proposing a new operator, treasury or owner and its effect; longer
    /// than the withdrawal delay.
    #[arg(long, default_value_t = SettlementParams::standard().governance_delay)]
    governance_delay: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let supply = U256::from(args.supply) * U256::from(10u64).pow(U256::from(18u64));
    let deployment = match (&args.rpc_url, &args.embedded_state) {
        (Some(url), _) => {
            let key: PrivateKeySigner = std::env::var(&args.key_env)
                .with_context(|| format!("set {} to the deployer's private key", args.key_env))?
                .trim()
                .parse()
                .context("the deployer key is not a hex secp256k1 private key")?;
            let deployer = key.address();
            let chain = RpcChain::connect(url, Some(key))?;
            deploy(&chain, deployer, &args, supply).await?
        }
        (None, Some(path)) => {
            let chain = EmbeddedChain::open(path)?;
            // The embedded chain accepts any sender; a fixed one keeps addresses stable.
            deploy(&chain, Address::repeat_byte(0xde), &args, supply).await?
        }
        (None, None) => bail!("give --rpc-url or --embedded-state"),
    };
    println!(
        "{}",
        serde_json::json!({
            "network_token": deployment.network_token,
            "payment_token": deployment.payment_token,
            "settlement": deployment.settlement,
            "staking": deployment.staking,
        })
    );
    Ok(())
}

async fn deploy<C: Chain>(
    chain: &C,
    deployer: Address,
    args: &Args,
    supply: U256,
) -> anyhow::Result<Deployment> {
    if !p256_precompile_available(chain).await? {
        bail!(
            "the chain has no P256VERIFY precompile at 0x100 (EIP-7951 / RIP-7212): signed \
             readings could never be verified there"
        );
    }
    let genesis = match args.genesis {
        Some(g) => g,
        None => chain.timestamp().await?,
    };
    let params = StakingParams::with_epoch(genesis, args.epoch_s);
    let operator = args.operator.unwrap_or(deployer);
    let settlement = SettlementParams {
        treasury: args.treasury,
        withdrawal_delay: args.withdrawal_delay,
        governance_delay: args.governance_delay,
        default_allowance: args.default_allowance,
        ..SettlementParams::standard()
    };
    if let Err(reason) = settlement.validate() {
        bail!("{reason}");
    }
    Ok(Deployment::deploy_with(
        chain,
        deployer,
        operator,
        args.payment_token,
        supply,
        &params,
        &settlement,
    )
    .await?)
}
