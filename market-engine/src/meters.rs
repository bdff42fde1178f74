//! Meters: a household registers its meter's public key; the community operator approves the
//! meter with its rated capacity and the device identity it was installed with. Only an
//! approved meter's readings count, never faster than its capacity allows (see
//! [`crate::ingest::check_step`]) and never more per slot than its capacity × the slot
//! (settlement).
//!
//! Design: the database and the ingest's [`KeyRegistry`] change together, here and nowhere
//! else, so the API, the demo, the start-up and the tests cannot disagree on what a meter is.

use gridshare_core::reading::{DeviceIdentity, MeterId, PublicKey};

use crate::ingest::{Approval, KeyRegistry, RegisteredMeter};
use crate::store::{MeterRow, Store, StoreError};

/// Largest rated capacity an approval may give, W (100 MW: far above any household, so only
/// a typo is refused; the demo's accelerated clock needs its capacities scaled up too).
pub const MAX_CAPACITY_W: u32 = 100_000_000;

/// Why a meter could not be registered, approved or refused.
#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    /// The meter id is not a valid id.
    #[error("meter_id: {0}")]
    InvalidId(String),
    /// The public key is malformed or not a P-256 point.
    #[error("public_key: {0}")]
    InvalidKey(String),
    /// The account has as many meters as the community allows.
    #[error(
        "this account already has {max} meters, the most the community allows per account; \
         ask the operator if you need more"
    )]
    TooMany {
        /// The limit.
        max: u32,
    },
    /// The id or the key is already registered.
    #[error("{0} is already registered")]
    Taken(String),
    /// No such meter (or none that is pending, for a refusal).
    #[error("{0}")]
    NotFound(String),
    /// An approval value is out of range.
    #[error("{field}: {reason}")]
    InvalidApproval {
        /// The request field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The database failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for MeterError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => Self::Taken(what),
            other => Self::Store(other),
        }
    }
}

impl MeterError {
    /// The request field at fault, if one is.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::InvalidId(_) | Self::Taken(_) => Some("meter_id"),
            Self::InvalidKey(_) => Some("public_key"),
            Self::InvalidApproval { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// What the ingest needs of a stored meter.
pub fn registered(row: &MeterRow) -> Result<RegisteredMeter, StoreError> {
    let key = PublicKey::from_hex(&row.public_key).map_err(|e| {
        StoreError::Corrupt(format!(
            "meter {}: stored public key is invalid: {e}",
            row.meter_id
        ))
    })?;
    Ok(RegisteredMeter {
        key,
        account: row.account_id,
        approval: row.approval.clone(),
    })
}

/// The registry of every stored meter (at start-up).
pub async fn load_registry(store: &Store) -> Result<KeyRegistry, StoreError> {
    let keys = KeyRegistry::default();
    for row in store.meters().await? {
        keys.insert(&row.meter_id, registered(&row)?);
    }
    Ok(keys)
}

/// Registers `account`'s meter `meter_id` with its public key (hex SEC1), pending approval.
pub async fn register(
    store: &Store,
    keys: &KeyRegistry,
    account: i64,
    meter_id: &str,
    public_key: &str,
    max_per_account: u32,
    now_ms: u64,
) -> Result<(MeterId, PublicKey), MeterError> {
    let meter =
        MeterId::new(meter_id.to_owned()).map_err(|e| MeterError::InvalidId(reason_of(&e)))?;
    let key = PublicKey::from_hex(public_key).map_err(|e| MeterError::InvalidKey(reason_of(&e)))?;
    if store.meter_count(account).await? >= u64::from(max_per_account) {
        return Err(MeterError::TooMany {
            max: max_per_account,
        });
    }
    store
        .register_meter(
            meter.as_str(),
            account,
            &key.to_hex(),
            &key.key_id().to_string(),
            now_ms,
        )
        .await?;
    keys.insert(
        meter.as_str(),
        RegisteredMeter {
            key,
            account,
            approval: None,
        },
    );
    Ok((meter, key))
}

/// What an operator sends to approve a meter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRequest {
    /// Rated export power, W.
    pub export_capacity_w: u32,
    /// Rated import power, W.
    pub import_capacity_w: u32,
    /// Manufacturer, as the device reports it (SunSpec model 1 `Mn`).
    pub manufacturer: String,
    /// Model (`Md`).
    pub model: String,
    /// Serial number (`SN`).
    pub serial: String,
}

impl ApprovalRequest {
    /// The approval, checked.
    pub fn checked(&self) -> Result<Approval, MeterError> {
        for (field, value) in [
            ("export_capacity_w", self.export_capacity_w),
            ("import_capacity_w", self.import_capacity_w),
        ] {
            if value > MAX_CAPACITY_W {
                return Err(MeterError::InvalidApproval {
                    field,
                    reason: format!(
                        "{value} W is above the largest capacity of {MAX_CAPACITY_W} W"
                    ),
                });
            }
        }
        if self.export_capacity_w == 0 && self.import_capacity_w == 0 {
            return Err(MeterError::InvalidApproval {
                field: "import_capacity_w",
                reason: "a meter with neither import nor export capacity can never be settled"
                    .into(),
            });
        }
        let device = DeviceIdentity::new(
            self.manufacturer.clone(),
            self.model.clone(),
            self.serial.clone(),
        )
        .map_err(|e| {
            let text = reason_of(&e);
            let field = ["manufacturer", "model", "serial"]
                .into_iter()
                .find(|f| text.contains(f))
                .unwrap_or("serial");
            MeterError::InvalidApproval {
                field,
                reason: text,
            }
        })?;
        Ok(Approval {
            export_capacity_w: self.export_capacity_w,
            import_capacity_w: self.import_capacity_w,
            device,
        })
    }
}

/// The operator approves (or re-approves, with new values) a registered meter; its readings
/// count from now on. Returns the stored meter.
pub async fn approve(
    store: &Store,
    keys: &KeyRegistry,
    meter_id: &str,
    approval: &Approval,
    operator: i64,
    now_ms: u64,
) -> Result<MeterRow, MeterError> {
    if !store
        .approve_meter(meter_id, approval, operator, now_ms)
        .await?
    {
        return Err(MeterError::NotFound(format!(
            "no meter {meter_id:?} is registered"
        )));
    }
    let row = store.meter(meter_id).await?.ok_or_else(|| {
        MeterError::NotFound(format!("meter {meter_id:?} disappeared while approving"))
    })?;
    keys.insert(meter_id, registered(&row)?);
    tracing::info!(target: "meters", meter = meter_id, export_w = approval.export_capacity_w, import_w = approval.import_capacity_w, "meter approved");
    Ok(row)
}

/// The operator refuses a pending registration (a meter id squatted, a key that is not the
/// installation's): it is deleted, and the id and key are free again.
pub async fn refuse(store: &Store, keys: &KeyRegistry, meter_id: &str) -> Result<(), MeterError> {
    if !store.delete_pending_meter(meter_id).await? {
        return Err(MeterError::NotFound(format!(
            "no pending meter {meter_id:?} without readings; an approved meter stays on record"
        )));
    }
    keys.remove(meter_id);
    Ok(())
}

/// The message of a reading-format error without its field prefix.
fn reason_of(e: &gridshare_core::reading::ReadingError) -> String {
    e.to_string()
}
