//! Key figures per slot and over a period: traded volume, prices, self-sufficiency and
//! self-consumption of each household and of the community, savings against buying
//! everything from the utility, and fees collected.
//!
//! Ratios are kept as integer numerator/denominator pairs; floats appear only for display.
//!
//! - Self-consumed energy of a household: `produced − exported` (never below zero).
//! - Community self-consumed energy: Σ household self-consumption plus the exports that other
//!   households of the community imported in the same slot, `min(Σ exported, Σ imported)`.
//! - Self-sufficiency = self-consumed / consumed; self-consumption = self-consumed / produced.
//! - Savings = what the household's net import would cost with the utility alone (retail for
//!   a net import, feed-in for a net export, floored like every amount) minus what it pays
//!   in the settled slot (trades, fees and imbalances).

use super::fees::wide_amount_for;
use super::netting::SlotSettlement;
use super::order::AccountId;
use super::terms::SlotTerms;
use super::trade::Trade;
use serde::{Deserialize, Serialize};

/// An exact ratio of two non-negative integers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ratio {
    /// Numerator.
    pub numerator: u128,
    /// Denominator (zero: undefined).
    pub denominator: u128,
}

impl Ratio {
    /// `numerator / denominator`.
    #[must_use]
    pub fn new(numerator: u128, denominator: u128) -> Self {
        Self {
            numerator,
            denominator,
        }
    }

    /// The ratio in basis points, rounded down; `None` when the denominator is zero.
    #[must_use]
    pub fn basis_points(&self) -> Option<u128> {
        (self.denominator != 0).then(|| self.numerator.saturating_mul(10_000) / self.denominator)
    }

    /// The ratio as a float, for display only.
    #[must_use]
    #[allow(
        clippy::cast_precision_loss,
        reason = "display only; settled values stay integer"
    )]
    pub fn as_f64(&self) -> Option<f64> {
        (self.denominator != 0).then(|| self.numerator as f64 / self.denominator as f64)
    }
}

/// What one household's meters and inverter measured in a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HouseholdEnergy {
    /// The household's account.
    pub account: AccountId,
    /// Energy produced on site (PV), Wh.
    pub produced_wh: u64,
    /// Energy drawn from the grid, Wh.
    pub imported_wh: u64,
    /// Energy fed into the grid, Wh.
    pub exported_wh: u64,
}

/// Why key figures could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KpiError {
    /// A household exported more than it produced and imported.
    #[error(
        "household {account:?} exported {exported_wh} Wh but only produced {produced_wh} Wh and imported {imported_wh} Wh; check its meters"
    )]
    ExportExceedsSupply {
        /// The household.
        account: AccountId,
        /// Produced.
        produced_wh: u64,
        /// Imported.
        imported_wh: u64,
        /// Exported.
        exported_wh: u64,
    },
}

/// One household's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HouseholdKpis {
    /// The household.
    pub account: AccountId,
    /// Consumed on site, Wh (`produced + imported − exported`).
    pub consumed_wh: u128,
    /// Produced on site, Wh.
    pub produced_wh: u128,
    /// Produced and used on site, Wh.
    pub self_consumed_wh: u128,
    /// What the slot would cost with the utility alone, tokens (negative: income).
    pub utility_only_cost: i128,
    /// What the settled slot cost, tokens (negative: income).
    pub actual_cost: i128,
}

impl HouseholdKpis {
    /// Adds another slot's figures of the same household.
    fn add(&mut self, other: &Self) {
        self.consumed_wh += other.consumed_wh;
        self.produced_wh += other.produced_wh;
        self.self_consumed_wh += other.self_consumed_wh;
        self.utility_only_cost += other.utility_only_cost;
        self.actual_cost += other.actual_cost;
    }

    /// Undoes [`Self::add`] of the same figures.
    fn take_back(&mut self, other: &Self) {
        self.consumed_wh -= other.consumed_wh;
        self.produced_wh -= other.produced_wh;
        self.self_consumed_wh -= other.self_consumed_wh;
        self.utility_only_cost -= other.utility_only_cost;
        self.actual_cost -= other.actual_cost;
    }

    /// Self-consumed / consumed.
    #[must_use]
    pub fn self_sufficiency(&self) -> Ratio {
        Ratio::new(self.self_consumed_wh, self.consumed_wh)
    }

    /// Self-consumed / produced.
    #[must_use]
    pub fn self_consumption(&self) -> Ratio {
        Ratio::new(self.self_consumed_wh, self.produced_wh)
    }

    /// Savings against the utility alone, tokens.
    #[must_use]
    pub fn savings(&self) -> i128 {
        self.utility_only_cost - self.actual_cost
    }
}

/// Community totals; the same fields summed over households, with local exchange counted as
/// self-consumption.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CommunityKpis {
    /// Consumed, Wh.
    pub consumed_wh: u128,
    /// Produced, Wh.
    pub produced_wh: u128,
    /// Produced in the community and used in it, Wh.
    pub self_consumed_wh: u128,
    /// Cost with the utility alone, tokens.
    pub utility_only_cost: i128,
    /// Settled cost, tokens.
    pub actual_cost: i128,
}

impl From<&HouseholdKpis> for CommunityKpis {
    fn from(k: &HouseholdKpis) -> Self {
        Self {
            consumed_wh: k.consumed_wh,
            produced_wh: k.produced_wh,
            self_consumed_wh: k.self_consumed_wh,
            utility_only_cost: k.utility_only_cost,
            actual_cost: k.actual_cost,
        }
    }
}

impl CommunityKpis {
    /// Adds another's figures (households of a slot, or slots of a period).
    fn add(&mut self, o: &Self) {
        self.consumed_wh += o.consumed_wh;
        self.produced_wh += o.produced_wh;
        self.self_consumed_wh += o.self_consumed_wh;
        self.utility_only_cost += o.utility_only_cost;
        self.actual_cost += o.actual_cost;
    }

    /// Self-consumed / consumed.
    #[must_use]
    pub fn self_sufficiency(&self) -> Ratio {
        Ratio::new(self.self_consumed_wh, self.consumed_wh)
    }

    /// Self-consumed / produced.
    #[must_use]
    pub fn self_consumption(&self) -> Ratio {
        Ratio::new(self.self_consumed_wh, self.produced_wh)
    }

    /// Savings against the utility alone, tokens.
    #[must_use]
    pub fn savings(&self) -> i128 {
        self.utility_only_cost - self.actual_cost
    }
}

/// One slot's figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotKpis {
    /// The slot's trade and community figures.
    #[serde(flatten)]
    pub totals: SlotTotals,
    /// Per household, in input order.
    pub households: Vec<HouseholdKpis>,
}

fn bill(net_import_wh: i128, retail: u64, feed_in: u64) -> i128 {
    let price = if net_import_wh >= 0 { retail } else { feed_in };
    // |net| < 2^65 and price < 2^64: the product fits in u128 after the division bound.
    let magnitude = wide_amount_for(net_import_wh.unsigned_abs(), price);
    let magnitude = i128::try_from(magnitude).unwrap_or(i128::MAX);
    if net_import_wh >= 0 {
        magnitude
    } else {
        -magnitude
    }
}

/// Looks up the balances of households given in ascending account order by walking the
/// (sorted) balances once; any other order falls back to a binary search per lookup.
struct BalanceCursor<'a> {
    settlement: &'a SlotSettlement,
    next: usize,
}

impl<'a> BalanceCursor<'a> {
    fn new(settlement: &'a SlotSettlement) -> Self {
        Self {
            settlement,
            next: 0,
        }
    }

    fn balance(&mut self, account: AccountId) -> i128 {
        let balances = &self.settlement.balances;
        if self.next > 0 && balances[self.next - 1].account >= account {
            return self.settlement.balance(account);
        }
        while self.next < balances.len() && balances[self.next].account < account {
            self.next += 1;
        }
        match balances.get(self.next) {
            Some(b) if b.account == account => {
                self.next += 1;
                b.amount
            }
            _ => 0,
        }
    }
}

impl HouseholdKpis {
    /// One household's figures for a slot: its energy, the slot's tariff and its settled
    /// balance (`actual_cost` is what it paid, the negated balance).
    fn of(h: &HouseholdEnergy, terms: &SlotTerms, balance: i128) -> Result<Self, KpiError> {
        let consumed = consumed_wh(h)?;
        let net = i128::from(h.imported_wh) - i128::from(h.exported_wh);
        Ok(Self {
            account: h.account,
            consumed_wh: consumed,
            produced_wh: u128::from(h.produced_wh),
            self_consumed_wh: u128::from(h.produced_wh.saturating_sub(h.exported_wh)),
            utility_only_cost: bill(net, terms.band.retail_per_kwh, terms.band.feed_in_per_kwh),
            actual_cost: -balance,
        })
    }

    /// No energy, no cost.
    fn zero(account: AccountId) -> Self {
        Self {
            account,
            consumed_wh: 0,
            produced_wh: 0,
            self_consumed_wh: 0,
            utility_only_cost: 0,
            actual_cost: 0,
        }
    }
}

/// Consumed on site, `produced + imported − exported`; an error if the household exported
/// more than that.
fn consumed_wh(h: &HouseholdEnergy) -> Result<u128, KpiError> {
    let supply = u128::from(h.produced_wh) + u128::from(h.imported_wh);
    supply
        .checked_sub(u128::from(h.exported_wh))
        .ok_or(KpiError::ExportExceedsSupply {
            account: h.account,
            produced_wh: h.produced_wh,
            imported_wh: h.imported_wh,
            exported_wh: h.exported_wh,
        })
}

/// Slot items listed by household account.
trait HasAccount {
    fn account(&self) -> AccountId;
}

impl HasAccount for HouseholdKpis {
    fn account(&self) -> AccountId {
        self.account
    }
}

impl HasAccount for HouseholdEnergy {
    fn account(&self) -> AccountId {
        self.account
    }
}

/// A slot's community figures, summed household by household.
#[derive(Default)]
struct CommunitySums {
    community: CommunityKpis,
    imported: u128,
    exported: u128,
}

impl CommunitySums {
    fn add(&mut self, h: &HouseholdEnergy, k: &HouseholdKpis) {
        self.community.add(&CommunityKpis::from(k));
        self.imported += u128::from(h.imported_wh);
        self.exported += u128::from(h.exported_wh);
    }

    /// The community totals: exports that other households imported in the same slot count
    /// as self-consumed.
    fn finish(self) -> CommunityKpis {
        let mut c = self.community;
        c.self_consumed_wh += self.imported.min(self.exported);
        c
    }
}

/// One slot's figures but the per-household ones: part of [`SlotKpis`], and what
/// [`PeriodKpis::add_slot`] returns once it has added every household's figures to the period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotTotals {
    /// Slot index.
    pub slot: u64,
    /// Energy traded locally, Wh.
    pub traded_wh: u128,
    /// The call auction's uniform price, if any.
    pub clearing_price: Option<u64>,
    /// Σ what buyers paid for local trades, tokens.
    pub buyers_paid: u128,
    /// Volume-weighted price buyers paid per kWh: Σ buyer amounts × 1000 / Σ Wh.
    pub average_buyer_price: Ratio,
    /// Grid fees collected, tokens.
    pub fees_collected: u128,
    /// Community totals.
    pub community: CommunityKpis,
}

impl SlotTotals {
    /// The trade figures of a slot, with the community totals still to be filled in.
    fn of_trades(terms: &SlotTerms, trades: &[Trade], clearing_price: Option<u64>) -> Self {
        let (mut traded_wh, mut paid, mut fees) = (0u128, 0u128, 0u128);
        for t in trades {
            traded_wh += u128::from(t.energy_wh);
            paid += u128::from(t.amounts.buyer_pays);
            fees += u128::from(t.amounts.fees);
        }
        Self {
            slot: terms.slot.index,
            traded_wh,
            clearing_price,
            buyers_paid: paid,
            average_buyer_price: Ratio::new(paid.saturating_mul(1000), traded_wh),
            fees_collected: fees,
            community: CommunityKpis::default(),
        }
    }
}

/// Computes one slot's figures from its trades, the households' energy and the settlement.
pub fn slot_kpis(
    terms: &SlotTerms,
    trades: &[Trade],
    clearing_price: Option<u64>,
    households: &[HouseholdEnergy],
    settlement: &SlotSettlement,
) -> Result<SlotKpis, KpiError> {
    let mut sums = CommunitySums::default();
    let mut out = Vec::with_capacity(households.len());
    let mut balances = BalanceCursor::new(settlement);
    for h in households {
        let k = HouseholdKpis::of(h, terms, balances.balance(h.account))?;
        sums.add(h, &k);
        out.push(k);
    }
    let mut totals = SlotTotals::of_trades(terms, trades, clearing_price);
    totals.community = sums.finish();
    Ok(SlotKpis {
        totals,
        households: out,
    })
}

/// Figures accumulated over many slots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodKpis {
    /// Slots added.
    pub slots: u64,
    /// Energy traded locally, Wh.
    pub traded_wh: u128,
    /// Σ buyer amounts of local trades, tokens.
    pub buyers_paid: u128,
    /// Grid fees collected, tokens.
    pub fees_collected: u128,
    /// Lowest and highest clearing price seen.
    pub clearing_price_range: Option<(u64, u64)>,
    /// Community totals.
    pub community: CommunityKpis,
    /// Household totals, in ascending account order (see [`Self::household`]).
    ///
    /// Design: a vector rather than a map: every slot adds to every household, walking this
    /// alongside the slot's households, which the simulator lists in account order.
    pub households: Vec<HouseholdKpis>,
}

impl PeriodKpis {
    /// Adds one slot.
    pub fn add(&mut self, slot: &SlotKpis) {
        self.add_totals(&slot.totals);
        // Design: a period adds the same households in the same order every slot, so the
        // common case walks the totals alongside the slot, once, instead of looking up each
        // household; a slot that turns out to list others has what was added taken back
        // (exact: integer sums) and is added by account.
        let added = self.add_in_order(&slot.households, |k| *k);
        if added < slot.households.len() {
            for (acc, h) in self.households.iter_mut().zip(&slot.households).take(added) {
                acc.take_back(h);
            }
            for h in &slot.households {
                self.entry(h.account).add(h);
            }
        }
    }

    /// Computes one slot's figures, as [`slot_kpis`] does, and adds them: each household's
    /// straight into its total, without a per-household table for the slot. Returns the
    /// slot's community figures. A slot refused (a household exported more than it produced
    /// and imported) adds nothing.
    pub fn add_slot(
        &mut self,
        terms: &SlotTerms,
        trades: &[Trade],
        clearing_price: Option<u64>,
        households: &[HouseholdEnergy],
        settlement: &SlotSettlement,
    ) -> Result<SlotTotals, KpiError> {
        // Checked first, so that nothing is added for a refused slot.
        for h in households {
            consumed_wh(h)?;
        }
        let kpis = |h: &HouseholdEnergy, balance: i128| {
            // Every household passed the check above, so this is never the zero fallback.
            HouseholdKpis::of(h, terms, balance).unwrap_or(HouseholdKpis::zero(h.account))
        };
        let mut sums = CommunitySums::default();
        let mut balances = BalanceCursor::new(settlement);
        let added = self.add_in_order(households, |h| {
            let k = kpis(h, balances.balance(h.account));
            sums.add(h, &k);
            k
        });
        if added < households.len() {
            for (acc, h) in self.households.iter_mut().zip(households).take(added) {
                acc.take_back(&kpis(h, settlement.balance(h.account)));
            }
            sums = CommunitySums::default();
            for h in households {
                let k = kpis(h, settlement.balance(h.account));
                sums.add(h, &k);
                self.entry(h.account).add(&k);
            }
        }
        let mut totals = SlotTotals::of_trades(terms, trades, clearing_price);
        totals.community = sums.finish();
        self.add_totals(&totals);
        Ok(totals)
    }

    fn add_totals(&mut self, slot: &SlotTotals) {
        self.slots += 1;
        self.traded_wh += slot.traded_wh;
        self.buyers_paid += slot.buyers_paid;
        self.fees_collected += slot.fees_collected;
        if let Some(p) = slot.clearing_price {
            self.clearing_price_range = Some(match self.clearing_price_range {
                None => (p, p),
                Some((lo, hi)) => (lo.min(p), hi.max(p)),
            });
        }
        self.community.add(&slot.community);
    }

    /// Walks the households' totals alongside `slot` (items with an `account`), adding
    /// `kpis(item)` to each while the accounts agree; returns how many were added (all of
    /// them, or fewer when the period holds other households than the slot lists).
    fn add_in_order<T: HasAccount>(
        &mut self,
        slot: &[T],
        mut kpis: impl FnMut(&T) -> HouseholdKpis,
    ) -> usize {
        let mut added = 0;
        if self.households.len() == slot.len() {
            for (acc, h) in self.households.iter_mut().zip(slot) {
                if acc.account != h.account() {
                    break;
                }
                acc.add(&kpis(h));
                added += 1;
            }
        }
        added
    }

    fn entry(&mut self, account: AccountId) -> &mut HouseholdKpis {
        let at = match self
            .households
            .binary_search_by_key(&account, |k| k.account)
        {
            Ok(at) => at,
            Err(at) => {
                self.households.insert(at, HouseholdKpis::zero(account));
                at
            }
        };
        &mut self.households[at]
    }

    /// The totals of `account`'s household, if any slot listed it.
    #[must_use]
    pub fn household(&self, account: AccountId) -> Option<&HouseholdKpis> {
        self.households
            .binary_search_by_key(&account, |k| k.account)
            .ok()
            .map(|at| &self.households[at])
    }

    /// Volume-weighted average price buyers paid per kWh over the period.
    #[must_use]
    pub fn average_buyer_price(&self) -> Ratio {
        Ratio::new(self.buyers_paid.saturating_mul(1000), self.traded_wh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_exact_and_undefined_over_zero() {
        assert_eq!(Ratio::new(1, 3).basis_points(), Some(3_333));
        assert_eq!(Ratio::new(1, 0).basis_points(), None);
        assert_eq!(Ratio::new(1, 4).as_f64(), Some(0.25));
    }

    fn household(account: u32, consumed_wh: u128, actual_cost: i128) -> HouseholdKpis {
        HouseholdKpis {
            account: AccountId(account),
            consumed_wh,
            produced_wh: 0,
            self_consumed_wh: 0,
            utility_only_cost: 0,
            actual_cost,
        }
    }

    fn slot_of(households: Vec<HouseholdKpis>) -> SlotKpis {
        SlotKpis {
            totals: SlotTotals {
                slot: 0,
                traded_wh: 0,
                clearing_price: None,
                buyers_paid: 0,
                average_buyer_price: Ratio::default(),
                fees_collected: 0,
                community: CommunityKpis::default(),
            },
            households,
        }
    }

    #[test]
    fn a_slot_listing_other_households_of_the_same_count_adds_by_account() {
        let mut period = PeriodKpis::default();
        period.add(&slot_of(vec![household(2, 10, 5), household(3, 20, -1)]));
        period.add(&slot_of(vec![household(2, 1, 1), household(3, 2, 2)]));
        // Same count, the first account the same, the second another: what the single walk
        // added for account 2 before it met account 4 is taken back and added by account.
        period.add(&slot_of(vec![household(2, 100, 100), household(4, 7, 7)]));
        let got = period.households.clone();
        assert_eq!(
            got,
            [
                household(2, 111, 106),
                household(3, 22, 1),
                household(4, 7, 7)
            ]
        );
        assert_eq!(period.slots, 3);
    }

    #[test]
    fn utility_bill_floors_like_every_amount() {
        assert_eq!(bill(1_500, 33, 5), 49);
        assert_eq!(bill(-1_500, 33, 5), -7);
        assert_eq!(bill(0, 33, 5), 0);
    }
}
