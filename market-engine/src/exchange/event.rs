//! The order log's vocabulary: each accepted submit, cancel and amend as a typed
//! [`OrderEvent`] — what `order_events` stores and what [`super::Exchange::apply`] takes, live
//! or replayed — with the names its kind and side are stored and shown by.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Buy or sell, as the API and the order log spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderSide {
    /// A bid.
    Buy,
    /// An ask.
    Sell,
}

impl OrderSide {
    /// `buy` or `sell`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Buy => "buy",
            Self::Sell => "sell",
        }
    }
}

impl FromStr for OrderSide {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "buy" => Ok(Self::Buy),
            "sell" => Ok(Self::Sell),
            other => Err(format!("side {other:?} is neither buy nor sell")),
        }
    }
}

/// One entry of the order log: a request the exchange accepted, with everything needed to
/// apply it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OrderEvent {
    /// A new order.
    Submit {
        /// Its id (allocated by [`super::Exchange::next_order_id`]).
        order: u64,
        /// The account that pays or is paid.
        account: i64,
        /// The meter that delivers or takes the energy.
        meter: String,
        /// Buy or sell.
        side: OrderSide,
        /// Limit price, token units per kWh.
        price_per_kwh: u64,
        /// Energy, Wh.
        energy_wh: u64,
        /// When, Unix seconds.
        at_s: i64,
    },
    /// An open order withdrawn.
    Cancel {
        /// The order.
        order: u64,
        /// Its owner.
        account: i64,
        /// When, Unix seconds.
        at_s: i64,
    },
    /// An open order's price or size changed.
    Amend {
        /// The order.
        order: u64,
        /// Its owner.
        account: i64,
        /// New limit price, token units per kWh.
        price_per_kwh: u64,
        /// New energy, Wh.
        energy_wh: u64,
        /// When, Unix seconds.
        at_s: i64,
    },
}

/// The kind of an [`OrderEvent`], as the `order_events.kind` column stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderEventKind {
    /// [`OrderEvent::Submit`].
    Submit,
    /// [`OrderEvent::Cancel`].
    Cancel,
    /// [`OrderEvent::Amend`].
    Amend,
}

impl OrderEventKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submit => "submit",
            Self::Cancel => "cancel",
            Self::Amend => "amend",
        }
    }
}

impl FromStr for OrderEventKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "submit" => Ok(Self::Submit),
            "cancel" => Ok(Self::Cancel),
            "amend" => Ok(Self::Amend),
            other => Err(format!("order event kind {other:?} is unknown")),
        }
    }
}

impl fmt::Display for OrderEventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl OrderEvent {
    /// Its kind.
    pub fn kind(&self) -> OrderEventKind {
        match self {
            Self::Submit { .. } => OrderEventKind::Submit,
            Self::Cancel { .. } => OrderEventKind::Cancel,
            Self::Amend { .. } => OrderEventKind::Amend,
        }
    }

    /// The order it is about.
    pub fn order(&self) -> u64 {
        match self {
            Self::Submit { order, .. } | Self::Cancel { order, .. } | Self::Amend { order, .. } => {
                *order
            }
        }
    }

    /// The account that made it.
    pub fn account(&self) -> i64 {
        match self {
            Self::Submit { account, .. }
            | Self::Cancel { account, .. }
            | Self::Amend { account, .. } => *account,
        }
    }

    /// When it was made.
    pub fn at_s(&self) -> i64 {
        match self {
            Self::Submit { at_s, .. } | Self::Cancel { at_s, .. } | Self::Amend { at_s, .. } => {
                *at_s
            }
        }
    }
}
