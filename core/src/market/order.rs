//! Orders: who wants to buy or sell how much energy, at what limit price, in which area.
//!
//! Every order is a limit order. There is deliberately no "market order" type: an order
//! without a limit is how other platforms handed out free energy (Power TAC #638).

use serde::{Deserialize, Serialize};

/// A trading account (household, grid operator, utility), as a small dense id.
///
/// The market engine maps its database ids to these; the market never sees names or keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AccountId(pub u32);

/// An order id, assigned by the market engine, unique within one slot's book.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OrderId(pub u64);

/// A node of the grid hierarchy (house, street, feeder, substation); each one runs a market
/// level that may charge a grid fee. See [`AreaTree`](super::AreaTree).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AreaId(pub u16);

/// A physical meter, as a small dense id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MeterId(pub u32);

// Ids print as their number: error messages go to users, who know order 27, not OrderId(27).
macro_rules! display_as_number {
    ($($id:ty),*) => {$(
        impl std::fmt::Display for $id {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}
display_as_number!(AccountId, OrderId, AreaId, MeterId);

/// Which way an order trades energy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Side {
    /// A bid: buys energy, pays at most its limit price.
    Buy,
    /// An ask (offer): sells energy, receives at least its limit price.
    Sell,
}

/// The largest energy one order may carry: 2^40 Wh, about 1.1 TWh.
///
/// Far above any neighbourhood order; it keeps every sum of positions inside `i64` and every
/// amount product inside `u128`.
pub const MAX_ORDER_ENERGY_WH: u64 = 1 << 40;

/// Most orders one slot's book can hold (they are indexed by `u32`).
pub const MAX_BOOK_ORDERS: u64 = (u32::MAX - 1) as u64;

/// Optional wishes attached to an order, honoured in a preference pass before the standard pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Preference {
    /// Trade first with this account when its orders cross ours (a preference, not a constraint).
    pub preferred_partner: Option<AccountId>,
    /// On an ask: the energy is renewable. On a bid: buy renewable energy only (a constraint:
    /// a green-only bid never trades with an ask that is not green).
    pub green: bool,
}

/// A limit order for one delivery slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Order {
    /// Engine-assigned id, unique within the slot.
    pub id: OrderId,
    /// The account that pays or is paid.
    pub owner: AccountId,
    /// The area (usually the house) where the energy is consumed or produced.
    pub area: AreaId,
    /// Buy or sell.
    pub side: Side,
    /// Limit price in payment-token smallest units per kWh: a bid pays at most this (fees
    /// included), an ask receives at least this (fees deducted).
    pub price_per_kwh: u64,
    /// Energy in Wh.
    pub energy_wh: u64,
    /// Preferred partner and green attribute.
    pub preference: Preference,
}

impl Order {
    /// A bid to buy `energy_wh` paying at most `price_per_kwh`.
    #[must_use]
    pub fn bid(
        id: OrderId,
        owner: AccountId,
        area: AreaId,
        price_per_kwh: u64,
        energy_wh: u64,
    ) -> Self {
        Self {
            id,
            owner,
            area,
            side: Side::Buy,
            price_per_kwh,
            energy_wh,
            preference: Preference::default(),
        }
    }

    /// An ask to sell `energy_wh` receiving at least `price_per_kwh`.
    #[must_use]
    pub fn ask(
        id: OrderId,
        owner: AccountId,
        area: AreaId,
        price_per_kwh: u64,
        energy_wh: u64,
    ) -> Self {
        Self {
            side: Side::Sell,
            ..Self::bid(id, owner, area, price_per_kwh, energy_wh)
        }
    }

    /// The same order, preferring to trade with `partner`.
    #[must_use]
    pub fn with_partner(mut self, partner: AccountId) -> Self {
        self.preference.preferred_partner = Some(partner);
        self
    }

    /// The same order, marked green (ask: renewable energy; bid: renewable only).
    #[must_use]
    pub fn green(mut self) -> Self {
        self.preference.green = true;
        self
    }
}

/// Why an order, a cancel or an amend was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// The order carries no energy.
    #[error("order {order} has no energy; give an energy of at least 1 Wh")]
    ZeroEnergy {
        /// The rejected order.
        order: OrderId,
    },
    /// The order carries more energy than any order may.
    #[error(
        "order {order} asks for {energy_wh} Wh, more than the limit of {max_wh} Wh; split it or check the unit (Wh)"
    )]
    EnergyTooLarge {
        /// The rejected order.
        order: OrderId,
        /// Energy requested.
        energy_wh: u64,
        /// The limit, [`MAX_ORDER_ENERGY_WH`].
        max_wh: u64,
    },
    /// The limit price is above the retail tariff, where the utility sells anyway.
    #[error(
        "order {order} has limit {price_per_kwh} per kWh, above the retail tariff {retail_per_kwh}; the utility sells at the tariff, so set a limit of at most {retail_per_kwh}"
    )]
    PriceAboveRetail {
        /// The rejected order.
        order: OrderId,
        /// The order's limit.
        price_per_kwh: u64,
        /// The slot's retail tariff (the market ceiling).
        retail_per_kwh: u64,
    },
    /// The limit price is below the feed-in tariff, where the utility buys anyway.
    #[error(
        "order {order} has limit {price_per_kwh} per kWh, below the feed-in tariff {feed_in_per_kwh}; the utility buys at the tariff, so set a limit of at least {feed_in_per_kwh}"
    )]
    PriceBelowFeedIn {
        /// The rejected order.
        order: OrderId,
        /// The order's limit.
        price_per_kwh: u64,
        /// The slot's feed-in tariff (the market floor).
        feed_in_per_kwh: u64,
    },
    /// The order arrived at or after the slot's gate closure.
    #[error(
        "order {order} for slot {slot} arrived at {now}, at or after gate closure at {gate_closure}; submit it for a later slot"
    )]
    GateClosed {
        /// The rejected order.
        order: OrderId,
        /// Slot index.
        slot: u64,
        /// When the order arrived (Unix seconds).
        now: i64,
        /// The slot's gate closure (Unix seconds).
        gate_closure: i64,
    },
    /// The order arrived before the slot's order window opened.
    #[error(
        "order {order} for slot {slot} arrived at {now}, before the order window opens at {opens_at}; submit it then"
    )]
    WindowNotOpen {
        /// The rejected order.
        order: OrderId,
        /// Slot index.
        slot: u64,
        /// When the order arrived (Unix seconds).
        now: i64,
        /// When the window opens (Unix seconds).
        opens_at: i64,
    },
    /// Another live order in this slot already has this id.
    #[error("order id {order} is already in use in this slot; assign a fresh id")]
    DuplicateOrderId {
        /// The duplicated id.
        order: OrderId,
    },
    /// No live order has this id (never submitted, already filled, cancelled or expired).
    #[error("no open order {order} in this slot; it may have been filled, cancelled or expired")]
    UnknownOrder {
        /// The id asked for.
        order: OrderId,
    },
    /// The order names an area the community does not have.
    #[error("order {order} names area {area}, which this community does not have")]
    UnknownArea {
        /// The rejected order.
        order: OrderId,
        /// The unknown area.
        area: AreaId,
    },
    /// The slot's book holds as many orders as it can index.
    #[error("order {order}: this slot's book is full ({capacity} orders); try a later slot")]
    BookFull {
        /// The rejected order.
        order: OrderId,
        /// Orders a book can hold, [`MAX_BOOK_ORDERS`].
        capacity: u64,
    },
    /// The community shares its local generation by an allocation key: it has no auction.
    #[error(
        "order {order}: this community shares its local generation among its members by an allocation key after delivery and takes no orders; nothing to submit"
    )]
    NoOrdersWhenSharing {
        /// The rejected order.
        order: OrderId,
    },
    /// Energy × price does not fit the token amount range.
    #[error(
        "order {order}: {energy_wh} Wh at up to {price_per_kwh} per kWh exceeds the largest token amount; reduce the energy"
    )]
    AmountOverflow {
        /// The rejected order.
        order: OrderId,
        /// Energy requested.
        energy_wh: u64,
        /// The price used for the bound.
        price_per_kwh: u64,
    },
}

impl OrderError {
    /// A stable name of the reason (a metrics label, a machine-readable error code).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ZeroEnergy { .. } => "zero_energy",
            Self::EnergyTooLarge { .. } => "energy_too_large",
            Self::PriceAboveRetail { .. } => "price_above_retail",
            Self::PriceBelowFeedIn { .. } => "price_below_feed_in",
            Self::GateClosed { .. } => "gate_closed",
            Self::WindowNotOpen { .. } => "window_not_open",
            Self::DuplicateOrderId { .. } => "duplicate_order_id",
            Self::UnknownOrder { .. } => "unknown_order",
            Self::UnknownArea { .. } => "unknown_area",
            Self::BookFull { .. } => "book_full",
            Self::AmountOverflow { .. } => "amount_overflow",
            Self::NoOrdersWhenSharing { .. } => "no_orders_when_sharing",
        }
    }
}
