//! Meters' MQTT credentials in the engine's database (`mqtt_credentials`): issued when the
//! community operator approves a meter, replaced when issued again, revoked on demand.
//!
//! Design: the password is 32 random bytes (hex), so a plain SHA-256 of it is as strong as a
//! slow password hash and costs microseconds at every CONNECT; argon2 would put tens of
//! milliseconds of CPU on each reconnect of thousands of meters after an outage. The hash is
//! stored as lowercase hex, which EMQX's built-in `sha256` (no salt) password check reads as is.

use crate::pipeline::now_ms;
use crate::store::{Store, StoreError};
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};

/// Why credentials could not be issued or checked.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No meter has this id: credentials are issued only for registered meters.
    #[error("meter {0:?} is not registered")]
    UnknownMeter(String),
    /// The system's random number generator failed.
    #[error("no randomness available for a password")]
    Random,
}

/// A fresh random secret: 32 bytes as 64 hex characters.
pub fn random_secret() -> Result<String, CredentialError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CredentialError::Random)?;
    Ok(hex::encode(bytes))
}

/// The stored form of a password: SHA-256, lowercase hex.
pub fn password_hash(password: &str) -> String {
    hex::encode(digest(&SHA256, password.as_bytes()))
}

/// Issues MQTT credentials for `meter_id` (user name = the meter id) and returns the password,
/// which is not stored and cannot be shown again. Issuing again replaces the old password
/// (and lifts a revocation); a broker session logged in with the old one is cut within
/// seconds by the embedded broker.
pub async fn issue_meter_credentials(
    store: &Store,
    meter_id: &str,
) -> Result<String, CredentialError> {
    if !store.meter_exists(meter_id).await? {
        return Err(CredentialError::UnknownMeter(meter_id.to_owned()));
    }
    let password = random_secret()?;
    store
        .issue_mqtt_credentials(meter_id, &password_hash(&password), now_ms())
        .await?;
    Ok(password)
}

/// Revokes the meter's MQTT credentials; whether there were live ones. The embedded broker
/// refuses the next login and cuts an open session within seconds.
pub async fn revoke_meter_credentials(
    store: &Store,
    meter_id: &str,
) -> Result<bool, CredentialError> {
    Ok(store.revoke_mqtt_credentials(meter_id, now_ms()).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_hashed_as_hex_sha256() {
        let a = random_secret().unwrap();
        let b = random_secret().unwrap();
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        // echo -n abc | sha256sum
        assert_eq!(
            password_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
