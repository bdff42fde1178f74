//! What each account may spend: its balance, and what its open bids and unsettled purchases
//! hold of it.

use std::collections::{BTreeMap, HashMap};

use gridshare_core::market::{Trade, amount_for};

use super::ExchangeError;

/// The largest balance an account may hold, token units (10^15). Deposits beyond it are
/// refused, so balances, holds and their sums always fit in 64 bits — in memory and in the
/// database's SUM when the engine starts.
pub const MAX_BALANCE: i64 = 1_000_000_000_000_000;

/// A bid's most possible cost: its open energy at its limit price (which includes the fees,
/// and of which each trade pays at most its floor).
pub(crate) fn bid_cost(price_per_kwh: u64, energy_wh: u64) -> Result<u64, ExchangeError> {
    amount_for(energy_wh, price_per_kwh).map_err(|_| {
        ExchangeError::OutOfRange(format!(
            "{energy_wh} Wh at {price_per_kwh} per kWh does not fit in a token amount"
        ))
    })
}

/// What each account may spend. Design: kept beside the books and changed under the same
/// lock, so a bid is checked against exactly the funds the orders before it left; rebuilt from
/// the database (funding, ledger, trades) and the order log after a restart.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Funds {
    /// Deposits less withdrawals plus settled ledger amounts, per account.
    balance: HashMap<i64, i64>,
    /// Held per account: by open bids plus by purchases in slots not yet settled.
    held: HashMap<i64, u64>,
    /// What each buyer's trades cost, per slot not yet settled.
    bought: BTreeMap<u64, HashMap<i64, u64>>,
    /// Withdrawals requested on chain and not yet paid out, per account: part of the balance
    /// (the contract may still take due debits from them) that may not be spent.
    withdrawing: HashMap<i64, u64>,
}

impl Funds {
    /// Balance less the holds of bids and purchases and a pending withdrawal.
    pub(crate) fn available(&self, account: i64) -> i64 {
        let balance = i128::from(self.balance(account));
        let held = i128::from(self.held.get(&account).copied().unwrap_or(0));
        let withdrawing = i128::from(self.withdrawing(account));
        i64::try_from(balance - held - withdrawing).unwrap_or(i64::MIN)
    }

    /// What a withdrawal requested on chain and not yet paid out holds.
    pub(crate) fn withdrawing(&self, account: i64) -> u64 {
        self.withdrawing.get(&account).copied().unwrap_or(0)
    }

    /// Sets what the account's pending on-chain withdrawal holds (0: none).
    pub(crate) fn set_withdrawing(&mut self, account: i64, amount: u64) {
        if amount == 0 {
            self.withdrawing.remove(&account);
        } else {
            self.withdrawing.insert(account, amount);
        }
    }

    /// Deposits less withdrawals plus the settled ledger.
    pub(crate) fn balance(&self, account: i64) -> i64 {
        self.balance.get(&account).copied().unwrap_or(0)
    }

    /// What the account's purchases in unsettled slots hold.
    pub(crate) fn held_by_purchases(&self, account: i64) -> u64 {
        self.bought
            .values()
            .filter_map(|m| m.get(&account))
            .fold(0u64, |a, b| a.saturating_add(*b))
    }

    /// What open bids and purchases hold together.
    pub(crate) fn held(&self, account: i64) -> u64 {
        self.held.get(&account).copied().unwrap_or(0)
    }

    /// Refuses `need` if the account cannot cover it on top of what it already holds.
    pub(crate) fn check(&self, account: i64, need: u64) -> Result<(), ExchangeError> {
        let available = self.available(account);
        if need > 0 && i128::from(need) > i128::from(available) {
            return Err(ExchangeError::InsufficientFunds { need, available });
        }
        Ok(())
    }

    pub(crate) fn hold(&mut self, account: i64, old: u64, new: u64) {
        let held = self.held.entry(account).or_default();
        *held = held.saturating_sub(old).saturating_add(new);
    }

    /// Holds what a slot's trades cost their buyers until the slot is settled.
    pub(crate) fn bought(&mut self, slot: u64, trades: &[Trade]) {
        for t in trades {
            let buyer = i64::from(t.buyer.0);
            *self
                .bought
                .entry(slot)
                .or_default()
                .entry(buyer)
                .or_default() += t.amounts.buyer_pays;
            self.hold(buyer, 0, t.amounts.buyer_pays);
        }
    }

    /// Forgets a slot's purchases (settled, or about to be reloaded).
    pub(crate) fn release_bought(&mut self, slot: u64) {
        for (account, cost) in self.bought.remove(&slot).unwrap_or_default() {
            self.hold(account, cost, 0);
        }
    }

    /// The balance after adding `amount` (negative: taking it away), if it stays within
    /// ±[`MAX_BALANCE`]; changes nothing.
    pub(crate) fn credited(&self, account: i64, amount: i64) -> Result<i64, ExchangeError> {
        let balance = self.balance(account);
        balance
            .checked_add(amount)
            .filter(|b| b.unsigned_abs() <= MAX_BALANCE.unsigned_abs())
            .ok_or_else(|| {
                ExchangeError::OutOfRange(format!(
                    "a balance of {balance} plus {amount} leaves the range of ±{MAX_BALANCE} token units"
                ))
            })
    }

    /// Adds `amount`; refused, changing nothing, as [`Funds::credited`] refuses it.
    pub(crate) fn credit(&mut self, account: i64, amount: i64) -> Result<(), ExchangeError> {
        let new = self.credited(account, amount)?;
        self.balance.insert(account, new);
        Ok(())
    }

    /// The balance after booking what the ledger says (a settled slot, or the sums read at
    /// start-up): only the 64-bit range is checked, since the ledger is the record and memory
    /// must follow it. Changes nothing.
    pub(crate) fn booked(&self, account: i64, amount: i64) -> Result<i64, ExchangeError> {
        self.balance(account).checked_add(amount).ok_or_else(|| {
            ExchangeError::OutOfRange(format!("account {account}'s balance overflows"))
        })
    }

    /// Books `amount`; refused, changing nothing, as [`Funds::booked`] refuses it.
    pub(crate) fn book(&mut self, account: i64, amount: i64) -> Result<(), ExchangeError> {
        let new = self.booked(account, amount)?;
        self.balance.insert(account, new);
        Ok(())
    }
}
