//! `market-engine`: a neighbourhood's exchange as one binary. `market-engine --help` lists
//! the commands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[cfg(feature = "demo")]
mod demo;
use market_engine::config::{DEFAULT_CONFIG, EngineConfig};
use market_engine::server::Engine;

#[derive(Parser)]
#[command(
    name = "market-engine",
    version,
    about = "Gridshare market engine: signed readings in, a neighbourhood market out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine until Ctrl-C / SIGTERM.
    Serve {
        /// Config file (TOML); see `market-engine config`.
        #[arg(short, long, env = "MARKET_ENGINE_CONFIG")]
        config: Option<PathBuf>,
        /// Database URL (overrides the file).
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
        /// HTTP listen address (overrides the file).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Print the commented default configuration.
    Config,
    /// Create the community operator's account (or make an existing account the operator).
    /// The password is read from $GRIDSHARE_OPERATOR_PASSWORD, else from the first line of
    /// standard input.
    Operator {
        /// Config file (TOML), for the database.
        #[arg(short, long, env = "MARKET_ENGINE_CONFIG")]
        config: Option<PathBuf>,
        /// Database URL (overrides the file).
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
        /// The operator's login name.
        #[arg(long)]
        name: String,
    },
    /// The settlement batches on their way to the chain: list them, or send a refused one
    /// again once its cause is fixed (the running engine picks it up within seconds).
    Settlement {
        /// Config file (TOML), for the database.
        #[arg(short, long, env = "MARKET_ENGINE_CONFIG")]
        config: Option<PathBuf>,
        /// Database URL (overrides the file).
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
        #[command(subcommand)]
        action: SettlementAction,
    },
    /// Check my trades against the chain: rebuild each trade's leaf from its fields in a proof
    /// document (`GET /api/v1/my/settlements/{slot}/proof`, saved to a file), fold it onto the
    /// root the Settlement contract holds and ask the contract's `verifyTrade`. Exits with an
    /// error unless every trade verifies both ways.
    VerifyTrade {
        /// Any JSON-RPC node of the chain.
        #[arg(long, env = "GRIDSHARE_RPC_URL")]
        rpc_url: String,
        /// The Settlement contract.
        #[arg(long, env = "GRIDSHARE_SETTLEMENT")]
        settlement: alloy::primitives::Address,
        /// The proof document (JSON).
        #[arg(long)]
        proof: PathBuf,
    },
    /// The engine plus a simulated neighbourhood (simulated inverters read by real meter
    /// agents, each home trading its forecast surplus or need), in 15-second slots of
    /// accelerated time.
    #[cfg(feature = "demo")]
    Demo {
        /// Number of homes.
        #[arg(long, default_value_t = 12)]
        homes: usize,
        /// HTTP listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Port of the embedded MQTT broker.
        #[arg(long, default_value_t = 18830)]
        mqtt_port: u16,
        /// Simulated seconds per real second in the homes' inverters.
        #[arg(long, default_value_t = 60.0)]
        speed: f64,
        /// Directory for the database and keys (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Length of a reward epoch on the demo chain, s (proof window one epoch, vesting
        /// seven): the first reward is claimable about ten epochs after the start. Used when the
        /// directory's chain is new. At least 20: every transaction is a block of the embedded
        /// chain at least a second after the last, so a burst of proofs moves its clock ahead.
        #[arg(long, default_value_t = 30)]
        epoch_s: u64,
        /// For showing the fraud watcher: the last home's meter key also signs the readings of
        /// a second simulated inverter, read by a second agent (a cloned meter). Its counters
        /// contradict the first's, and the engine's watcher gets the meter slashed.
        #[arg(long)]
        cheat: bool,
    },
}

#[derive(Subcommand)]
enum SettlementAction {
    /// The batches not yet confirmed on chain, oldest first.
    List,
    /// Compares every account's balance in the engine's books with the Settlement contract
    /// (`balanceOf + withdrawalOf − debtOf`, plus batches and deposits still on their way).
    /// Exits with an error when any account differs.
    Balances {
        /// One JSON object per account instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Sends a refused batch again at the engine's next outbox step.
    Resend {
        /// The slot (= batch id).
        #[arg(long)]
        slot: u64,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| gridshare_mqtt::DEFAULT_LOG_FILTER.into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Config => print!("{DEFAULT_CONFIG}"),
        Command::VerifyTrade {
            rpc_url,
            settlement,
            proof,
        } => {
            use market_engine::chain::verify::{ProofDocument, verify_trades};
            let text = std::fs::read_to_string(&proof)
                .map_err(|e| anyhow::anyhow!("--proof {}: {e}", proof.display()))?;
            let doc: ProofDocument = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("--proof {}: {e}", proof.display()))?;
            let chain = gridshare_contracts::chain::RpcChain::connect(&rpc_url, None)
                .map_err(|e| anyhow::anyhow!("--rpc-url: {e}"))?;
            let checks = verify_trades(&chain, settlement, &doc)
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            println!(
                "{}",
                serde_json::json!({"batch_id": doc.batch_id, "trades": checks})
            );
            let failed = checks
                .iter()
                .filter(|c| !(c.on_chain && c.off_chain))
                .count();
            if failed > 0 {
                anyhow::bail!(
                    "{failed} of {} trades do not verify against batch {}'s root on chain",
                    checks.len(),
                    doc.batch_id
                );
            }
        }
        Command::Operator {
            config,
            database_url,
            name,
        } => {
            let mut c = load(config.as_deref())?;
            if let Some(url) = database_url {
                c.database.url = url;
            }
            let name = market_engine::api::auth::account_name(&name).map_err(anyhow::Error::msg)?;
            // The engine's own database, found as `serve` finds it; never a new one.
            let store = market_engine::store::Store::open_existing(&c.database.url).await?;
            println!("database {}", c.database.url);
            if store
                .set_role(&name, market_engine::store::Role::Operator)
                .await?
            {
                println!("{name} is now the community operator");
            } else {
                let password = match std::env::var("GRIDSHARE_OPERATOR_PASSWORD") {
                    Ok(p) => p,
                    Err(_) => {
                        let mut line = String::new();
                        std::io::stdin().read_line(&mut line)?;
                        line.trim_end_matches(['\r', '\n']).to_owned()
                    }
                };
                market_engine::api::auth::password_policy(&name, &password)
                    .map_err(anyhow::Error::msg)?;
                let hash = market_engine::api::auth::hash_password(&password)
                    .await
                    .map_err(anyhow::Error::msg)?;
                store
                    .create_account(
                        &name,
                        &hash,
                        market_engine::store::Role::Operator,
                        market_engine::pipeline::now_ms(),
                    )
                    .await?;
                println!("created the community operator {name}");
            }
            store.close().await;
        }
        Command::Settlement {
            config,
            database_url,
            action,
        } => {
            let mut c = load(config.as_deref())?;
            if let Some(url) = database_url {
                c.database.url = url;
            }
            let store = market_engine::store::Store::open_existing(&c.database.url).await?;
            match action {
                SettlementAction::List => {
                    let open = store.open_settlement_batches().await?;
                    if open.is_empty() {
                        println!("every settlement batch is confirmed on chain");
                    }
                    for r in open {
                        println!(
                            "slot {:>10}  {:<9} attempts {:<3} {}",
                            r.batch.id,
                            r.status.as_str(),
                            r.attempts,
                            r.last_error.as_deref().unwrap_or("")
                        );
                    }
                }
                SettlementAction::Balances { json } => {
                    let Some(settler) =
                        market_engine::chain::ChainSettler::open(&c.chain, store.clone()).await?
                    else {
                        anyhow::bail!(
                            "[chain] backend = \"none\": the books have no chain to agree with"
                        );
                    };
                    let rows = settler.reconcile().await?;
                    if !json {
                        println!(
                            "{:>8} {:<16} {:<42} {:>22} {:>22} {:>14} {:>14} {:>14} {:>10}",
                            "account",
                            "name",
                            "address",
                            "engine",
                            "chain balance",
                            "pending",
                            "debt",
                            "in flight",
                            "differs by"
                        );
                    }
                    for r in &rows {
                        if json {
                            println!("{}", serde_json::to_string(r)?);
                        } else {
                            println!(
                                "{:>8} {:<16} {:<42} {:>22} {:>22} {:>14} {:>14} {:>14} {:>10}",
                                r.account,
                                r.name,
                                format!("{:#x}", r.address),
                                r.engine,
                                r.chain_balance,
                                r.chain_pending,
                                r.chain_debt,
                                r.in_flight,
                                r.difference
                            );
                        }
                    }
                    let differ = rows.iter().filter(|r| r.difference != 0).count();
                    if differ > 0 {
                        anyhow::bail!(
                            "{differ} of {} accounts differ between the engine's books and the chain",
                            rows.len()
                        );
                    }
                    if !json {
                        println!(
                            "the engine's books and the chain agree for all {} accounts",
                            rows.len()
                        );
                    }
                }
                SettlementAction::Resend { slot } => {
                    if store
                        .resend_settlement_batch(slot, market_engine::pipeline::now_ms())
                        .await?
                    {
                        println!("slot {slot}: batch will be sent again at the next step");
                    } else {
                        anyhow::bail!(
                            "slot {slot} has no settlement batch waiting to be sent (not in the \
                             outbox, or already sent or confirmed); `market-engine settlement \
                             list` shows the open ones"
                        );
                    }
                }
            }
            store.close().await;
        }
        #[cfg(feature = "demo")]
        Command::Demo {
            homes,
            listen,
            mqtt_port,
            speed,
            dir,
            epoch_s,
            cheat,
        } => {
            if !(20..=86_400).contains(&epoch_s) {
                anyhow::bail!("--epoch-s must be between 20 and 86400");
            }
            if !(1..=200).contains(&homes) {
                anyhow::bail!("--homes must be between 1 and 200");
            }
            if !(speed > 0.0 && speed <= 10_000.0) {
                anyhow::bail!("--speed must be between 0 and 10000");
            }
            let dir = dir.unwrap_or_else(|| {
                std::env::temp_dir().join(format!("gridshare-engine-demo-{}", std::process::id()))
            });
            let options = demo::DemoOptions {
                homes,
                listen,
                mqtt_port,
                speed,
                dir,
                epoch_s,
                cheat,
            };
            demo::run(options, shutdown_signal()).await?;
        }
        Command::Serve {
            config,
            database_url,
            listen,
        } => {
            let mut c = load(config.as_deref())?;
            if let Some(url) = database_url {
                c.database.url = url;
            }
            if let Some(addr) = listen {
                c.http.listen = addr;
            }
            let engine = Engine::start(&c).await?;
            println!(
                "market engine for community {:?}: http://{}",
                c.community, engine.http
            );
            println!("  web app: http://{}/ (open it in a browser)", engine.http);
            let task_metrics = engine.task_metrics.clone();
            tokio::select! {
                () = shutdown_signal() => {
                    tracing::info!(target: "engine", "stopping");
                    engine.stop().await;
                }
                task = task_metrics.gave_up() => {
                    tracing::error!(target: "engine", task, "stopping: a background task kept failing");
                    engine.stop().await;
                    anyhow::bail!(
                        "background task {task} kept panicking; exiting so that the service manager restarts the engine"
                    );
                }
            }
        }
    }
    Ok(())
}

fn load(path: Option<&std::path::Path>) -> anyhow::Result<EngineConfig> {
    Ok(match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            EngineConfig::parse(&text, &path.display().to_string())?
        }
        None => EngineConfig::default(),
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
