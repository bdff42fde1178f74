//! Why the market refused a request or failed, with a stable reason per variant for the
//! rejection counters.

use super::*;

/// Why the market refused a request.
#[derive(Debug, thiserror::Error)]
pub enum MarketError {
    /// The exchange refused the request: the `core` rules, a slot that does not trade, an
    /// order that is not the caller's, funds, or an amount out of range.
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
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
    /// A deposit or withdrawal with a reference already used for a different amount.
    #[error("reference {0:?} was already used for a different amount")]
    ReferenceReused(String),
    /// The database failed; the slot's book was rebuilt from the log.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl MarketError {
    /// An amount or quantity beyond what the engine can represent or allows.
    pub(crate) fn out_of_range(message: impl Into<String>) -> Self {
        Self::Exchange(ExchangeError::OutOfRange(message.into()))
    }

    /// A stable name of the reason (a metrics label).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Exchange(e) => e.reason(),
            Self::Settlement(_) => "settlement",
            Self::Stopped(_) => "stopped",
            Self::Settings(_) => "invalid_settings",
            Self::StoredSettings(_) => "stored_settings",
            Self::ReferenceReused(_) => "reference_reused",
            Self::Store(_) => "storage",
        }
    }
}
