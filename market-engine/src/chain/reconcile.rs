//! The engine's books against the chain, account by account: what `market-engine settlement
//! balances` prints, and what the tests check after every money step.

use alloy::primitives::{Address, U256};
use gridshare_contracts::chain::Chain;
use gridshare_contracts::settlement::{ChainSettlement, SettlementBackend};
use serde::Serialize;

use super::{Backend, ChainSettler, SettlerError, custody};

impl ChainSettler {
    /// Every account's books against the chain (see [`Reconciliation`]).
    pub async fn reconcile(&self) -> Result<Vec<Reconciliation>, SettlerError> {
        match &self.backend {
            Backend::Embedded(settlement) => self.reconcile_on(settlement).await,
            Backend::Rpc { settlement, .. } => self.reconcile_on(settlement).await,
        }
    }

    async fn reconcile_on<C: Chain>(
        &self,
        settlement: &ChainSettlement<C>,
    ) -> Result<Vec<Reconciliation>, SettlerError> {
        let client =
            gridshare_contracts::SettlementClient::new(settlement.chain(), settlement.address());
        // Money on its way: batches not yet applied on chain, deposits not yet mirrored.
        let mut in_flight: std::collections::BTreeMap<Address, i128> = Default::default();
        for record in self.store.open_settlement_batches().await? {
            if settlement.batch_root(record.batch.id).await?.is_none() {
                for d in &record.batch.deltas {
                    *in_flight.entry(d.account).or_default() += d.amount;
                }
            }
        }
        for r in self.store.unmirrored_funding().await? {
            *in_flight
                .entry(self.custody.address(r.account))
                .or_default() += i128::from(r.amount);
        }
        let names = self.store.account_names().await?;
        let mut out = Vec::new();
        for (account, engine) in self.store.booked_balances().await? {
            let address = self.custody.address(account);
            let a = client.account(address).await?;
            let chain = i128::try_from(a.balance).unwrap_or(i128::MAX)
                + i128::try_from(a.pending_withdrawal).unwrap_or(i128::MAX)
                - i128::try_from(a.debt).unwrap_or(i128::MAX);
            let flight = in_flight.get(&address).copied().unwrap_or(0);
            out.push(Reconciliation {
                account,
                name: match account {
                    custody::UTILITY => "(utility)".into(),
                    custody::GRID_OPERATOR => "(grid operator)".into(),
                    _ => names.get(&account).cloned().unwrap_or_default(),
                },
                address,
                engine: i128::from(engine),
                chain_balance: a.balance,
                chain_pending: a.pending_withdrawal,
                chain_debt: a.debt,
                in_flight: flight,
                difference: i128::from(engine) - chain - flight,
            });
        }
        Ok(out)
    }
}

/// One account's books against the chain: `engine` should equal `balanceOf + withdrawalOf −
/// debtOf` plus what is on its way there (`in_flight`: batches not yet applied on chain,
/// operator-recorded deposits not yet deposited); `difference` is what is left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reconciliation {
    /// Account id (−1 the utility, −2 the grid operator).
    pub account: i64,
    /// Its name.
    pub name: String,
    /// Its chain address.
    pub address: Address,
    /// Its balance in the engine's books.
    #[serde(with = "as_string")]
    pub engine: i128,
    /// `balanceOf` on chain.
    pub chain_balance: U256,
    /// `withdrawalOf` on chain (requested, not paid out).
    pub chain_pending: U256,
    /// `debtOf` on chain.
    pub chain_debt: U256,
    /// On its way to the chain.
    #[serde(with = "as_string")]
    pub in_flight: i128,
    /// engine − (balance + pending − debt) − in flight; zero when the books agree.
    #[serde(with = "as_string")]
    pub difference: i128,
}

mod as_string {
    pub(super) fn serialize<S: serde::Serializer>(v: &i128, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }
}
