//! Grid fees per market level in a hierarchy of areas, and the one rounding rule that makes
//! every trade conserve money to the smallest token unit.
//!
//! A trade between a seller in area `s` and a buyer in area `b` passes through every market on
//! the path `b → … → lowest common ancestor → … → s`, and each market on that path charges its
//! fee (Grid Singularity's model). A fee is either a constant per kWh or a percentage of what
//! the seller receives (non-compounded, as in GSy-e's `non_compounded_grid_fees`).
//!
//! # Rounding rule
//!
//! A trade is anchored on one side's rate: the **buyer's** rate (two-sided pay-as-bid against a
//! resting bid, and pay-as-clear) or the **seller's** rate (a resting ask, and one-sided
//! pay-as-offer).
//!
//! 1. Each market's fee is first a *rate* per kWh: the constant, or for a percentage
//!    `floor(seller_rate × bp / 10000)` (seller-anchored) or
//!    `floor((buyer_rate − Σ constants) × bp / (10000 + Σ bp))` (buyer-anchored), rounded
//!    down to whole price units. The other side's rate is the anchor ∓ Σ fee rates.
//! 2. Every amount is `floor(energy_wh × rate / 1000)`: the anchored side's amount and each
//!    fee amount.
//! 3. The amount of the side opposite the anchor is *derived*: buyer-anchored,
//!    `seller_receives = buyer_pays − Σ fees` (the seller gets the sub-unit remainders of the
//!    fee floors); seller-anchored, `buyer_pays = seller_receives + Σ fees` (the buyer keeps
//!    them).
//!
//! So `buyer_pays == seller_receives + Σ fees` holds exactly, as integers, for every trade, and
//! because a sum of floors never exceeds the floor of the sum, a buyer never pays more than
//! `floor(energy × its limit / 1000)` and a seller never receives less than
//! `floor(energy × its limit / 1000)`.

use super::order::{AccountId, AreaId};
use super::tariff::TimeProfile;
use serde::{Deserialize, Serialize};

/// Deepest hierarchy supported: root plus seven levels below it.
pub const MAX_AREA_DEPTH: usize = 8;
/// Most markets a trade can cross: up seven levels, the root, down seven levels.
pub const MAX_PATH_MARKETS: usize = 2 * MAX_AREA_DEPTH - 1;
/// Largest percentage fee of one market, in basis points (100 %).
pub const MAX_FEE_BASIS_POINTS: u64 = 10_000;

/// A market's grid fee as it varies over slots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeeProfile {
    /// This market charges nothing.
    #[default]
    Free,
    /// A constant in token units per kWh, per slot.
    PerKwh(TimeProfile),
    /// A percentage of the seller's receipt in basis points (1 bp = 0.01 %), per slot.
    Percent(TimeProfile),
}

/// One market's grid fee in one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GridFee {
    /// Token units per kWh.
    PerKwh(u64),
    /// Basis points of the seller's receipt.
    Percent(u64),
}

/// Why an area could not be added or a fee path could not be formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AreaError {
    /// The parent area does not exist.
    #[error("parent area {0} does not exist; add it first")]
    UnknownParent(AreaId),
    /// The area is not part of this community.
    #[error("area {0} does not exist in this community")]
    UnknownArea(AreaId),
    /// The hierarchy would be deeper than [`MAX_AREA_DEPTH`].
    #[error("area under {0} would be deeper than {MAX_AREA_DEPTH} levels; flatten the hierarchy")]
    TooDeep(AreaId),
    /// A configured area list is not a tree.
    #[error(
        "area at position {position}: the first area must be the root (no parent) and every other must name an earlier area as parent"
    )]
    NotATree {
        /// Position in the configured list.
        position: usize,
    },
    /// More areas than an [`AreaId`] can number.
    #[error("a community holds at most 65535 areas")]
    TooManyAreas,
    /// A percentage fee above 100 %.
    #[error(
        "percentage fee of {basis_points} bp in slot-profile position {position} is above {MAX_FEE_BASIS_POINTS} bp (100 %)"
    )]
    PercentTooLarge {
        /// The offending value.
        basis_points: u64,
        /// Its index in the profile.
        position: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct AreaNode {
    parent: Option<AreaId>,
    depth: u8,
    fee: FeeProfile,
    recipient: AccountId,
}

/// The community's grid hierarchy (house → street → feeder → substation), each area a market
/// level with a fee and the account that collects it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<AreaSpec>", into = "Vec<AreaSpec>")]
pub struct AreaTree {
    nodes: Vec<AreaNode>,
}

/// One area as configured: the first is the root (no parent), every other names an earlier
/// area as its parent. This is the serialized form of an [`AreaTree`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AreaSpec {
    /// The parent area (none for the root).
    pub parent: Option<AreaId>,
    /// The area's market fee.
    #[serde(default)]
    pub fee: FeeProfile,
    /// Who collects it.
    pub recipient: AccountId,
}

impl TryFrom<Vec<AreaSpec>> for AreaTree {
    type Error = AreaError;

    fn try_from(specs: Vec<AreaSpec>) -> Result<Self, AreaError> {
        let mut specs = specs.into_iter().enumerate();
        let mut tree = match specs.next() {
            Some((
                _,
                AreaSpec {
                    parent: None,
                    fee,
                    recipient,
                },
            )) => Self::new(fee, recipient)?,
            _ => return Err(AreaError::NotATree { position: 0 }),
        };
        for (position, spec) in specs {
            let parent = spec
                .parent
                .filter(|p| usize::from(p.0) < position)
                .ok_or(AreaError::NotATree { position })?;
            tree.add_area(parent, spec.fee, spec.recipient)?;
        }
        Ok(tree)
    }
}

impl From<AreaTree> for Vec<AreaSpec> {
    fn from(tree: AreaTree) -> Self {
        tree.nodes
            .into_iter()
            .map(|n| AreaSpec {
                parent: n.parent,
                fee: n.fee,
                recipient: n.recipient,
            })
            .collect()
    }
}

impl AreaTree {
    /// A tree with only its root market ([`AreaId`] 0), charging `fee` to `recipient`.
    pub fn new(fee: FeeProfile, recipient: AccountId) -> Result<Self, AreaError> {
        check_fee(&fee)?;
        Ok(Self {
            nodes: vec![AreaNode {
                parent: None,
                depth: 0,
                fee,
                recipient,
            }],
        })
    }

    /// The root area.
    #[must_use]
    pub fn root(&self) -> AreaId {
        AreaId(0)
    }

    /// Adds a market level below `parent`; returns its id (ids are dense, in insertion order).
    pub fn add_area(
        &mut self,
        parent: AreaId,
        fee: FeeProfile,
        recipient: AccountId,
    ) -> Result<AreaId, AreaError> {
        check_fee(&fee)?;
        let parent_node = self
            .nodes
            .get(usize::from(parent.0))
            .ok_or(AreaError::UnknownParent(parent))?;
        let depth = parent_node.depth + 1;
        if usize::from(depth) >= MAX_AREA_DEPTH {
            return Err(AreaError::TooDeep(parent));
        }
        let id = u16::try_from(self.nodes.len())
            .ok()
            .filter(|&i| i != u16::MAX)
            .ok_or(AreaError::TooManyAreas)?;
        self.nodes.push(AreaNode {
            parent: Some(parent),
            depth,
            fee,
            recipient,
        });
        Ok(AreaId(id))
    }

    /// Number of areas.
    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a tree has at least its root.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The fees of every market in slot `slot`.
    #[must_use]
    pub fn slot_fees(&self, slot: u64) -> SlotFees {
        let mut any_fee = false;
        let nodes = self
            .nodes
            .iter()
            .map(|n| {
                let fee = match &n.fee {
                    FeeProfile::Free => GridFee::PerKwh(0),
                    FeeProfile::PerKwh(p) => GridFee::PerKwh(p.at(slot)),
                    FeeProfile::Percent(p) => GridFee::Percent(p.at(slot)),
                };
                any_fee |= !matches!(fee, GridFee::PerKwh(0) | GridFee::Percent(0));
                SlotNode {
                    parent: n.parent.map_or(NO_PARENT, |p| p.0),
                    depth: n.depth,
                    fee,
                    recipient: n.recipient,
                }
            })
            .collect();
        SlotFees { nodes, any_fee }
    }
}

fn check_fee(fee: &FeeProfile) -> Result<(), AreaError> {
    if let FeeProfile::Percent(p) = fee
        && let Some((position, &basis_points)) = p
            .values()
            .iter()
            .enumerate()
            .find(|&(_, &v)| v > MAX_FEE_BASIS_POINTS)
    {
        return Err(AreaError::PercentTooLarge {
            basis_points,
            position,
        });
    }
    Ok(())
}

const NO_PARENT: u16 = u16::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SlotNode {
    parent: u16,
    depth: u8,
    fee: GridFee,
    recipient: AccountId,
}

/// Every market's fee in one slot: computes fee paths and prices trades.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotFees {
    nodes: Vec<SlotNode>,
    any_fee: bool,
}

/// Which side's rate a trade is priced on; the other side's amount absorbs the rounding
/// remainder (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PriceAnchor {
    /// The buyer pays this rate per kWh; fees are deducted for the seller.
    Buyer(u64),
    /// The seller receives this rate per kWh; fees are added for the buyer.
    Seller(u64),
}

/// The markets a trade crosses, ordered from the buyer's area to the seller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarketPath {
    len: u8,
    areas: [u16; MAX_PATH_MARKETS],
}

impl MarketPath {
    /// The areas, buyer side first.
    pub fn areas(&self) -> impl Iterator<Item = AreaId> + '_ {
        self.areas[..usize::from(self.len)]
            .iter()
            .map(|&a| AreaId(a))
    }
}

/// What one market on the path earns from one trade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FeeLeg {
    /// The market (area).
    pub area: AreaId,
    /// Who collects its fee.
    pub recipient: AccountId,
    /// The fee per kWh (floored).
    pub rate_per_kwh: u64,
    /// The fee for this trade's energy (floored).
    pub amount: u64,
}

const EMPTY_LEG: FeeLeg = FeeLeg {
    area: AreaId(0),
    recipient: AccountId(0),
    rate_per_kwh: 0,
    amount: 0,
};

/// The fee legs of one trade, in path order (buyer side first), one per market crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeeLegs {
    len: u8,
    legs: [FeeLeg; MAX_PATH_MARKETS],
}

impl FeeLegs {
    /// No legs (a buffer that pricing fills).
    pub const EMPTY: Self = Self {
        len: 0,
        legs: [EMPTY_LEG; MAX_PATH_MARKETS],
    };

    /// The legs, buyer side first.
    #[must_use]
    pub fn as_slice(&self) -> &[FeeLeg] {
        &self.legs[..usize::from(self.len)]
    }
}

/// A priced trade: both rates and all three amounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TradeAmounts {
    /// What the buyer pays per kWh, fees included.
    pub buyer_rate_per_kwh: u64,
    /// What the seller receives per kWh, fees deducted.
    pub seller_rate_per_kwh: u64,
    /// Tokens the buyer pays.
    pub buyer_pays: u64,
    /// Tokens the seller receives.
    pub seller_receives: u64,
    /// Tokens of grid fees, all markets together.
    pub fees: u64,
}

/// Why a pair cannot be priced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeeError {
    /// An area on the trade is not part of this community.
    #[error(transparent)]
    Area(#[from] AreaError),
    /// The constant fees on the path exceed the buyer's rate, so the seller would owe money.
    #[error(
        "grid fees of {fees_per_kwh} per kWh exceed the buyer's rate of {rate_per_kwh} per kWh"
    )]
    FeesExceedRate {
        /// Sum of constant fees along the path.
        fees_per_kwh: u64,
        /// The buyer's rate.
        rate_per_kwh: u64,
    },
    /// An amount does not fit in the token range.
    #[error("a trade amount does not fit in 64 bits; reduce the order's energy")]
    Overflow,
}

/// `floor(energy_wh × rate / 1000)`: the one way an energy and a rate become tokens.
pub fn amount_for(energy_wh: u64, rate_per_kwh: u64) -> Result<u64, FeeError> {
    // The 64-bit path is the common case and avoids a slow 128-bit division; both give the
    // same floor.
    match energy_wh.checked_mul(rate_per_kwh) {
        Some(product) => Ok(product / 1000),
        None => u64::try_from(u128::from(energy_wh) * u128::from(rate_per_kwh) / 1000)
            .map_err(|_| FeeError::Overflow),
    }
}

/// `floor(energy_wh × rate / 1000)` for the wide sums of settlement and KPIs (saturating):
/// the same floor as [`amount_for`], through 64-bit arithmetic whenever the product fits.
pub(crate) fn wide_amount_for(energy_wh: u128, rate_per_kwh: u64) -> u128 {
    if let Ok(e) = u64::try_from(energy_wh)
        && let Some(product) = e.checked_mul(rate_per_kwh)
    {
        return u128::from(product / 1000);
    }
    energy_wh.saturating_mul(u128::from(rate_per_kwh)) / 1000
}

fn floor_mul_div(x: u64, num: u64, den: u64) -> u64 {
    // num/den ≤ 1 at every call site, so the quotient never exceeds x and fits.
    u64::try_from(u128::from(x) * u128::from(num) / u128::from(den.max(1))).unwrap_or(u64::MAX)
}

impl SlotFees {
    /// A community with one free market: no fees anywhere.
    #[must_use]
    pub fn free(recipient: AccountId) -> Self {
        Self {
            nodes: vec![SlotNode {
                parent: NO_PARENT,
                depth: 0,
                fee: GridFee::PerKwh(0),
                recipient,
            }],
            any_fee: false,
        }
    }

    /// Whether `area` exists.
    #[must_use]
    pub fn contains(&self, area: AreaId) -> bool {
        usize::from(area.0) < self.nodes.len()
    }

    /// Whether any market charges a fee in this slot.
    #[must_use]
    pub fn any_fee(&self) -> bool {
        self.any_fee
    }

    fn node(&self, area: u16) -> Result<&SlotNode, AreaError> {
        self.nodes
            .get(usize::from(area))
            .ok_or(AreaError::UnknownArea(AreaId(area)))
    }

    /// The markets a trade from `seller_area` to `buyer_area` crosses, buyer side first.
    pub fn path(&self, buyer_area: AreaId, seller_area: AreaId) -> Result<MarketPath, AreaError> {
        let mut down = [0u16; MAX_AREA_DEPTH];
        let mut n_down = 0usize;
        let mut path = MarketPath {
            len: 0,
            areas: [0; MAX_PATH_MARKETS],
        };
        let mut up = 0usize;
        let (mut x, mut y) = (buyer_area.0, seller_area.0);
        let (mut dx, mut dy) = (self.node(x)?.depth, self.node(y)?.depth);
        // Depth is at most MAX_AREA_DEPTH - 1, so each side pushes at most that many areas
        // before reaching the common ancestor; the index guards only defend the invariant.
        while x != y {
            if dx >= dy {
                *path
                    .areas
                    .get_mut(up)
                    .ok_or(AreaError::UnknownArea(AreaId(x)))? = x;
                up += 1;
                x = self.node(x)?.parent;
                dx = self.node(x)?.depth;
            } else {
                *down
                    .get_mut(n_down)
                    .ok_or(AreaError::UnknownArea(AreaId(y)))? = y;
                n_down += 1;
                y = self.node(y)?.parent;
                dy = self.node(y)?.depth;
            }
        }
        *path
            .areas
            .get_mut(up)
            .ok_or(AreaError::UnknownArea(AreaId(x)))? = x;
        up += 1;
        for &a in down[..n_down].iter().rev() {
            *path
                .areas
                .get_mut(up)
                .ok_or(AreaError::UnknownArea(AreaId(a)))? = a;
            up += 1;
        }
        path.len = u8::try_from(up).map_err(|_| AreaError::UnknownArea(buyer_area))?;
        Ok(path)
    }

    /// Whether a bid limit in `buyer_area` and an ask limit in `seller_area` can trade: the
    /// buyer pays at most its limit and the seller receives at least its limit after fees,
    /// whichever side sets the price.
    #[must_use]
    pub fn crosses(
        &self,
        bid_per_kwh: u64,
        ask_per_kwh: u64,
        buyer_area: AreaId,
        seller_area: AreaId,
    ) -> bool {
        if bid_per_kwh < ask_per_kwh {
            return false;
        }
        if !self.any_fee {
            return true;
        }
        let Ok(path) = self.path(buyer_area, seller_area) else {
            return false;
        };
        let via_ask = self.rates(&path, PriceAnchor::Seller(ask_per_kwh));
        let via_bid = self.rates(&path, PriceAnchor::Buyer(bid_per_kwh));
        matches!(via_ask, Ok((b, _, _)) if b <= bid_per_kwh)
            && matches!(via_bid, Ok((_, s, _)) if s >= ask_per_kwh)
    }

    fn sums(&self, path: &MarketPath) -> Result<(u64, u64), FeeError> {
        let (mut per_kwh, mut pct) = (0u64, 0u64);
        for a in path.areas() {
            match self.node(a.0)?.fee {
                GridFee::PerKwh(f) => per_kwh = per_kwh.checked_add(f).ok_or(FeeError::Overflow)?,
                GridFee::Percent(p) => pct += p,
            }
        }
        Ok((per_kwh, pct))
    }

    /// (buyer rate, seller rate, fee rate of each market on the path) per kWh for `anchor`.
    fn rates(
        &self,
        path: &MarketPath,
        anchor: PriceAnchor,
    ) -> Result<(u64, u64, [u64; MAX_PATH_MARKETS]), FeeError> {
        let (per_kwh, pct) = self.sums(path)?;
        let mut fee_rates = [0u64; MAX_PATH_MARKETS];
        match anchor {
            PriceAnchor::Buyer(p) => {
                // Percentages are shares of the seller's rate s, and p = s·(1 + Σbp/10000) +
                // Σconstant, so each percentage fee is (p − Σconstant)·bp / (10000 + Σbp).
                let base = p.checked_sub(per_kwh).ok_or(FeeError::FeesExceedRate {
                    fees_per_kwh: per_kwh,
                    rate_per_kwh: p,
                })?;
                let mut seller = base;
                for (rate, a) in fee_rates.iter_mut().zip(path.areas()) {
                    *rate = match self.node(a.0)?.fee {
                        GridFee::PerKwh(f) => f,
                        GridFee::Percent(bp) => {
                            let r = floor_mul_div(base, bp, MAX_FEE_BASIS_POINTS + pct);
                            seller -= r;
                            r
                        }
                    };
                }
                Ok((p, seller, fee_rates))
            }
            PriceAnchor::Seller(s) => {
                let mut buyer = s;
                for (rate, a) in fee_rates.iter_mut().zip(path.areas()) {
                    *rate = match self.node(a.0)?.fee {
                        GridFee::PerKwh(f) => f,
                        GridFee::Percent(bp) => floor_mul_div(s, bp, MAX_FEE_BASIS_POINTS),
                    };
                    buyer = buyer.checked_add(*rate).ok_or(FeeError::Overflow)?;
                }
                Ok((buyer, s, fee_rates))
            }
        }
    }

    /// Prices a trade of `energy_wh` between `buyer_area` and `seller_area` at `anchor`.
    ///
    /// Fee rates per kWh: a constant as is; a percentage `floor(seller_rate × bp / 10000)`
    /// when seller-anchored, `floor((buyer_rate − Σ constants) × bp / (10000 + Σ bp))` when
    /// buyer-anchored. Amounts: `floor(energy_wh × rate / 1000)` for the anchored side and
    /// each fee; the other side is derived (`seller = buyer − Σ fees` or
    /// `buyer = seller + Σ fees`), so it takes the rounding remainder.
    pub fn price(
        &self,
        buyer_area: AreaId,
        seller_area: AreaId,
        energy_wh: u64,
        anchor: PriceAnchor,
    ) -> Result<TradeAmounts, FeeError> {
        if !self.any_fee {
            let rate = match anchor {
                PriceAnchor::Buyer(r) | PriceAnchor::Seller(r) => r,
            };
            let amount = amount_for(energy_wh, rate)?;
            return Ok(TradeAmounts {
                buyer_rate_per_kwh: rate,
                seller_rate_per_kwh: rate,
                buyer_pays: amount,
                seller_receives: amount,
                fees: 0,
            });
        }
        self.priced_path(buyer_area, seller_area, anchor)?
            .amounts(energy_wh, None)
    }

    /// The per-market fee legs of a trade, buyer side first, with its amounts (the same
    /// computation as [`SlotFees::price`]).
    pub fn fee_legs(
        &self,
        buyer_area: AreaId,
        seller_area: AreaId,
        energy_wh: u64,
        anchor: PriceAnchor,
    ) -> Result<(TradeAmounts, FeeLegs), FeeError> {
        let mut legs = FeeLegs::EMPTY;
        let amounts = self
            .priced_path(buyer_area, seller_area, anchor)?
            .amounts(energy_wh, Some(&mut legs))?;
        Ok((amounts, legs))
    }

    /// The path between two areas with its rates for `anchor`: what pricing a trade needs
    /// apart from its energy, so that trades on the same path at the same anchor (most of a
    /// call auction's) are priced without walking the tree again ([`PathPricer`]).
    pub(crate) fn priced_path(
        &self,
        buyer_area: AreaId,
        seller_area: AreaId,
        anchor: PriceAnchor,
    ) -> Result<PricedPath, FeeError> {
        let path = self.path(buyer_area, seller_area)?;
        let (buyer_rate, seller_rate, fee_rates) = self.rates(&path, anchor)?;
        let mut recipients = [AccountId(0); MAX_PATH_MARKETS];
        for (r, a) in recipients.iter_mut().zip(path.areas()) {
            *r = self.node(a.0)?.recipient;
        }
        Ok(PricedPath {
            path,
            anchor,
            buyer_rate,
            seller_rate,
            fee_rates,
            recipients,
        })
    }

    /// The trade rate in each market on the path, buyer side first: the buyer's rate less the
    /// fees of the markets already crossed (GSy-e's "trade rate per market level").
    pub fn market_rates(
        &self,
        buyer_area: AreaId,
        seller_area: AreaId,
        anchor: PriceAnchor,
    ) -> Result<Vec<(AreaId, u64)>, FeeError> {
        let (amounts, legs) = self.fee_legs(buyer_area, seller_area, 1000, anchor)?;
        let mut rate = amounts.buyer_rate_per_kwh;
        let mut out = Vec::with_capacity(legs.as_slice().len());
        for leg in legs.as_slice() {
            out.push((leg.area, rate));
            rate = rate.saturating_sub(leg.rate_per_kwh);
        }
        Ok(out)
    }
}

/// A path with its rates for one price anchor (see [`SlotFees::priced_path`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PricedPath {
    path: MarketPath,
    anchor: PriceAnchor,
    buyer_rate: u64,
    seller_rate: u64,
    fee_rates: [u64; MAX_PATH_MARKETS],
    recipients: [AccountId; MAX_PATH_MARKETS],
}

impl PricedPath {
    /// The amounts of `energy_wh` on this path, and each market's leg into `legs` if given.
    pub(crate) fn amounts(
        &self,
        energy_wh: u64,
        mut legs: Option<&mut FeeLegs>,
    ) -> Result<TradeAmounts, FeeError> {
        let mut fees = 0u64;
        let n = usize::from(self.path.len);
        for (i, (&area, &rate)) in self.path.areas[..n]
            .iter()
            .zip(&self.fee_rates[..n])
            .enumerate()
        {
            let amount = amount_for(energy_wh, rate)?;
            fees = fees.checked_add(amount).ok_or(FeeError::Overflow)?;
            if let Some(l) = legs.as_deref_mut()
                && let Some(slot) = l.legs.get_mut(i)
            {
                *slot = FeeLeg {
                    area: AreaId(area),
                    recipient: self.recipients[i],
                    rate_per_kwh: rate,
                    amount,
                };
            }
        }
        if let Some(l) = legs {
            l.len = self.path.len;
        }
        // Σ floor(e·fᵢ/1000) ≤ floor(e·Σfᵢ/1000): the fees never exceed the anchored amount's
        // share, so neither subtraction nor the bounds on the limits can fail.
        let (buyer_pays, seller_receives) = match self.anchor {
            PriceAnchor::Buyer(_) => {
                let b = amount_for(energy_wh, self.buyer_rate)?;
                (b, b.checked_sub(fees).ok_or(FeeError::Overflow)?)
            }
            PriceAnchor::Seller(_) => {
                let s = amount_for(energy_wh, self.seller_rate)?;
                (s.checked_add(fees).ok_or(FeeError::Overflow)?, s)
            }
        };
        Ok(TradeAmounts {
            buyer_rate_per_kwh: self.buyer_rate,
            seller_rate_per_kwh: self.seller_rate,
            buyer_pays,
            seller_receives,
            fees,
        })
    }
}

/// Prices trades one after another, walking the area tree only when a trade's areas or price
/// anchor differ from the previous trade's.
///
/// Design: a slot's trades mostly share their areas and, in a call auction, the uniform price;
/// the path and its rates are then computed once per slot instead of once per trade. The
/// amounts are exactly [`SlotFees::price`]'s.
pub(crate) struct PathPricer<'a> {
    fees: &'a SlotFees,
    last: Option<(AreaId, AreaId, PricedPath)>,
}

impl<'a> PathPricer<'a> {
    /// A pricer for one slot's fees.
    pub(crate) fn new(fees: &'a SlotFees) -> Self {
        Self { fees, last: None }
    }

    /// [`SlotFees::price`] of a trade, with its fee legs into `legs` if given.
    pub(crate) fn price(
        &mut self,
        buyer_area: AreaId,
        seller_area: AreaId,
        energy_wh: u64,
        anchor: PriceAnchor,
        legs: Option<&mut FeeLegs>,
    ) -> Result<TradeAmounts, FeeError> {
        match &self.last {
            Some((b, s, p)) if *b == buyer_area && *s == seller_area && p.anchor == anchor => {
                p.amounts(energy_wh, legs)
            }
            _ => {
                let p = self.fees.priced_path(buyer_area, seller_area, anchor)?;
                let amounts = p.amounts(energy_wh, legs);
                self.last = Some((buyer_area, seller_area, p));
                amounts
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tree() -> (AreaTree, [AreaId; 4]) {
        let c = |v| FeeProfile::PerKwh(TimeProfile::constant(v));
        let mut t = AreaTree::new(c(2), AccountId(0)).unwrap();
        let n1 = t.add_area(t.root(), c(1), AccountId(1)).unwrap();
        let n2 = t.add_area(t.root(), c(1), AccountId(2)).unwrap();
        let h1 = t.add_area(n1, FeeProfile::Free, AccountId(3)).unwrap();
        let h2 = t.add_area(n2, FeeProfile::Free, AccountId(4)).unwrap();
        (t, [n1, n2, h1, h2])
    }

    #[test]
    fn path_runs_buyer_up_to_the_common_ancestor_and_down_to_the_seller() {
        let (t, [n1, n2, h1, h2]) = tree();
        let f = t.slot_fees(0);
        let p: Vec<AreaId> = f.path(h1, h2).unwrap().areas().collect();
        assert_eq!(p, [h1, n1, AreaId(0), n2, h2]);
        let p: Vec<AreaId> = f.path(h1, n1).unwrap().areas().collect();
        assert_eq!(p, [h1, n1]);
        let p: Vec<AreaId> = f.path(h2, h2).unwrap().areas().collect();
        assert_eq!(p, [h2]);
        assert!(f.path(h1, AreaId(99)).is_err());
    }

    #[test]
    fn the_path_pricer_prices_every_trade_as_price_and_fee_legs_do() {
        // Percentage and constant fees on different levels, so rates depend on the anchor.
        let mut t = AreaTree::new(
            FeeProfile::Percent(TimeProfile::constant(300)),
            AccountId(0),
        )
        .unwrap();
        let n1 = t
            .add_area(
                t.root(),
                FeeProfile::PerKwh(TimeProfile::constant(7)),
                AccountId(1),
            )
            .unwrap();
        let h1 = t.add_area(n1, FeeProfile::Free, AccountId(3)).unwrap();
        let h2 = t
            .add_area(t.root(), FeeProfile::Free, AccountId(4))
            .unwrap();
        let areas = [t.root(), n1, h1, h2];
        let fees = t.slot_fees(0);
        let mut pricer = PathPricer::new(&fees);
        let mut legs = FeeLegs::EMPTY;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Runs of equal areas and anchors (the pricer's reuse) and changes between them.
            let (b, s) = (areas[(x % 4) as usize], areas[((x >> 2) % 4) as usize]);
            let rate = 50 + (x >> 8) % 3;
            let anchor = if x & (1 << 20) == 0 {
                PriceAnchor::Buyer(rate)
            } else {
                PriceAnchor::Seller(rate)
            };
            let energy = (x >> 24) % 5_000;
            let got = pricer.price(b, s, energy, anchor, Some(&mut legs));
            assert_eq!(got, fees.price(b, s, energy, anchor));
            if let Ok((amounts, expected)) = fees.fee_legs(b, s, energy, anchor) {
                assert_eq!(got, Ok(amounts));
                assert_eq!(legs.as_slice(), expected.as_slice());
            }
        }
    }

    #[test]
    fn rounding_remainder_goes_to_the_derived_side() {
        let (t, [_, _, h1, h2]) = tree();
        let f = t.slot_fees(0);
        // 333 Wh at 30/kWh: buyer floor(9.99) = 9; fees floor(0.333)+floor(0.666)+floor(0.333)
        // = 0; the seller receives 9, the whole remainder.
        let a = f.price(h1, h2, 333, PriceAnchor::Buyer(30)).unwrap();
        assert_eq!((a.buyer_pays, a.fees, a.seller_receives), (9, 0, 9));
        let a = f.price(h1, h2, 1500, PriceAnchor::Seller(10)).unwrap();
        assert_eq!(
            (a.seller_receives, a.fees, a.buyer_pays),
            (15, 1 + 3 + 1, 20)
        );
    }

    #[test]
    fn constant_fees_above_the_rate_cannot_be_priced() {
        let (t, [_, _, h1, h2]) = tree();
        assert!(matches!(
            t.slot_fees(0).price(h1, h2, 1000, PriceAnchor::Buyer(3)),
            Err(FeeError::FeesExceedRate {
                fees_per_kwh: 4,
                rate_per_kwh: 3
            })
        ));
        assert!(!t.slot_fees(0).crosses(13, 10, h1, h2));
        assert!(t.slot_fees(0).crosses(14, 10, h1, h2));
    }

    #[test]
    fn tree_rejects_bad_shapes() {
        let mut t = AreaTree::new(FeeProfile::Free, AccountId(0)).unwrap();
        assert_eq!(
            t.add_area(AreaId(5), FeeProfile::Free, AccountId(0)),
            Err(AreaError::UnknownParent(AreaId(5)))
        );
        let mut parent = t.root();
        for _ in 1..MAX_AREA_DEPTH {
            parent = t.add_area(parent, FeeProfile::Free, AccountId(0)).unwrap();
        }
        assert_eq!(
            t.add_area(parent, FeeProfile::Free, AccountId(0)),
            Err(AreaError::TooDeep(parent))
        );
        let too_much = FeeProfile::Percent(TimeProfile::repeating(vec![10, 10_001]).unwrap());
        assert_eq!(
            AreaTree::new(too_much, AccountId(0)),
            Err(AreaError::PercentTooLarge {
                basis_points: 10_001,
                position: 1
            })
        );
    }

    #[test]
    fn configured_trees_round_trip_and_malformed_ones_are_rejected() {
        let (t, _) = tree();
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<AreaTree>(&json).unwrap(), t);
        let looped = r#"[{"parent":null,"recipient":0},{"parent":1,"recipient":0}]"#;
        assert!(serde_json::from_str::<AreaTree>(looped).is_err());
        let rootless = r#"[{"parent":0,"recipient":0}]"#;
        assert!(serde_json::from_str::<AreaTree>(rootless).is_err());
        let pct = r#"[{"parent":null,"fee":{"Percent":[20000]},"recipient":0}]"#;
        assert!(serde_json::from_str::<AreaTree>(pct).is_err());
        let two_fees = FeeProfile::PerKwh(TimeProfile::repeating(vec![1, 5]).unwrap());
        let t = AreaTree::new(two_fees, AccountId(0)).unwrap();
        let price = |slot| {
            t.slot_fees(slot)
                .price(AreaId(0), AreaId(0), 1000, PriceAnchor::Buyer(30))
        };
        assert_eq!(price(0).unwrap().fees, 1);
        assert_eq!(price(1).unwrap().fees, 5);
        assert_eq!(price(2).unwrap().fees, 1);
    }

    #[test]
    fn deepest_paths_fit() {
        let mut t = AreaTree::new(FeeProfile::Free, AccountId(0)).unwrap();
        let (mut a, mut b) = (t.root(), t.root());
        for _ in 1..MAX_AREA_DEPTH {
            a = t.add_area(a, FeeProfile::Free, AccountId(0)).unwrap();
            b = t.add_area(b, FeeProfile::Free, AccountId(0)).unwrap();
        }
        assert_eq!(
            t.slot_fees(0).path(a, b).unwrap().areas().count(),
            MAX_PATH_MARKETS
        );
    }
}
