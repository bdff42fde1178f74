//! `gridshare`: a meter operator's, a verifier's and a watcher's command line for the Gridshare
//! staking contract, and a household's and the owner's for the settlement contract (`account`,
//! `operator`), on a JSON-RPC chain or an embedded chain state file.
//!
//! Every command prints one JSON object on success and a reason on failure (a contract's
//! refusal is named, e.g. `NotVested`). An account key is read from an environment variable,
//! never from the command line.

use alloy::primitives::{Address, U256};
use alloy::signers::local::PrivateKeySigner;
use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use gridshare_contracts::chain::{Chain, EmbeddedChain, RpcChain};
use gridshare_contracts::household::{self, SettlementClient};
use gridshare_contracts::staking::{StakingClient, describe, device_hash, text_id};
use gridshare_core::mqtt::{BrokerUrl, DEFAULT_TOPIC_PREFIX};
use gridshare_core::reading::{PublicKey, SignedReading};
use gridshare_operator::amount::{format_tokens, parse_tokens};
use gridshare_operator::proof::{LastProven, Schedule, plan};
use gridshare_operator::registration::sign_registration;
use gridshare_operator::watcher::{MqttSource, Outcome, Watcher, run_mqtt};
use serde_json::json;
use std::path::PathBuf;

/// Register, attest and stake on meters, claim their rewards, and watch for fraud.
#[derive(Debug, Parser)]
#[command(name = "gridshare", version)]
struct Cli {
    /// JSON-RPC endpoint of the chain.
    #[arg(long, global = true, env = "GRIDSHARE_RPC_URL")]
    rpc_url: Option<String>,
    /// Use an embedded chain state file instead (the market engine's `chain.state_file`).
    #[arg(
        long,
        global = true,
        env = "GRIDSHARE_EMBEDDED_STATE",
        conflicts_with = "rpc_url"
    )]
    embedded_state: Option<PathBuf>,
    /// Address of the MeterStaking contract (`staking` in gridshare-deploy's output).
    #[arg(long, global = true, env = "GRIDSHARE_STAKING")]
    staking: Option<Address>,
    /// Address of the Settlement contract (`settlement` in gridshare-deploy's output), for
    /// `account` and `operator`.
    #[arg(long, global = true, env = "GRIDSHARE_SETTLEMENT")]
    settlement: Option<Address>,
    /// Environment variable holding the account's hex private key (JSON-RPC).
    #[arg(long, global = true, default_value = "GRIDSHARE_ACCOUNT_KEY")]
    key_env: String,
    /// The account acting on the embedded chain (it accepts any sender).
    #[arg(long, global = true)]
    from: Option<Address>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Household: this account in the Settlement contract (amounts in the payment token's
    /// smallest unit).
    Account {
        #[command(subcommand)]
        action: AccountAction,
    },
    /// Settlement owner: propose, activate or revoke the operator key.
    Operator {
        #[command(subcommand)]
        action: OperatorAction,
    },
    /// Register a meter for this account, signed by the meter's key (`meter-agent keygen`).
    Register {
        /// Meter id, as the agent's readings carry it.
        meter: String,
        /// The meter agent's key file (PKCS#8, mode 0600).
        #[arg(long)]
        meter_key: PathBuf,
    },
    /// Replace a meter's key with the one in `--meter-key` (a verifier attests it again).
    RotateKey {
        /// Meter id.
        meter: String,
        /// The new key file.
        #[arg(long)]
        meter_key: PathBuf,
    },
    /// Verifier: attest an inspected meter's key, device, capacity and grid connection point.
    Attest {
        /// Meter id.
        meter: String,
        /// The meter's public key, hex (130 digits, from `meter-agent pubkey`).
        #[arg(long)]
        public_key: String,
        /// SunSpec model 1 manufacturer (`Mn`).
        #[arg(long)]
        manufacturer: String,
        /// SunSpec model 1 model (`Md`).
        #[arg(long)]
        model: String,
        /// SunSpec model 1 serial number (`SN`).
        #[arg(long)]
        serial: String,
        /// Rated export capacity, W.
        #[arg(long)]
        export_w: u32,
        /// Rated import capacity, W.
        #[arg(long)]
        import_w: u32,
        /// Grid connection point (e.g. the supply point number), at most 32 bytes.
        #[arg(long)]
        grid_point: String,
    },
    /// Owner: appoint (or with --remove, dismiss) a verifier.
    Verifier {
        /// The verifier's address.
        address: Address,
        /// Dismiss instead of appoint.
        #[arg(long)]
        remove: bool,
    },
    /// Stake network tokens on a meter (approves the contract first if needed).
    Stake {
        /// Meter id.
        meter: String,
        /// Tokens, e.g. 100 or 0.5.
        amount: String,
    },
    /// Start unbonding stake; withdraw it after the unbonding period.
    Unbond {
        /// Meter id.
        meter: String,
        /// Tokens.
        amount: String,
    },
    /// Withdraw stake whose unbonding period has ended.
    Withdraw {
        /// Meter id.
        meter: String,
    },
    /// Retire a meter: its whole stake starts unbonding.
    Deregister {
        /// Meter id.
        meter: String,
    },
    /// Let another account (e.g. the market engine) prove and claim for this meter.
    Delegate {
        /// Meter id.
        meter: String,
        /// The delegate; the zero address revokes.
        to: Address,
    },
    /// Prove the meter's newest provable epoch from its stored readings (JSON lines of signed
    /// reading envelopes, as the agent publishes them), starting at the last proven reading.
    Prove {
        /// Meter id.
        meter: String,
        /// File of signed readings, one envelope per line.
        #[arg(long)]
        readings: PathBuf,
    },
    /// Claim the meter's vested rewards (to its owner).
    Claim {
        /// Meter id.
        meter: String,
        /// Last epoch to claim; defaults to every vested one.
        #[arg(long)]
        through: Option<u64>,
    },
    /// A meter's stake, attestation and rewards.
    Status {
        /// Meter id.
        meter: String,
    },
    /// Follow a community's readings on an MQTT broker and report fraud, as this account.
    Watch {
        /// Broker URL, `mqtt://host:port`.
        #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
        broker: String,
        /// The community.
        #[arg(long)]
        community: String,
        /// Topic prefix.
        #[arg(long, default_value = DEFAULT_TOPIC_PREFIX)]
        prefix: String,
        /// Environment variables with broker user name and password, if the broker needs them.
        #[arg(long)]
        mqtt_user_env: Option<String>,
        /// See --mqtt-user-env.
        #[arg(long, default_value = "GRIDSHARE_MQTT_PASSWORD")]
        mqtt_password_env: String,
    },
}

#[derive(Debug, Subcommand)]
enum AccountAction {
    /// Open the account: from now on settlement batches may credit and debit it.
    Open,
    /// Deposit from this wallet (approves the contract first if needed; opens the account).
    Deposit { amount: u128 },
    /// Set how much the market operator may take per period (stricter terms apply after the
    /// withdrawal delay, looser ones at once).
    Allowance {
        /// A round figure m × 10^e with m < 2^32.
        amount: u128,
        #[arg(long, value_enum, default_value_t = Period::Day)]
        period: Period,
    },
    /// Ask to withdraw; payable after the contract's withdrawal delay.
    RequestWithdrawal { amount: u128 },
    /// Take a pending withdrawal back into the balance.
    CancelWithdrawal,
    /// Take out the pending withdrawal once its delay has passed.
    Withdraw,
    /// Balance, pending withdrawal, debt and allowance (of this account, or --address).
    Status {
        #[arg(long)]
        address: Option<Address>,
    },
}

#[derive(Debug, Subcommand)]
enum OperatorAction {
    /// Owner: propose a new operator key (it may take over after the governance delay).
    Propose { address: Address },
    /// Anyone: make the proposed operator the operator once its delay has passed.
    Activate,
    /// Owner: remove the operator at once (settlement stops; no money moves).
    Revoke,
    /// The operator key.
    Show,
}

/// Allowance periods the contract accepts.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Period {
    Hour,
    Day,
    Week,
    Month,
}

impl Period {
    fn seconds(self) -> u32 {
        match self {
            Self::Hour => 3_600,
            Self::Day => 86_400,
            Self::Week => 7 * 86_400,
            Self::Month => 30 * 86_400,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match (&cli.rpc_url, &cli.embedded_state) {
        (Some(url), _) => {
            let key: PrivateKeySigner = std::env::var(&cli.key_env)
                .with_context(|| format!("set {} to the account's private key", cli.key_env))?
                .trim()
                .parse()
                .with_context(|| format!("{} is not a hex secp256k1 private key", cli.key_env))?;
            let account = key.address();
            let chain = RpcChain::connect(url, Some(key))?;
            dispatch(chain, account, cli).await
        }
        (None, Some(path)) => {
            let account = cli
                .from
                .context("give --from: the account acting on the embedded chain")?;
            let chain = EmbeddedChain::open(path)
                .with_context(|| format!("embedded chain {}", path.display()))?;
            dispatch(chain, account, cli).await
        }
        (None, None) => bail!("give --rpc-url or --embedded-state"),
    }
}

/// Settlement commands need `--settlement`, the others `--staking`.
async fn dispatch<C: Chain>(chain: C, account: Address, cli: Cli) -> anyhow::Result<()> {
    let settlement = || {
        cli.settlement
            .context("give --settlement (the Settlement address) or set GRIDSHARE_SETTLEMENT")
    };
    match cli.command {
        Command::Account { action } => {
            household_command(SettlementClient::new(chain, settlement()?), account, action).await
        }
        Command::Operator { action } => {
            operator_command(SettlementClient::new(chain, settlement()?), account, action).await
        }
        command => {
            let staking = cli
                .staking
                .context("give --staking (the MeterStaking address) or set GRIDSHARE_STAKING")?;
            run(StakingClient::new(chain, staking), account, command).await
        }
    }
}

/// Turns a settlement contract refusal into an error naming it.
fn settlement_refused(e: gridshare_contracts::ChainError) -> anyhow::Error {
    anyhow::anyhow!(household::describe(&e))
}

async fn household_command<C: Chain>(
    client: SettlementClient<C>,
    account: Address,
    action: AccountAction,
) -> anyhow::Result<()> {
    let out = match action {
        AccountAction::Open => client.open(account).await,
        AccountAction::Deposit { amount } => client.deposit(account, U256::from(amount)).await,
        AccountAction::Allowance { amount, period } => {
            client
                .set_allowance(account, amount, period.seconds())
                .await
        }
        AccountAction::RequestWithdrawal { amount } => {
            client.request_withdrawal(account, U256::from(amount)).await
        }
        AccountAction::CancelWithdrawal => client.cancel_withdrawal(account).await,
        AccountAction::Withdraw => {
            let (paid, out) = client.withdraw(account).await.map_err(settlement_refused)?;
            print(json!({"withdrawn": paid.to_string(), "account": account, "tx": out.tx_hash}));
            return Ok(());
        }
        AccountAction::Status { address } => {
            let address = address.unwrap_or(account);
            print(status_json(address, &client.account(address).await?));
            return Ok(());
        }
    }
    .map_err(settlement_refused)?;
    let mut value = status_json(account, &client.account(account).await?);
    value["tx"] = json!(out.tx_hash);
    value["gas_used"] = json!(out.gas_used);
    print(value);
    Ok(())
}

/// An account's state with amounts as decimal strings (payment-token units).
fn status_json(account: Address, s: &household::AccountStatus) -> serde_json::Value {
    json!({
        "account": account,
        "open": s.open,
        "balance": s.balance.to_string(),
        "pending_withdrawal": s.pending_withdrawal.to_string(),
        "withdrawable_at": s.withdrawable_at,
        "debt": s.debt.to_string(),
        "allowance": s.allowance.to_string(),
        "allowance_period_s": s.allowance_period.to_string(),
        "allowance_remaining": s.allowance_remaining.to_string(),
    })
}

async fn operator_command<C: Chain>(
    client: SettlementClient<C>,
    account: Address,
    action: OperatorAction,
) -> anyhow::Result<()> {
    match action {
        OperatorAction::Propose { address } => {
            let (ready_at, out) = client
                .propose_operator(account, address)
                .await
                .map_err(settlement_refused)?;
            print(json!({"proposed": address, "ready_at": ready_at, "tx": out.tx_hash}));
        }
        OperatorAction::Activate => {
            let out = client
                .activate_operator(account)
                .await
                .map_err(settlement_refused)?;
            print(json!({"operator": client.operator().await?, "tx": out.tx_hash}));
        }
        OperatorAction::Revoke => {
            let out = client
                .revoke_operator(account)
                .await
                .map_err(settlement_refused)?;
            print(json!({"operator": client.operator().await?, "tx": out.tx_hash}));
        }
        OperatorAction::Show => print(json!({"operator": client.operator().await?})),
    }
    Ok(())
}

fn meter_id(meter: &str) -> anyhow::Result<alloy::primitives::B256> {
    text_id(meter).map_err(|e| anyhow::anyhow!("meter id: {e}"))
}

fn tokens(text: &str) -> anyhow::Result<U256> {
    parse_tokens(text).map_err(|e| anyhow::anyhow!(e))
}

/// Turns a contract refusal into an error naming it.
fn refused(e: gridshare_contracts::ChainError) -> anyhow::Error {
    anyhow::anyhow!(describe(&e))
}

fn print(value: serde_json::Value) {
    println!("{value}");
}

/// Registers the meter with the key in `meter_key` (or, with `rotation`, makes it the meter's
/// new key), the key signing the contract's registration statement.
async fn register<C: Chain>(
    client: &StakingClient<C>,
    account: Address,
    meter: &str,
    meter_key: &std::path::Path,
    rotation: bool,
) -> anyhow::Result<()> {
    let key = meter_agent::keys::load(meter_key)?;
    let sig = sign_registration(client, &key, meter, account, rotation).await?;
    let public = key.public_key();
    let xy = (public.x().into(), public.y().into());
    let id = meter_id(meter)?;
    let out = if rotation {
        client.rotate_key(account, id, xy, sig).await
    } else {
        client.register(account, id, xy, sig).await
    }
    .map_err(refused)?;
    print(json!({
        if rotation { "rotated" } else { "registered" }: meter,
        "owner": account,
        "public_key": public.to_hex(),
        "tx": out.tx_hash,
        "gas_used": out.gas_used,
    }));
    Ok(())
}

async fn run<C: Chain>(
    client: StakingClient<C>,
    account: Address,
    command: Command,
) -> anyhow::Result<()> {
    match command {
        Command::Register { meter, meter_key } => {
            register(&client, account, &meter, &meter_key, false).await?;
        }
        Command::RotateKey { meter, meter_key } => {
            register(&client, account, &meter, &meter_key, true).await?;
        }
        Command::Attest {
            meter,
            public_key,
            manufacturer,
            model,
            serial,
            export_w,
            import_w,
            grid_point,
        } => {
            let public = PublicKey::from_hex(&public_key).context("--public-key")?;
            let device =
                device_hash(&manufacturer, &model, &serial).map_err(|e| anyhow::anyhow!(e))?;
            let gcp = text_id(&grid_point).map_err(|e| anyhow::anyhow!("--grid-point: {e}"))?;
            let out = client
                .attest(
                    account,
                    meter_id(&meter)?,
                    (public.x().into(), public.y().into()),
                    device,
                    export_w,
                    import_w,
                    gcp,
                )
                .await
                .map_err(refused)?;
            print(
                json!({"attested": meter, "device": device, "export_w": export_w, "import_w": import_w, "grid_point": grid_point, "tx": out.tx_hash, "gas_used": out.gas_used}),
            );
        }
        Command::Verifier { address, remove } => {
            let out = client
                .set_verifier(account, address, !remove)
                .await
                .map_err(refused)?;
            print(json!({"verifier": address, "allowed": !remove, "tx": out.tx_hash}));
        }
        Command::Stake { meter, amount } => {
            let amount = tokens(&amount)?;
            let token = client.token().await?;
            let allowance = client
                .chain()
                .call(
                    Address::ZERO,
                    token,
                    alloy::sol_types::SolCall::abi_encode(
                        &gridshare_contracts::bindings::GridToken::allowanceCall {
                            owner: account,
                            spender: client.address(),
                        },
                    )
                    .into(),
                )
                .await?;
            if U256::from_be_slice(&allowance) < amount {
                client.approve(account).await.map_err(refused)?;
            }
            let out = client
                .stake(account, meter_id(&meter)?, amount)
                .await
                .map_err(refused)?;
            print(
                json!({"staked": format_tokens(amount), "meter": meter, "tx": out.tx_hash, "gas_used": out.gas_used}),
            );
        }
        Command::Unbond { meter, amount } => {
            let amount = tokens(&amount)?;
            let id = meter_id(&meter)?;
            let out = client.unbond(account, id, amount).await.map_err(refused)?;
            let record = client.meter(id).await?;
            print(
                json!({"unbonding": format_tokens(record.unbonding), "meter": meter, "withdrawable_at": record.unbondingEnds, "tx": out.tx_hash}),
            );
        }
        Command::Withdraw { meter } => {
            let id = meter_id(&meter)?;
            let amount = client.meter(id).await?.unbonding;
            let out = client.withdraw(account, id).await.map_err(refused)?;
            print(json!({"withdrawn": format_tokens(amount), "meter": meter, "tx": out.tx_hash}));
        }
        Command::Deregister { meter } => {
            let out = client
                .deregister(account, meter_id(&meter)?)
                .await
                .map_err(refused)?;
            print(json!({"deregistered": meter, "tx": out.tx_hash}));
        }
        Command::Delegate { meter, to } => {
            let out = client
                .set_delegate(account, meter_id(&meter)?, to)
                .await
                .map_err(refused)?;
            print(json!({"meter": meter, "delegate": to, "tx": out.tx_hash}));
        }
        Command::Prove { meter, readings } => {
            let text = std::fs::read_to_string(&readings)
                .with_context(|| format!("--readings {}", readings.display()))?;
            let mut signed = Vec::new();
            for (n, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let r = SignedReading::from_json(line)
                    .with_context(|| format!("{} line {}", readings.display(), n + 1))?;
                if r.reading.meter_id.as_str() == meter {
                    signed.push(r);
                }
            }
            let id = meter_id(&meter)?;
            let record = client.meter(id).await?;
            let (genesis, epoch_duration, proof_window) = client.schedule().await?;
            let now = client.chain().timestamp().await?;
            let last = (record.lastTimestampMs != 0).then_some(LastProven {
                seq: record.lastSeq,
                timestamp_ms: record.lastTimestampMs,
                export_wh: record.lastExportWh,
                import_wh: record.lastImportWh,
            });
            let p = plan(
                &signed,
                last,
                Schedule {
                    genesis,
                    epoch_duration,
                    proof_window,
                },
                now,
            )?;
            let arg = |r: &SignedReading| {
                (
                    alloy::primitives::Bytes::copy_from_slice(&r.encoded()),
                    alloy::primitives::Bytes::copy_from_slice(&r.signature.0),
                )
            };
            let out = client
                .prove_epoch(
                    account,
                    id,
                    p.start.as_ref().map(arg).unwrap_or_default(),
                    arg(&p.end),
                )
                .await
                .map_err(refused)?;
            let credit = client.credit(id, p.epoch).await?;
            print(json!({
                "meter": meter,
                "epoch": p.epoch,
                "from_seq": p.start.as_ref().map_or(last.map(|l| l.seq), |s| Some(s.reading.seq)),
                "to_seq": p.end.reading.seq,
                "sold_wh": credit.soldWh,
                "exported_wh": credit.exportedWh,
                "credited_wh": credit.creditedWh,
                "tx": out.tx_hash,
                "gas_used": out.gas_used,
            }));
        }
        Command::Claim { meter, through } => {
            let through = match through {
                Some(t) => t,
                None => client.current_epoch().await?,
            };
            let (paid, out) = client
                .claim(account, meter_id(&meter)?, through)
                .await
                .map_err(refused)?;
            print(
                json!({"claimed": format_tokens(paid), "meter": meter, "through_epoch": through, "tx": out.tx_hash, "gas_used": out.gas_used}),
            );
        }
        Command::Status { meter } => {
            let id = meter_id(&meter)?;
            let m = client.meter(id).await?;
            if m.owner == Address::ZERO {
                bail!("meter {meter} is not registered on this staking contract");
            }
            let epoch = client.current_epoch().await?;
            let claimable = client.claimable(id, epoch).await?;
            print(json!({
                "meter": meter,
                "owner": m.owner,
                "active": m.active,
                "attested": m.attested,
                "slashed": m.slashed,
                "stake": format_tokens(m.stake),
                "unbonding": format_tokens(m.unbonding),
                "withdrawable_at": m.unbondingEnds,
                "export_capacity_w": m.exportCapacityW,
                "next_claim_epoch": m.nextClaimEpoch,
                "current_epoch": epoch,
                "claimable": format_tokens(claimable),
            }));
        }
        Command::Account { .. } | Command::Operator { .. } => {
            unreachable!("settlement commands are dispatched before")
        }
        Command::Watch {
            broker,
            community,
            prefix,
            mqtt_user_env,
            mqtt_password_env,
        } => {
            let url =
                BrokerUrl::parse(&broker).map_err(|e| anyhow::anyhow!("--broker: {}", e.reason))?;
            if url.tls {
                bail!("--broker: the watcher connects over plain MQTT only; use mqtt://");
            }
            let credentials = match mqtt_user_env {
                Some(user_env) => Some((
                    std::env::var(&user_env).with_context(|| format!("set {user_env}"))?,
                    std::env::var(&mqtt_password_env)
                        .with_context(|| format!("set {mqtt_password_env}"))?,
                )),
                None => None,
            };
            let source = MqttSource {
                host: url.host,
                port: url.port,
                prefix,
                community,
                client_id: format!("gridshare-watcher-{account}"),
                credentials,
                tls: None,
            };
            let (stop, shutdown) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                let _ = stop.send(true);
            });
            let mut watcher = Watcher::new(client, account);
            run_mqtt(&mut watcher, &source, shutdown, |outcome| {
                if let Outcome::Slashed {
                    meter,
                    contradiction,
                    tx,
                } = outcome
                {
                    print(json!({"slashed": meter, "reason": contradiction.to_string(), "tx": tx}));
                }
            })
            .await?;
        }
    }
    Ok(())
}
