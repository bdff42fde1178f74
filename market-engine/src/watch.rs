//! The fraud watcher inside the engine: the same watcher anyone can run with
//! `gridshare watch` (`gridshare_operator::watcher`), following the community's signed readings
//! on the engine's broker. A meter whose key signs two readings that cannot both be true — two
//! different readings with one sequence number, or a counter going backwards — is reported to
//! `MeterStaking` (commit, then reveal), which slashes its stake and unvested rewards and pays
//! the engine's operator key the reporter's share.
//!
//! Design: the watcher subscribes to the broker like any other client instead of being fed by
//! the ingest, so it sees what every neighbour sees — including a reading the ingest refused
//! as a conflicting duplicate — and is exactly the process a household could run itself.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use gridshare_contracts::chain::Chain;
use gridshare_contracts::staking::StakingClient;
use gridshare_operator::watcher::{MqttSource, Outcome, Watcher, run_mqtt};
use tokio::sync::watch;

use crate::chain::{WatchTarget, WatchedChain};
use crate::metrics::ChainMetrics;

/// Watches until `stop` turns true.
pub async fn run(
    target: WatchTarget,
    source: MqttSource,
    metrics: Arc<ChainMetrics>,
    stop: watch::Receiver<bool>,
) {
    match target.chain {
        WatchedChain::Embedded(chain) => {
            follow(
                chain,
                target.staking,
                target.reporter,
                source,
                metrics,
                stop,
            )
            .await;
        }
        WatchedChain::Rpc(chain) => {
            follow(
                chain,
                target.staking,
                target.reporter,
                source,
                metrics,
                stop,
            )
            .await;
        }
    }
}

async fn follow<C: Chain>(
    chain: C,
    staking: alloy::primitives::Address,
    reporter: alloy::primitives::Address,
    source: MqttSource,
    metrics: Arc<ChainMetrics>,
    stop: watch::Receiver<bool>,
) {
    let mut watcher = Watcher::new(StakingClient::new(chain, staking), reporter);
    tracing::info!(target: "watcher", %staking, %reporter, "watching the community's readings for fraud");
    let counted = |outcome: &Outcome| {
        if let Outcome::Slashed { .. } = outcome {
            metrics.slashes.fetch_add(1, Ordering::Relaxed);
        }
    };
    if let Err(e) = run_mqtt(&mut watcher, &source, stop, counted).await {
        tracing::error!(target: "watcher", "broker: {e}");
    }
}
