//! Market tests: published reference numbers, behaviour of each mechanism, settlement, and
//! property tests over random books.

#![allow(clippy::unwrap_used)]

mod call;
mod continuous;
mod golden;
mod properties;
mod settlement;

use gridshare_core::market::{
    AccountId, AreaId, AreaTree, Community, FeeProfile, ImbalancePrices, Mechanism, SlotCalendar,
    SlotTerms, Tariff, TimeProfile, UnixSeconds,
};

/// The slot every fixture trades in.
const SLOT: u64 = 96;
/// The grid operator collecting fees in fixtures.
const OPERATOR: AccountId = AccountId(900);
/// The utility in fixtures.
const UTILITY: AccountId = AccountId(0);

fn community(areas: AreaTree, retail: u64, feed_in: u64) -> Community {
    Community {
        calendar: SlotCalendar::quarter_hourly(0),
        tariff: Tariff::flat(retail, feed_in),
        imbalance: ImbalancePrices::default(),
        areas,
        utility: UTILITY,
        mechanism: Mechanism::ContinuousDoubleAuction,
    }
}

/// One fee-free market with the band `[feed_in, retail]`.
fn flat_terms(retail: u64, feed_in: u64) -> SlotTerms {
    let areas = AreaTree::new(FeeProfile::Free, OPERATOR).unwrap();
    community(areas, retail, feed_in).terms(SLOT).unwrap()
}

/// A time inside the fixture slot's order window.
fn open_time(terms: &SlotTerms) -> UnixSeconds {
    terms.slot.gate_closure - 60
}

/// Grid Singularity's grid-fee scenario: grid (fee `grid`) above neighbourhoods N1 and N2
/// (fee `neighbourhood` each), house 1 under N1, house 2 under N2. Returns the terms and the
/// two houses.
fn gsy_terms(
    fee: fn(u64) -> FeeProfile,
    grid: u64,
    neighbourhood: u64,
    retail: u64,
) -> (SlotTerms, AreaId, AreaId) {
    let mut areas = AreaTree::new(fee(grid), OPERATOR).unwrap();
    let n1 = areas
        .add_area(areas.root(), fee(neighbourhood), AccountId(901))
        .unwrap();
    let n2 = areas
        .add_area(areas.root(), fee(neighbourhood), AccountId(902))
        .unwrap();
    let house1 = areas
        .add_area(n1, FeeProfile::Free, AccountId(903))
        .unwrap();
    let house2 = areas
        .add_area(n2, FeeProfile::Free, AccountId(904))
        .unwrap();
    let terms = community(areas, retail, 0).terms(SLOT).unwrap();
    (terms, house1, house2)
}

fn per_kwh(v: u64) -> FeeProfile {
    FeeProfile::PerKwh(TimeProfile::constant(v))
}

fn percent(bp: u64) -> FeeProfile {
    FeeProfile::Percent(TimeProfile::constant(bp))
}
