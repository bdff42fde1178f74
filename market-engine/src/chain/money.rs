//! Money between the engine's books and the chain (issue 14): deposits the operator recorded
//! off chain are deposited on chain for their household, the contract's money events come back
//! into the books ([`super::follow`]), custodial withdrawals are asked of the contract and paid
//! out when due.

use alloy::primitives::{Address, B256, U256};
use gridshare_contracts::bindings::Settlement;
use gridshare_contracts::chain::{Chain, RpcChain};
use gridshare_contracts::settlement::ChainSettlement;

use super::{Backend, ChainSettler, FOLLOW_RANGES_PER_STEP, SettlerError, follow};
use crate::market::Market;

impl ChainSettler {
    /// Money between the engine's books and the chain, one step: every deposit the operator
    /// recorded (money that arrived off chain) is deposited on chain for its household, before
    /// the batches that spend it; the contract's confirmed money events are applied to the
    /// books ([`follow`]); and the custodial accounts' withdrawals that are due are paid out to
    /// their custodial addresses.
    pub async fn money_step(&self, market: &Market, now_ms: u64) -> MoneyProgress {
        match &self.backend {
            Backend::Embedded(settlement) => {
                self.money_step_on(settlement, market, now_ms, |_| {
                    Some(settlement.chain().clone())
                })
                .await
            }
            Backend::Rpc { settlement, url } => {
                self.money_step_on(settlement, market, now_ms, |key| {
                    RpcChain::connect(url, Some(key)).ok()
                })
                .await
            }
        }
    }

    async fn money_step_on<C: Chain + Clone>(
        &self,
        settlement: &ChainSettlement<C>,
        market: &Market,
        now_ms: u64,
        as_household: impl Fn(alloy::signers::local::PrivateKeySigner) -> Option<C>,
    ) -> MoneyProgress {
        let mut progress = MoneyProgress::default();
        match self.mirror_deposits(settlement, market).await {
            Ok((mirrored, failed)) => {
                progress.mirrored = mirrored;
                progress.mirror_failures = failed;
            }
            Err(e) => {
                progress.mirror_failures += 1;
                tracing::warn!(target: "chain", "operator-recorded deposits not deposited on chain: {e}");
            }
        }
        // Catching up (a first start on a long chain) reads up to this many ranges a step.
        for _ in 0..FOLLOW_RANGES_PER_STEP {
            match follow::step(
                market,
                &self.store,
                settlement,
                &self.custody,
                self.confirmations,
                self.follow_from,
                now_ms,
            )
            .await
            {
                Ok(f) => {
                    let applied = progress.follow.map_or(0, |p| p.applied);
                    progress.follow = Some(follow::FollowProgress {
                        applied: applied + f.applied,
                        ..f
                    });
                    if f.behind == 0 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(target: "chain", "deposits and withdrawals on chain not followed: {e}");
                    progress.follow_error = Some(e);
                    break;
                }
            }
        }
        if let Err(e) = self.pay_out(settlement, market, now_ms, as_household).await {
            tracing::warn!(target: "chain", "custodial withdrawals not paid out: {e}");
        }
        progress
    }

    /// Deposits what the operator recorded for each household and is not on chain yet — the
    /// net of its unmirrored rows, so a withdrawal paid off chain before a chain was configured
    /// lowers it — with `depositFor` from the operator key (which must hold the payment
    /// token), opening a custodial account first if needed. The transaction's hash is written
    /// on the rows as soon as the node has it; they count as on chain once it is in a block,
    /// and a dropped or reverted one is sent again. Returns (accounts mirrored, failures).
    async fn mirror_deposits<C: Chain>(
        &self,
        settlement: &ChainSettlement<C>,
        market: &Market,
    ) -> Result<(u64, u64), SettlerError> {
        use alloy::sol_types::SolCall;
        use gridshare_contracts::chain::TxStatus;
        let rows = self.store.unmirrored_funding().await?;
        let (mut mirrored, mut failed) = (0, 0);
        // First what was sent: in a block now, still waiting, or to be sent again.
        let mut waiting = std::collections::BTreeSet::new();
        let sent: std::collections::BTreeMap<&str, i64> = rows
            .iter()
            .filter_map(|r| r.chain_tx.as_deref().map(|tx| (tx, r.account)))
            .collect();
        for (tx, account) in sent {
            let hash: B256 =
                tx.parse()
                    .map_err(|e: alloy::hex::FromHexError| SettlerError::Stored {
                        what: "deposit transaction",
                        value: tx.to_owned(),
                        reason: e.to_string(),
                    })?;
            match settlement.chain().transaction(hash).await? {
                TxStatus::Included(i) if i.success => {
                    market.mark_mirrored(tx, i.block_number).await?;
                    mirrored += 1;
                }
                TxStatus::Pending => {
                    waiting.insert(account);
                }
                _ => {
                    market.unmark_mirrored(tx).await?;
                }
            }
        }
        // Then what is new: one deposit per account, of the net of its rows not yet sent.
        let mut net: std::collections::BTreeMap<i64, (i64, Vec<i64>)> = Default::default();
        for r in rows
            .iter()
            .filter(|r| r.chain_tx.is_none() && !waiting.contains(&r.account))
        {
            let entry = net.entry(r.account).or_default();
            entry.0 = entry.0.saturating_add(r.amount);
            entry.1.push(r.id);
        }
        let client =
            gridshare_contracts::SettlementClient::new(settlement.chain(), settlement.address());
        let operator = settlement.operator();
        for (account, (amount, ids)) in net {
            // Nothing to deposit (more was paid out off chain than recorded since): the rows
            // wait for the next deposit to net against.
            let Ok(amount) = u64::try_from(amount) else {
                continue;
            };
            if amount == 0 {
                continue;
            }
            let address = self.custody.address(account);
            let sent = async {
                if !client.is_open(address).await?
                    && let Some(key) = self.custody.signer(account)
                {
                    let signature = client.open_signature(&key).await?;
                    client.open_for(operator, address, signature).await?;
                }
                client.approve(operator, U256::from(amount)).await?;
                let data = Settlement::depositForCall {
                    account: address,
                    amount: U256::from(amount),
                }
                .abi_encode();
                settlement
                    .chain()
                    .submit(operator, settlement.address(), data.into())
                    .await
            }
            .await;
            match sent {
                Ok(hash) => {
                    let tx = format!("{hash:#x}");
                    market.mark_sent(&ids, &tx).await?;
                    if let TxStatus::Included(i) = settlement.chain().transaction(hash).await?
                        && i.success
                    {
                        market.mark_mirrored(&tx, i.block_number).await?;
                        mirrored += 1;
                    }
                    tracing::info!(target: "chain", account, amount, tx, "operator-recorded deposit deposited on chain");
                }
                Err(e) => {
                    failed += 1;
                    tracing::warn!(target: "chain", account, amount, error = %gridshare_contracts::household::describe(&e), "could not deposit an operator-recorded deposit on chain (does the operator key hold the payment token?); tried again");
                }
            }
        }
        Ok((mirrored, failed))
    }

    /// Pays out the pending withdrawals of custodial accounts that are due (to the custodial
    /// address, whose key the household can export).
    async fn pay_out<C: Chain + Clone>(
        &self,
        settlement: &ChainSettlement<C>,
        market: &Market,
        now_ms: u64,
        as_household: impl Fn(alloy::signers::local::PrivateKeySigner) -> Option<C>,
    ) -> Result<(), SettlerError> {
        let due = market.due_withdrawals().await?;
        if due.is_empty() {
            return Ok(());
        }
        let chain_now = settlement.chain().timestamp().await?;
        for (account, ready_at) in due {
            if ready_at > chain_now || !self.payout_may_try(account, now_ms) {
                continue;
            }
            let Some(key) = self.custody.signer(account) else {
                continue;
            };
            let from = key.address();
            let Some(chain) = as_household(key) else {
                continue;
            };
            let client = gridshare_contracts::SettlementClient::new(chain, settlement.address());
            match client.withdraw(from).await {
                Ok((paid, out)) => {
                    tracing::info!(target: "chain", account, %paid, tx = %out.tx_hash, "custodial withdrawal paid out");
                }
                Err(e) => {
                    tracing::warn!(target: "chain", account, error = %gridshare_contracts::household::describe(&e), "could not pay out a custodial withdrawal (gas for its address?); tried again in a minute");
                }
            }
        }
        Ok(())
    }

    /// Whether a payout for `account` may be tried now (at most once a minute each).
    fn payout_may_try(&self, account: i64, now_ms: u64) -> bool {
        let mut tried = self
            .payouts_tried
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match tried.get(&account) {
            Some(at) if now_ms < at + 60_000 => false,
            _ => {
                tried.insert(account, now_ms);
                true
            }
        }
    }

    /// Asks the contract, with the account's custodial key, to pay out `amount` after the
    /// withdrawal delay. The books change when the request is confirmed on chain (it then
    /// holds `amount` back from bids) and again when it is paid out.
    pub async fn request_withdrawal(
        &self,
        account: i64,
        amount: u64,
    ) -> Result<WithdrawalRequest, SettlerError> {
        let Some(key) = self.custody.signer(account) else {
            return Err(SettlerError::NoKey { account });
        };
        let from = key.address();
        let outcome = match &self.backend {
            Backend::Embedded(settlement) => {
                gridshare_contracts::SettlementClient::new(settlement.chain(), settlement.address())
                    .request_withdrawal(from, U256::from(amount))
                    .await
            }
            Backend::Rpc { settlement, url } => {
                let chain = RpcChain::connect(url, Some(key))?;
                gridshare_contracts::SettlementClient::new(chain, settlement.address())
                    .request_withdrawal(from, U256::from(amount))
                    .await
            }
        }?;
        let ready_at = outcome
            .logs
            .iter()
            .find_map(|log| {
                use alloy::sol_types::SolEvent;
                Settlement::WithdrawalRequested::decode_log_data(&log.data).ok()
            })
            .map_or(0, |e| e.readyAt);
        Ok(WithdrawalRequest {
            address: from,
            tx: outcome.tx_hash,
            ready_at,
        })
    }
}

/// What one money step did ([`ChainSettler::money_step`]).
#[derive(Debug, Default)]
pub struct MoneyProgress {
    /// Operator-recorded deposits now on chain.
    pub mirrored: u64,
    /// Attempts to put one there that failed.
    pub mirror_failures: u64,
    /// What the event follower read and applied (`None` if its first range failed).
    pub follow: Option<follow::FollowProgress>,
    /// Why it stopped short, if it did.
    pub follow_error: Option<SettlerError>,
}

/// A withdrawal requested on chain with a custodial key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WithdrawalRequest {
    /// The custodial address it will be paid to.
    pub address: Address,
    /// The request's transaction.
    pub tx: B256,
    /// When it may be paid out (unix seconds).
    pub ready_at: u64,
}
