//! Meters (registration, the operator's approval with capacities and device identity), the
//! households' automatic trading rules for them, and the MQTT credentials the broker checks
//! their agents' logins against.

use super::{Store, StoreError, checked_i64, i64_of, unsigned, unsigned_opt};
use crate::ingest::Approval;

/// A registered meter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterRow {
    /// The meter id.
    pub meter_id: String,
    /// Its owner.
    pub account_id: i64,
    /// SEC1 hex of its public key.
    pub public_key: String,
    /// When it was registered, ms since the epoch.
    pub created_ms: i64,
    /// What the operator approved it with; `None` while pending.
    pub approval: Option<Approval>,
    /// When it was approved, ms since the epoch.
    pub approved_ms: Option<i64>,
}

/// The columns [`StoredMeter`] reads.
const METER_COLUMNS: &str = "meter_id, account_id, public_key, created_ms, approved_ms, \
     export_capacity_w, import_capacity_w, manufacturer, model, serial";

/// A row of `meters` as stored: the approval's columns are NULL while the meter is pending.
#[derive(sqlx::FromRow)]
struct StoredMeter {
    meter_id: String,
    account_id: i64,
    public_key: String,
    created_ms: i64,
    approved_ms: Option<i64>,
    export_capacity_w: Option<i64>,
    import_capacity_w: Option<i64>,
    manufacturer: Option<String>,
    model: Option<String>,
    serial: Option<String>,
}

impl TryFrom<StoredMeter> for MeterRow {
    type Error = StoreError;

    /// Checked: an approved meter has capacities that fit a `u32` and a whole device identity.
    fn try_from(r: StoredMeter) -> Result<Self, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt(format!("meter {}: {what}", r.meter_id));
        let approval = match r.approved_ms {
            None => None,
            Some(_) => {
                let capacity = |v: Option<i64>, column: &str| -> Result<u32, StoreError> {
                    let v = v.ok_or_else(|| corrupt(format!("approved without {column}")))?;
                    u32::try_from(v).map_err(|_| corrupt(format!("{column} {v} W out of range")))
                };
                let text = |v: &Option<String>, column: &str| {
                    v.clone()
                        .ok_or_else(|| corrupt(format!("approved without {column}")))
                };
                let device = gridshare_core::reading::DeviceIdentity::new(
                    text(&r.manufacturer, "meters.manufacturer")?,
                    text(&r.model, "meters.model")?,
                    text(&r.serial, "meters.serial")?,
                )
                .map_err(|e| corrupt(format!("device identity: {e}")))?;
                Some(Approval {
                    export_capacity_w: capacity(r.export_capacity_w, "meters.export_capacity_w")?,
                    import_capacity_w: capacity(r.import_capacity_w, "meters.import_capacity_w")?,
                    device,
                })
            }
        };
        Ok(Self {
            meter_id: r.meter_id,
            account_id: r.account_id,
            public_key: r.public_key,
            created_ms: r.created_ms,
            approval,
            approved_ms: r.approved_ms,
        })
    }
}

/// A household's automatic trading rule for one meter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TradingRule {
    /// The meter.
    pub meter_id: String,
    /// Its owner.
    pub account_id: i64,
    /// Sell the forecast surplus, asking at least this per kWh (none: never sell).
    pub sell_at_least: Option<u64>,
    /// Buy the forecast need, bidding at most this per kWh (none: never buy).
    pub buy_at_most: Option<u64>,
    /// Sell nothing while the battery is below this state of charge, basis points.
    pub keep_battery_above_bp: Option<u16>,
}

/// A row of `trading_rules` as stored.
#[derive(sqlx::FromRow)]
struct StoredRule {
    meter_id: String,
    account_id: i64,
    sell_at_least: Option<i64>,
    buy_at_most: Option<i64>,
    keep_battery_above: Option<i64>,
}

impl TryFrom<StoredRule> for TradingRule {
    type Error = StoreError;

    fn try_from(r: StoredRule) -> Result<Self, StoreError> {
        Ok(Self {
            sell_at_least: unsigned_opt(r.sell_at_least, "trading_rules.sell_at_least")?,
            buy_at_most: unsigned_opt(r.buy_at_most, "trading_rules.buy_at_most")?,
            keep_battery_above_bp: r
                .keep_battery_above
                .map(|v| {
                    u16::try_from(v).map_err(|_| {
                        StoreError::Corrupt(format!(
                            "trading_rules.keep_battery_above {v} is out of range"
                        ))
                    })
                })
                .transpose()?,
            meter_id: r.meter_id,
            account_id: r.account_id,
        })
    }
}

impl Store {
    /// Registers a meter; `Conflict` if the id is taken.
    pub async fn register_meter(
        &self,
        meter_id: &str,
        account_id: i64,
        public_key: &str,
        key_id: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        // `SELECT 1` answers with a row or none; its value is not read (its integer type
        // differs between the dialects).
        let key_taken = sqlx::query("SELECT 1 FROM meters WHERE public_key = $1")
            .bind(public_key)
            .fetch_optional(&self.pool)
            .await?
            .is_some();
        if key_taken {
            return Err(StoreError::Conflict(
                "a meter with this public key (each meter needs a key of its own)".into(),
            ));
        }
        let done = sqlx::query(
            "INSERT INTO meters (meter_id, account_id, public_key, key_id, created_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(meter_id)
        .bind(account_id)
        .bind(public_key)
        .bind(key_id)
        .bind(i64_of(now_ms))
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("meter {meter_id:?}")));
        }
        Ok(())
    }

    /// Records the operator's approval of a registered meter (or changes it). `false` if no
    /// such meter.
    pub async fn approve_meter(
        &self,
        meter_id: &str,
        approval: &Approval,
        by: i64,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE meters SET approved_ms = $2, approved_by = $3, export_capacity_w = $4, \
             import_capacity_w = $5, manufacturer = $6, model = $7, serial = $8 WHERE meter_id = $1",
        )
        .bind(meter_id)
        .bind(checked_i64(now_ms, "time")?)
        .bind(by)
        .bind(i64::from(approval.export_capacity_w))
        .bind(i64::from(approval.import_capacity_w))
        .bind(&approval.device.manufacturer)
        .bind(&approval.device.model)
        .bind(&approval.device.serial)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes a meter registration that was never approved and has no readings (the
    /// operator refused it). `false` if there is no such pending meter.
    pub async fn delete_pending_meter(&self, meter_id: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM trading_rules WHERE meter_id = $1")
            .bind(meter_id)
            .execute(&mut *tx.0)
            .await?;
        let done = sqlx::query(
            "DELETE FROM meters WHERE meter_id = $1 AND approved_ms IS NULL \
             AND NOT EXISTS (SELECT 1 FROM readings WHERE readings.meter_id = meters.meter_id)",
        )
        .bind(meter_id)
        .execute(&mut *tx.0)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// How many meters an account has registered (pending or approved).
    pub async fn meter_count(&self, account_id: i64) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM meters WHERE account_id = $1")
            .bind(account_id)
            .fetch_one(&self.pool)
            .await?;
        unsigned(n, "COUNT(meters)")
    }

    /// Every registered meter, pending or approved (to load the key registry at start).
    pub async fn meters(&self) -> Result<Vec<MeterRow>, StoreError> {
        let rows: Vec<StoredMeter> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {METER_COLUMNS} FROM meters ORDER BY meter_id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(MeterRow::try_from).collect()
    }

    /// One registered meter.
    pub async fn meter(&self, meter_id: &str) -> Result<Option<MeterRow>, StoreError> {
        let row: Option<StoredMeter> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {METER_COLUMNS} FROM meters WHERE meter_id = $1"
        )))
        .bind(meter_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(MeterRow::try_from).transpose()
    }

    /// The meter's owner, if registered.
    pub async fn meter_owner(&self, meter_id: &str) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT account_id FROM meters WHERE meter_id = $1")
                .bind(meter_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Sets (replaces) a meter's trading rule.
    pub async fn set_rule(&self, rule: &TradingRule, now_ms: u64) -> Result<(), StoreError> {
        let opt = |v: Option<u64>| v.map(i64_of);
        sqlx::query(
            "INSERT INTO trading_rules (meter_id, account_id, sell_at_least, buy_at_most, keep_battery_above, updated_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (meter_id) DO UPDATE SET \
             account_id = excluded.account_id, sell_at_least = excluded.sell_at_least, \
             buy_at_most = excluded.buy_at_most, keep_battery_above = excluded.keep_battery_above, \
             updated_ms = excluded.updated_ms",
        )
        .bind(rule.meter_id.as_str())
        .bind(rule.account_id)
        .bind(opt(rule.sell_at_least))
        .bind(opt(rule.buy_at_most))
        .bind(rule.keep_battery_above_bp.map(i64::from))
        .bind(i64_of(now_ms))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a meter's trading rule; whether there was one.
    pub async fn delete_rule(&self, meter_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM trading_rules WHERE meter_id = $1")
            .bind(meter_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Every trading rule.
    pub async fn rules(&self) -> Result<Vec<TradingRule>, StoreError> {
        let rows: Vec<StoredRule> = sqlx::query_as(
            "SELECT meter_id, account_id, sell_at_least, buy_at_most, keep_battery_above \
             FROM trading_rules ORDER BY meter_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(TradingRule::try_from).collect()
    }

    /// Whether a meter with this id is registered (pending or approved).
    pub async fn meter_exists(&self, meter_id: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query("SELECT 1 FROM meters WHERE meter_id = $1")
            .bind(meter_id)
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    /// Stores MQTT credentials for `meter_id` (user name = the meter id) by the hash of their
    /// password, replacing earlier ones and lifting a revocation.
    pub async fn issue_mqtt_credentials(
        &self,
        meter_id: &str,
        password_hash: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO mqtt_credentials (username, password_hash, meter_id, created_ms, revoked_ms) \
             VALUES ($1, $2, $3, $4, NULL) \
             ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash, \
             meter_id = excluded.meter_id, created_ms = excluded.created_ms, revoked_ms = NULL",
        )
        .bind(meter_id)
        .bind(password_hash)
        .bind(meter_id)
        .bind(i64_of(now_ms))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Revokes the meter's MQTT credentials; whether there were live ones.
    pub async fn revoke_mqtt_credentials(
        &self,
        meter_id: &str,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE mqtt_credentials SET revoked_ms = $1 WHERE username = $2 AND revoked_ms IS NULL",
        )
        .bind(i64_of(now_ms))
        .bind(meter_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The stored password hash of a user with live (unrevoked) MQTT credentials.
    pub async fn live_mqtt_password_hash(
        &self,
        username: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT password_hash FROM mqtt_credentials WHERE username = $1 AND revoked_ms IS NULL",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// User names whose MQTT credentials were issued or revoked at or after `since_ms`.
    pub async fn mqtt_credentials_changed_since(
        &self,
        since_ms: u64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT username FROM mqtt_credentials WHERE created_ms >= $1 OR revoked_ms >= $1",
        )
        .bind(i64_of(since_ms))
        .fetch_all(&self.pool)
        .await?)
    }
}
