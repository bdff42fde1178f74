//! Collective self-consumption: sharing a community's local generation among its members by
//! allocation keys, instead of trading it.
//!
//! EU energy sharing (France's *autoconsommation collective* since 2017, energy sharing under the
//! Renewable Energy Directive) splits, slot by slot and after the fact, the energy the
//! community's producers fed in among the members who drew energy, by an **allocation key**:
//!
//! - [`AllocationKey::ProportionalToConsumption`] — the French default key: the shared energy
//!   `S = min(Σ injected, Σ withdrawn)` is split in proportion to each member's withdrawal, so
//!   nobody is allocated more than it drew;
//! - [`AllocationKey::Fixed`] — static shares in basis points: a member is allocated its share
//!   of the injected energy, at most what it drew; what a capped member leaves is not
//!   redistributed (a static key) and stays with the utility at the feed-in tariff.
//!
//! Each producer supplies the allocated energy in proportion to its injection. The allocation
//! becomes ordinary [`Trade`]s at the price the community set (the seller's rate: the producer
//! receives the price, the consumer pays it plus the grid fees of the path), so
//! [`settle_slot`](super::settle_slot) settles them and everything else against the utility
//! exactly as it settles auction trades, and every conservation law of the auctions holds.
//!
//! **Rounding rule.** Allocations are whole Wh. Each member's exact share is floored and the
//! Wh left over go, one each, to the largest fractional remainders (ties to the lower account
//! id) — the largest-remainder method — so the allocations sum exactly to the shared energy;
//! likewise for the producers' supplies. Consumers and producers are then paired in account
//! order (each consumer's allocation drawn from the producers in turn), which splits the
//! energy into at most `consumers + producers − 1` trades.

use super::delivery::{DeliveryError, MeterDelivery};
use super::fees::{FeeError, PriceAnchor};
use super::order::{AccountId, AreaId, OrderId};
use super::terms::SlotTerms;
use super::trade::{MatchPass, Trade};
use serde::{Deserialize, Serialize};

/// How local generation is split among members.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AllocationKey {
    /// In proportion to each member's withdrawal in the slot (the French default).
    ProportionalToConsumption,
    /// Static shares: `(member, basis points of the injected energy)`; at most 10 000 in total.
    Fixed(Vec<(AccountId, u32)>),
}

/// One member's metered energy in a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberFlow {
    /// The member's account.
    pub account: AccountId,
    /// Its area (for grid fees on the shared energy).
    pub area: AreaId,
    /// Energy it fed into the grid, Wh.
    pub injected_wh: u64,
    /// Energy it drew from the grid, Wh.
    pub withdrawn_wh: u64,
}

/// What one member got from the sharing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Allocation {
    /// The member.
    pub account: AccountId,
    /// Local energy allocated to it, Wh (at most what it withdrew).
    pub allocated_wh: u64,
    /// Of its injection, the energy allocated to others, Wh (at most what it injected).
    pub supplied_wh: u64,
}

/// A slot's sharing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedSlot {
    /// One entry per member, in input order.
    pub allocations: Vec<Allocation>,
    /// The allocation as trades at the community's price, for [`settle_slot`](super::settle_slot).
    pub trades: Vec<Trade>,
    /// Energy shared, Wh (Σ allocated = Σ supplied).
    pub shared_wh: u64,
    /// Injected energy not shared, Wh: it goes to the utility at the feed-in tariff.
    pub unshared_wh: u64,
}

/// Why a slot could not be shared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SharingError {
    /// A member both fed in and drew energy in one slot; sharing works on net flows per slot.
    #[error(
        "member {account:?} both injected {injected_wh} Wh and withdrew {withdrawn_wh} Wh in one slot; give its net flow"
    )]
    BothDirections {
        /// The member.
        account: AccountId,
        /// Injected.
        injected_wh: u64,
        /// Withdrawn.
        withdrawn_wh: u64,
    },
    /// A member appears twice.
    #[error("member {0:?} appears twice; give one flow per member")]
    DuplicateMember(AccountId),
    /// Fixed shares add up to more than 100 %.
    #[error("fixed allocation shares add up to {0} basis points, more than 10000 (100 %)")]
    SharesAbove100(u64),
    /// The sharing price is outside the slot's tariff band.
    #[error(
        "sharing price {price_per_kwh} per kWh is outside the slot's band [{feed_in_per_kwh}, {retail_per_kwh}]; set a price between the feed-in and the retail tariff"
    )]
    PriceOutsideBand {
        /// The price.
        price_per_kwh: u64,
        /// Feed-in tariff.
        feed_in_per_kwh: u64,
        /// Retail tariff.
        retail_per_kwh: u64,
    },
    /// A shared energy could not be priced under the slot's fees.
    #[error(transparent)]
    Fees(#[from] FeeError),
}

/// Each account's net flow in a slot from its meters' deliveries, the input of [`share_slot`]:
/// an account with several meters is one member with its net import or export over all of
/// them (sharing works on net flows per slot). Members come out in account order, all in
/// `area`.
pub fn member_flows(
    deliveries: &[MeterDelivery],
    area: AreaId,
) -> Result<Vec<MemberFlow>, DeliveryError> {
    let mut net: std::collections::BTreeMap<AccountId, i64> = std::collections::BTreeMap::new();
    for d in deliveries {
        let n = d.net_import_wh()?;
        let sum = net.entry(d.account).or_default();
        // Each meter's flow is bounded by MAX_SLOT_FLOW_WH: no realistic sum comes near i64.
        *sum = sum.saturating_add(n);
    }
    Ok(net
        .into_iter()
        .map(|(account, n)| MemberFlow {
            account,
            area,
            injected_wh: if n < 0 { n.unsigned_abs() } else { 0 },
            withdrawn_wh: u64::try_from(n).unwrap_or(0),
        })
        .collect())
}

/// Splits `total` Wh in proportion to `weights` with the largest-remainder method: the parts
/// sum to `total` exactly when the weights are not all zero (then every part is zero).
fn largest_remainder(total: u64, weights: &[u64]) -> Vec<u64> {
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if sum == 0 {
        return vec![0; weights.len()];
    }
    let mut parts = Vec::with_capacity(weights.len());
    let mut rems = Vec::with_capacity(weights.len());
    let mut given = 0u64;
    for (i, &w) in weights.iter().enumerate() {
        let exact = u128::from(total) * u128::from(w);
        // exact / sum ≤ total, so it fits.
        let part = u64::try_from(exact / sum).unwrap_or(u64::MAX);
        given += part;
        parts.push(part);
        rems.push((exact % sum, i));
    }
    // Largest remainder first; ties to the earlier entry (callers order by account).
    rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in rems
        .iter()
        .take(usize::try_from(total - given).unwrap_or(0))
    {
        parts[i] += 1;
    }
    parts
}

/// Shares one slot's local generation among `members` by `key`, at `price_per_kwh` (what a
/// producer receives per kWh shared; the consumer pays it plus the grid fees of the path).
pub fn share_slot(
    key: &AllocationKey,
    price_per_kwh: u64,
    members: &[MemberFlow],
    terms: &SlotTerms,
) -> Result<SharedSlot, SharingError> {
    let band = terms.band;
    if price_per_kwh < band.feed_in_per_kwh || price_per_kwh > band.retail_per_kwh {
        return Err(SharingError::PriceOutsideBand {
            price_per_kwh,
            feed_in_per_kwh: band.feed_in_per_kwh,
            retail_per_kwh: band.retail_per_kwh,
        });
    }
    let mut order: Vec<usize> = (0..members.len()).collect();
    order.sort_by_key(|&i| members[i].account);
    for w in order.windows(2) {
        if members[w[0]].account == members[w[1]].account {
            return Err(SharingError::DuplicateMember(members[w[0]].account));
        }
    }
    for m in members {
        if m.injected_wh > 0 && m.withdrawn_wh > 0 {
            return Err(SharingError::BothDirections {
                account: m.account,
                injected_wh: m.injected_wh,
                withdrawn_wh: m.withdrawn_wh,
            });
        }
    }
    let injected: u64 = members.iter().map(|m| m.injected_wh).sum();
    let withdrawn: Vec<u64> = order.iter().map(|&i| members[i].withdrawn_wh).collect();
    // Allocations in account order.
    let allocated: Vec<u64> = match key {
        AllocationKey::ProportionalToConsumption => {
            let shared = injected.min(withdrawn.iter().sum());
            largest_remainder(shared, &withdrawn)
        }
        AllocationKey::Fixed(shares) => {
            let total: u64 = shares.iter().map(|&(_, bp)| u64::from(bp)).sum();
            if total > 10_000 {
                return Err(SharingError::SharesAbove100(total));
            }
            order
                .iter()
                .map(|&i| {
                    let m = &members[i];
                    let bp: u64 = shares
                        .iter()
                        .filter(|(a, _)| *a == m.account)
                        .map(|&(_, bp)| u64::from(bp))
                        .sum();
                    let share = u64::try_from(u128::from(injected) * u128::from(bp) / 10_000)
                        .unwrap_or(u64::MAX);
                    share.min(m.withdrawn_wh)
                })
                .collect()
        }
    };
    let shared: u64 = allocated.iter().sum();
    let injections: Vec<u64> = order.iter().map(|&i| members[i].injected_wh).collect();
    let supplied = largest_remainder(shared, &injections);

    // Pair consumers with producers in account order.
    let mut trades = Vec::new();
    let mut p = 0usize;
    let mut left_p = supplied.first().copied().unwrap_or(0);
    for (ci, &need) in allocated.iter().enumerate() {
        let mut need = need;
        while need > 0 {
            while left_p == 0 {
                p += 1;
                left_p = supplied[p];
            }
            let e = need.min(left_p);
            let (buyer, seller) = (&members[order[ci]], &members[order[p]]);
            let amounts = terms.fees.price(
                buyer.area,
                seller.area,
                e,
                PriceAnchor::Seller(price_per_kwh),
            )?;
            trades.push(Trade {
                // Sharing has no orders: the ids name the two members' accounts.
                bid: OrderId(u64::from(buyer.account.0)),
                ask: OrderId(u64::from(seller.account.0)),
                buyer: buyer.account,
                seller: seller.account,
                buyer_area: buyer.area,
                seller_area: seller.area,
                energy_wh: e,
                anchor: PriceAnchor::Seller(price_per_kwh),
                amounts,
                pass: MatchPass::Standard,
            });
            need -= e;
            left_p -= e;
        }
    }
    let mut allocations = vec![
        Allocation {
            account: AccountId(0),
            allocated_wh: 0,
            supplied_wh: 0,
        };
        members.len()
    ];
    for (k, &i) in order.iter().enumerate() {
        allocations[i] = Allocation {
            account: members[i].account,
            allocated_wh: allocated[k],
            supplied_wh: supplied[k],
        };
    }
    Ok(SharedSlot {
        allocations,
        trades,
        shared_wh: shared,
        unshared_wh: injected - shared,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::market::{
        AreaTree, Community, FeeProfile, ImbalancePrices, Mechanism, MeterCounters, MeterDelivery,
        MeterId, PriceRule, SlotCalendar, Tariff, TimeProfile, settle_slot,
    };
    use proptest::prelude::*;

    const OPERATOR: AccountId = AccountId(1);

    fn terms(fee: u64, members: u16) -> SlotTerms {
        let mut areas =
            AreaTree::new(FeeProfile::PerKwh(TimeProfile::constant(fee)), OPERATOR).unwrap();
        for _ in 0..members {
            areas
                .add_area(areas.root(), FeeProfile::Free, OPERATOR)
                .unwrap();
        }
        Community {
            calendar: SlotCalendar::quarter_hourly(0),
            tariff: Tariff::flat(30_000, 8_000),
            imbalance: ImbalancePrices::default(),
            areas,
            utility: AccountId(0),
            mechanism: Mechanism::CallAuction(PriceRule::Midpoint),
        }
        .terms(10)
        .unwrap()
    }

    fn member(a: u32, injected_wh: u64, withdrawn_wh: u64) -> MemberFlow {
        MemberFlow {
            account: AccountId(a),
            area: AreaId(u16::try_from(a - 1).unwrap()),
            injected_wh,
            withdrawn_wh,
        }
    }

    #[test]
    fn the_default_key_splits_by_consumption() {
        // 900 Wh fed in, 300 + 600 + 1200 Wh drawn: 2100 drawn, 900 shared, 3 : 6 : 12.
        let m = [
            member(2, 900, 0),
            member(3, 0, 300),
            member(4, 0, 600),
            member(5, 0, 1200),
        ];
        let s = share_slot(
            &AllocationKey::ProportionalToConsumption,
            15_000,
            &m,
            &terms(0, 5),
        )
        .unwrap();
        let got: Vec<u64> = s.allocations.iter().map(|a| a.allocated_wh).collect();
        assert_eq!(got, [0, 129, 257, 514]);
        assert_eq!((s.shared_wh, s.unshared_wh), (900, 0));
        assert_eq!(s.allocations[0].supplied_wh, 900);
        // The consumer pays the price, the producer receives it: 514 Wh × 15 000 / 1000.
        let t = s.trades.iter().find(|t| t.buyer == AccountId(5)).unwrap();
        assert_eq!(
            (t.amounts.buyer_pays, t.amounts.seller_receives),
            (7_710, 7_710)
        );
    }

    #[test]
    fn a_fixed_key_caps_at_consumption_and_leaves_the_rest_unshared() {
        let m = [member(2, 1000, 0), member(3, 0, 100), member(4, 0, 800)];
        let key = AllocationKey::Fixed(vec![(AccountId(3), 5_000), (AccountId(4), 5_000)]);
        let s = share_slot(&key, 15_000, &m, &terms(0, 4)).unwrap();
        let got: Vec<u64> = s.allocations.iter().map(|a| a.allocated_wh).collect();
        assert_eq!(got, [0, 100, 500]);
        assert_eq!((s.shared_wh, s.unshared_wh), (600, 400));
        let too_much = AllocationKey::Fixed(vec![(AccountId(3), 6_000), (AccountId(4), 5_000)]);
        assert_eq!(
            share_slot(&too_much, 15_000, &m, &terms(0, 4)),
            Err(SharingError::SharesAbove100(11_000))
        );
    }

    #[test]
    fn bad_input_is_refused_with_the_reason() {
        let t = terms(0, 4);
        let key = AllocationKey::ProportionalToConsumption;
        assert!(matches!(
            share_slot(&key, 15_000, &[member(2, 5, 5)], &t),
            Err(SharingError::BothDirections { .. })
        ));
        assert!(matches!(
            share_slot(&key, 15_000, &[member(2, 5, 0), member(2, 0, 5)], &t),
            Err(SharingError::DuplicateMember(AccountId(2)))
        ));
        assert!(matches!(
            share_slot(&key, 40_000, &[member(2, 5, 0)], &t),
            Err(SharingError::PriceOutsideBand { .. })
        ));
    }

    proptest! {
        #[test]
        fn sharing_conserves_energy_and_money(
            flows in prop::collection::vec((any::<bool>(), 0u64..5_000), 1..12),
            price in 8_000u64..=30_000,
            fee in 0u64..3_000,
            fixed in any::<bool>(),
        ) {
            let n = u16::try_from(flows.len()).unwrap();
            let t = terms(fee, n + 1);
            let members: Vec<MemberFlow> = flows
                .iter()
                .enumerate()
                .map(|(i, &(producer, wh))| {
                    let a = u32::try_from(i).unwrap() + 2;
                    if producer { member(a, wh, 0) } else { member(a, 0, wh) }
                })
                .collect();
            let key = if fixed {
                let each = 10_000 / u32::from(n);
                AllocationKey::Fixed(members.iter().map(|m| (m.account, each)).collect())
            } else {
                AllocationKey::ProportionalToConsumption
            };
            let s = share_slot(&key, price, &members, &t).unwrap();
            let injected: u64 = members.iter().map(|m| m.injected_wh).sum();
            let withdrawn: u64 = members.iter().map(|m| m.withdrawn_wh).sum();
            prop_assert!(s.shared_wh <= injected.min(withdrawn));
            prop_assert_eq!(s.shared_wh + s.unshared_wh, injected);
            if !fixed {
                prop_assert_eq!(s.shared_wh, injected.min(withdrawn));
            }
            let alloc: u64 = s.allocations.iter().map(|a| a.allocated_wh).sum();
            let supplied: u64 = s.allocations.iter().map(|a| a.supplied_wh).sum();
            let traded: u64 = s.trades.iter().map(|t| t.energy_wh).sum();
            prop_assert_eq!(alloc, s.shared_wh);
            prop_assert_eq!(supplied, s.shared_wh);
            prop_assert_eq!(traded, s.shared_wh);
            for (a, m) in s.allocations.iter().zip(&members) {
                prop_assert!(a.allocated_wh <= m.withdrawn_wh && a.supplied_wh <= m.injected_wh);
                if !fixed && withdrawn > 0 {
                    // Within one Wh of the exact proportional share.
                    let exact = u128::from(s.shared_wh) * u128::from(m.withdrawn_wh);
                    let got = u128::from(a.allocated_wh) * u128::from(withdrawn);
                    prop_assert!(got.abs_diff(exact) < u128::from(withdrawn));
                }
            }
            for tr in &s.trades {
                prop_assert_eq!(tr.amounts.buyer_pays, tr.amounts.seller_receives + tr.amounts.fees);
                prop_assert!(tr.buyer != tr.seller);
            }
            // Settled with the members' meters, the slot nets to zero and no member that
            // shared deviates: the allocation is exactly what was delivered locally.
            let deliveries: Vec<MeterDelivery> = members
                .iter()
                .map(|m| MeterDelivery {
                    meter: MeterId(m.account.0),
                    account: m.account,
                    start: MeterCounters::default(),
                    end: MeterCounters { import_wh: m.withdrawn_wh, export_wh: m.injected_wh },
                })
                .collect();
            let settled = settle_slot(&s.trades, &deliveries, &t).unwrap();
            prop_assert_eq!(settled.balances.iter().map(|b| b.amount).sum::<i128>(), 0);
            let fees: u128 = s.trades.iter().map(|t| u128::from(t.amounts.fees)).sum();
            prop_assert_eq!(settled.fees, fees);
        }
    }

    #[test]
    fn an_account_with_several_meters_is_one_member_with_its_net_flow() {
        let meter = |m: u32, account: u32, import: (u64, u64), export: (u64, u64)| MeterDelivery {
            meter: MeterId(m),
            account: AccountId(account),
            start: MeterCounters {
                import_wh: import.0,
                export_wh: export.0,
            },
            end: MeterCounters {
                import_wh: import.1,
                export_wh: export.1,
            },
        };
        let flows = member_flows(
            &[
                meter(0, 7, (10, 110), (0, 0)),
                meter(1, 3, (0, 0), (50, 90)),
                meter(2, 7, (0, 0), (0, 300)),
            ],
            AreaId(0),
        )
        .unwrap();
        assert_eq!(
            flows,
            vec![
                MemberFlow {
                    account: AccountId(3),
                    area: AreaId(0),
                    injected_wh: 40,
                    withdrawn_wh: 0
                },
                MemberFlow {
                    account: AccountId(7),
                    area: AreaId(0),
                    injected_wh: 200,
                    withdrawn_wh: 0
                },
            ]
        );
        let backwards = member_flows(&[meter(4, 1, (100, 90), (0, 0))], AreaId(0));
        assert!(matches!(
            backwards,
            Err(DeliveryError::CounterWentBackwards { .. })
        ));
    }
}
