//! The meter key's signature that registers a meter (or rotates its key) on chain.
//!
//! The contract tells what it will verify (`registrationMessage`); the key signs only a
//! [`KeyStatement`] built here from what the operator asked for, and only if its encoding is
//! byte for byte the contract's message — a node that lied could otherwise make the meter key
//! sign something else.

use alloy::primitives::{Address, Bytes};
use gridshare_contracts::chain::{Chain, ChainError};
use gridshare_contracts::staking::{StakingClient, text_id};
use gridshare_core::reading::{KeyStatement, MeterId, MeterKey};
use ring::rand::SystemRandom;

/// Why a registration could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The meter id cannot be a reading's meter id.
    #[error("meter id: {0}")]
    MeterId(String),
    /// Asking the contract failed.
    #[error("asking the staking contract for the registration message: {0}")]
    Chain(#[from] ChainError),
    /// The contract's message is not the statement the operator asked for.
    #[error(
        "the staking contract asked the key to sign something other than a registration of {meter} for {owner}; refusing"
    )]
    UnexpectedMessage {
        /// The meter.
        meter: String,
        /// The owner.
        owner: Address,
    },
    /// The key could not sign.
    #[error("signing with the meter key: {0}")]
    Signing(String),
}

/// The meter key's signature registering `meter` for `owner` (or, with `rotation`, making the
/// key the meter's new one) on the staking contract `client` talks to.
pub async fn sign_registration<C: Chain>(
    client: &StakingClient<C>,
    key: &MeterKey,
    meter: &str,
    owner: Address,
    rotation: bool,
) -> Result<Bytes, RegistrationError> {
    let meter_id = MeterId::new(meter).map_err(|e| RegistrationError::MeterId(e.to_string()))?;
    let id = text_id(meter).map_err(RegistrationError::MeterId)?;
    let message = client.registration_message(id, owner, rotation).await?;
    let unexpected = || RegistrationError::UnexpectedMessage {
        meter: meter.to_owned(),
        owner,
    };
    if message.len() != gridshare_core::reading::STATEMENT_LEN {
        return Err(unexpected());
    }
    let word = |range: std::ops::Range<usize>| -> [u8; 8] {
        message[range].try_into().unwrap_or_default()
    };
    let statement = KeyStatement {
        rotation,
        chain_id: u64::from_be_bytes(word(56..64)),
        contract: client.address().into_array(),
        meter_id,
        owner: owner.into_array(),
        nonce: u64::from_be_bytes(word(136..144)),
    };
    if statement.encode().as_slice() != message.as_ref() {
        return Err(unexpected());
    }
    let signature = key
        .sign_statement(&statement, &SystemRandom::new())
        .map_err(|e| RegistrationError::Signing(e.to_string()))?;
    Ok(Bytes::copy_from_slice(&signature.0))
}
