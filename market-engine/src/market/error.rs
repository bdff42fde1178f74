//! Why the market refused a request or failed, with a stable reason per variant for the
//! rejection counters.

use super::*;

/// Why the market refused a request.
#[derive(Debug, thiserror::Error)]
pub enum MarketError {
    /// The `core` rules refused the order (gate closed, price outside the band, ...).
    #[error(transparent)]
    Order(#[from] OrderError),
    /// The slot cannot be traded (outside the calendar, already closed).
    #[error("{0}")]
    Slot(String),
    /// A slot could not be settled or put into a chain batch: the engine's failure, not the
    /// request's (the slot is tried again; `gridshare_settlement_failures`).
    #[error("{0}")]
    Settlement(String),
    /// A task the market relies on has stopped (the engine is shutting down).
    #[error("{0} stopped")]
    Stopped(&'static str),
    /// Market settings that cannot apply (the operator's request, or a stored row).
    #[error("{0}")]
    Settings(String),
    /// A stored row of market settings cannot be read (a newer engine wrote it).
    #[error(transparent)]
    StoredSettings(#[from] StoredSettingsError),
    /// No such order, or not the caller's.
    #[error("order {0} not found among your open orders")]
    UnknownOrder(u64),
    /// The account cannot pay for what it asks.
    #[error(
        "insufficient funds: this needs {need} token units, the account has {available} available \
         (deposits and settled balance, less what open bids and unsettled purchases hold)"
    )]
    InsufficientFunds {
        /// What the bid could cost at its limit price (or the withdrawal), token units.
        need: u64,
        /// What the account may still spend, token units.
        available: i64,
    },
    /// An amount or quantity beyond what the engine can represent or allows.
    #[error("{0}")]
    OutOfRange(String),
    /// A deposit or withdrawal with a reference already used for a different amount.
    #[error("reference {0:?} was already used for a different amount")]
    ReferenceReused(String),
    /// The database failed; the slot's book was rebuilt from the log.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl MarketError {
    /// A stable name of the reason (a metrics label).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Order(e) => e.reason(),
            Self::Slot(_) => "slot_not_trading",
            Self::Settlement(_) => "settlement",
            Self::Stopped(_) => "stopped",
            Self::Settings(_) => "invalid_settings",
            Self::StoredSettings(_) => "stored_settings",
            Self::UnknownOrder(_) => "unknown_order",
            Self::InsufficientFunds { .. } => "insufficient_funds",
            Self::OutOfRange(_) => "out_of_range",
            Self::ReferenceReused(_) => "reference_reused",
            Self::Store(_) => "storage",
        }
    }
}

impl From<ExchangeError> for MarketError {
    fn from(e: ExchangeError) -> Self {
        match e {
            ExchangeError::Order(e) => Self::Order(e),
            ExchangeError::NotTrading { .. } | ExchangeError::Account(_) => {
                Self::Slot(e.to_string())
            }
            ExchangeError::UnknownOrder(order) => Self::UnknownOrder(order),
            ExchangeError::InsufficientFunds { need, available } => {
                Self::InsufficientFunds { need, available }
            }
            ExchangeError::OutOfRange(m) => Self::OutOfRange(m),
        }
    }
}
