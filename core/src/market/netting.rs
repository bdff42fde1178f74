//! Slot settlement and netting: trades, grid fees and imbalances against the utility, reduced
//! to one signed token amount per account that sums to exactly zero — the input of one
//! on-chain settlement batch.
//!
//! Imbalance amounts follow the same rounding rule as trades: `floor(|deviation| × price /
//! 1000)`. On a shortfall the household pays the floored amount (it keeps the sub-unit
//! remainder); on a surplus it receives the floored amount (the utility keeps it).

use super::accounts::PerAccount;
use super::delivery::{DeliveryError, MeterDelivery, Position, positions};
use super::fees::{FeeError, FeeLegs, PathPricer, wide_amount_for};
use super::order::{AccountId, OrderId};
use super::terms::SlotTerms;
use super::trade::Trade;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One account's net token movement in a slot: positive receives, negative pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NetBalance {
    /// The account (household, fee recipient or utility).
    pub account: AccountId,
    /// Net tokens.
    pub amount: i128,
}

/// An account's deviation settled with the utility.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImbalanceCharge {
    /// The account.
    pub account: AccountId,
    /// `delivered − traded`, Wh (positive: shortfall).
    pub deviation_wh: i128,
    /// Tokens the account pays the utility (negative: receives).
    pub amount: i128,
}

/// Everything one slot settles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotSettlement {
    /// Slot index.
    pub slot: u64,
    /// Net balance of every account involved, sorted by account; sums to zero.
    pub balances: Vec<NetBalance>,
    /// Grid fees collected per recipient, sorted by recipient.
    pub fees_by_recipient: Vec<(AccountId, u64)>,
    /// Traded and delivered energy per account.
    pub positions: Vec<Position>,
    /// Deviations settled with the utility (accounts with zero deviation omitted).
    pub imbalances: Vec<ImbalanceCharge>,
    /// Σ what buyers paid.
    pub buyers_paid: u128,
    /// Σ what sellers received.
    pub sellers_received: u128,
    /// Σ grid fees.
    pub fees: u128,
}

impl SlotSettlement {
    /// The net balance of `account` (zero if not involved).
    #[must_use]
    pub fn balance(&self, account: AccountId) -> i128 {
        self.balances
            .binary_search_by_key(&account, |b| b.account)
            .map_or(0, |i| self.balances[i].amount)
    }
}

/// Why a slot could not be settled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettlementError {
    /// Meter data was inconsistent.
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    /// A trade could not be re-priced under this slot's fees.
    #[error("trade {bid}/{ask} cannot be priced under this slot's fees: {source}")]
    Fees {
        /// The trade's bid.
        bid: OrderId,
        /// The trade's ask.
        ask: OrderId,
        /// Why.
        source: FeeError,
    },
    /// A trade's amounts differ from what this slot's fees give (a trade from another slot,
    /// or altered in transit).
    #[error(
        "trade {bid}/{ask} carries amounts that this slot's fees do not produce; settle it with the terms of its own slot"
    )]
    AmountsMismatch {
        /// The trade's bid.
        bid: OrderId,
        /// The trade's ask.
        ask: OrderId,
    },
}

/// Settles one slot: trade payments and fees, then every account's deviation against the
/// utility at the slot's imbalance prices, netted per account.
pub fn settle_slot(
    trades: &[Trade],
    deliveries: &[MeterDelivery],
    terms: &SlotTerms,
) -> Result<SlotSettlement, SettlementError> {
    settle_slot_disputed(trades, deliveries, &[], terms)
}

/// [`settle_slot`] for a slot in which the delivery of some accounts cannot be established (a
/// meter's counters went backwards or are missing, and its deliveries are left out): those
/// `disputed` accounts are settled at their traded quantities — trade payments and fees as
/// usual — and nothing for their imbalance, so that one bad meter neither stops the slot for
/// everyone nor bills its owner for energy nobody measured.
pub fn settle_slot_disputed(
    trades: &[Trade],
    deliveries: &[MeterDelivery],
    disputed: &[AccountId],
    terms: &SlotTerms,
) -> Result<SlotSettlement, SettlementError> {
    // Buyer, seller and fee recipients per trade; each account's deviation and the utility.
    let mut net: PerAccount<i128> = PerAccount::new(3 * trades.len() + deliveries.len() + 1);
    let mut fees_by: BTreeMap<AccountId, u64> = BTreeMap::new();
    // Design: a community's fees mostly go to one or two operators, so legs are summed per
    // run of the same recipient before they reach the map (saturating sums of non-negative
    // amounts: the grouping does not change them).
    let mut pending: Option<(AccountId, u64)> = None;
    let (mut paid, mut received, mut fees) = (0u128, 0u128, 0u128);
    let mut pricer = PathPricer::new(&terms.fees);
    let mut legs = FeeLegs::EMPTY;
    for t in trades {
        let amounts = pricer
            .price(
                t.buyer_area,
                t.seller_area,
                t.energy_wh,
                t.anchor,
                Some(&mut legs),
            )
            .map_err(|source| SettlementError::Fees {
                bid: t.bid,
                ask: t.ask,
                source,
            })?;
        if amounts != t.amounts {
            return Err(SettlementError::AmountsMismatch {
                bid: t.bid,
                ask: t.ask,
            });
        }
        *net.entry(t.buyer) -= i128::from(amounts.buyer_pays);
        *net.entry(t.seller) += i128::from(amounts.seller_receives);
        for leg in legs.as_slice().iter().filter(|l| l.amount > 0) {
            *net.entry(leg.recipient) += i128::from(leg.amount);
            match &mut pending {
                Some((recipient, sum)) if *recipient == leg.recipient => {
                    *sum = sum.saturating_add(leg.amount);
                }
                _ => {
                    if let Some((recipient, sum)) = pending.replace((leg.recipient, leg.amount)) {
                        let f = fees_by.entry(recipient).or_default();
                        *f = f.saturating_add(sum);
                    }
                }
            }
        }
        paid += u128::from(amounts.buyer_pays);
        received += u128::from(amounts.seller_receives);
        fees += u128::from(amounts.fees);
    }
    if let Some((recipient, sum)) = pending {
        let f = fees_by.entry(recipient).or_default();
        *f = f.saturating_add(sum);
    }
    let positions = positions(trades, deliveries)?;
    let mut imbalances = Vec::with_capacity(positions.len());
    for p in &positions {
        let dev = p.deviation_wh();
        if dev == 0 || disputed.contains(&p.account) {
            continue;
        }
        let price = if dev > 0 {
            terms.imbalance.shortfall_per_kwh
        } else {
            terms.imbalance.surplus_per_kwh
        };
        // |dev| < 2^64 and price < 2^64, so the product fits in i128 with room to spare.
        let magnitude =
            i128::try_from(wide_amount_for(dev.unsigned_abs(), price)).unwrap_or(i128::MAX);
        let amount = if dev > 0 { magnitude } else { -magnitude };
        *net.entry(p.account) -= amount;
        *net.entry(terms.utility) += amount;
        imbalances.push(ImbalanceCharge {
            account: p.account,
            deviation_wh: dev,
            amount,
        });
    }
    let mut balances = Vec::with_capacity(net.len());
    balances.extend(
        net.into_sorted()
            .map(|(account, amount)| NetBalance { account, amount }),
    );
    Ok(SlotSettlement {
        slot: terms.slot.index,
        balances,
        fees_by_recipient: fees_by.into_iter().collect(),
        positions,
        imbalances,
        buyers_paid: paid,
        sellers_received: received,
        fees,
    })
}
