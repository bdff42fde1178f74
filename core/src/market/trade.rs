//! A trade: energy moved from one seller to one buyer at one priced rate.

use super::fees::{PriceAnchor, TradeAmounts};
use super::order::{AccountId, AreaId, OrderId};
use serde::{Deserialize, Serialize};

/// Which matching pass formed a trade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MatchPass {
    /// A preferred partner was found among crossing orders.
    PreferredPartner,
    /// A green-only bid met a green ask.
    Green,
    /// Price-time priority.
    Standard,
}

/// A match between one bid and one ask.
///
/// Invariant: `amounts.buyer_pays == amounts.seller_receives + amounts.fees`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Trade {
    /// The buying order.
    pub bid: OrderId,
    /// The selling order.
    pub ask: OrderId,
    /// Who pays.
    pub buyer: AccountId,
    /// Who is paid.
    pub seller: AccountId,
    /// The buyer's area (fee path end).
    pub buyer_area: AreaId,
    /// The seller's area (fee path start).
    pub seller_area: AreaId,
    /// Energy in Wh.
    pub energy_wh: u64,
    /// The side whose rate set the price; the other side absorbs rounding.
    pub anchor: PriceAnchor,
    /// Rates and token amounts.
    pub amounts: TradeAmounts,
    /// Which pass formed it.
    pub pass: MatchPass,
}
