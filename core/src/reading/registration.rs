//! What a meter key signs besides readings: that it belongs to a meter id and an owner on
//! one staking contract of one chain. The staking contract checks this signature before it
//! registers a meter or rotates its key, so a registration cannot be copied from the mempool
//! for another owner, replayed on another chain or contract, or made for someone else's key.
//!
//! Layout (144 bytes, what Solidity's `abi.encodePacked` builds): domain tag (32), chain id
//! (uint256, 32), contract address (20), meter id (32, as in a reading), owner address (20),
//! registration nonce (u64, 8). The signature is ECDSA P-256 over its SHA-256, like a reading's;
//! the tags differ from the reading tag, and the length from a reading's, so no statement can
//! be read as a reading.

use super::{MeterId, MeterKey, ReadingError, Signature};

/// Tag of a registration: `bytes32("GRIDSHARE/METER-REGISTRATION")`.
pub const REGISTRATION_TAG: [u8; 32] = *b"GRIDSHARE/METER-REGISTRATION\0\0\0\0";
/// Tag of a key rotation (signed by the new key): `bytes32("GRIDSHARE/METER-KEY-ROTATION")`.
pub const ROTATION_TAG: [u8; 32] = *b"GRIDSHARE/METER-KEY-ROTATION\0\0\0\0";
/// Length of an encoded statement.
pub const STATEMENT_LEN: usize = 32 + 32 + 20 + 32 + 20 + 8;

/// "This key is meter `meter_id`'s, owned by `owner`, on `contract` of chain `chain_id`."
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatement {
    /// Registration (`false`) or key rotation (`true`).
    pub rotation: bool,
    /// EVM chain id.
    pub chain_id: u64,
    /// The staking contract's address.
    pub contract: [u8; 20],
    /// The meter id, as readings carry it.
    pub meter_id: MeterId,
    /// The owner's address.
    pub owner: [u8; 20],
    /// The contract's registration nonce for this meter id (registrations and rotations so far).
    pub nonce: u64,
}

impl KeyStatement {
    /// The exact bytes that are signed.
    pub fn encode(&self) -> [u8; STATEMENT_LEN] {
        let mut out = [0u8; STATEMENT_LEN];
        out[..32].copy_from_slice(if self.rotation {
            &ROTATION_TAG
        } else {
            &REGISTRATION_TAG
        });
        out[56..64].copy_from_slice(&self.chain_id.to_be_bytes());
        out[64..84].copy_from_slice(&self.contract);
        out[84..116].copy_from_slice(&self.meter_id.to_bytes32());
        out[116..136].copy_from_slice(&self.owner);
        out[136..].copy_from_slice(&self.nonce.to_be_bytes());
        out
    }
}

impl MeterKey {
    /// Signs a registration or key-rotation statement.
    pub fn sign_statement(
        &self,
        statement: &KeyStatement,
        rng: &dyn ring::rand::SecureRandom,
    ) -> Result<Signature, ReadingError> {
        let sig = self
            .pair
            .sign(rng, &statement.encode())
            .map_err(|_| ReadingError::SigningFailed)?;
        let mut signature = [0u8; 64];
        signature.copy_from_slice(sig.as_ref());
        Ok(Signature(signature))
    }
}

impl MeterId {
    /// The id as a reading encodes it: ASCII, right-padded with zero bytes to 32.
    pub fn to_bytes32(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        let bytes = self.as_str().as_bytes();
        out[..bytes.len()].copy_from_slice(bytes);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::PublicKey;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

    fn statement(rotation: bool) -> KeyStatement {
        KeyStatement {
            rotation,
            chain_id: 31_337,
            contract: [0x11; 20],
            meter_id: MeterId::new("home-07").expect("id"),
            owner: [0x22; 20],
            nonce: 3,
        }
    }

    #[test]
    fn layout_matches_abi_encode_packed() {
        let bytes = statement(false).encode();
        assert_eq!(&bytes[..28], b"GRIDSHARE/METER-REGISTRATION");
        assert_eq!(bytes[32..56], [0u8; 24]);
        assert_eq!(bytes[56..64], 31_337u64.to_be_bytes());
        assert_eq!(&bytes[84..91], b"home-07");
        assert_eq!(bytes[143], 3);
        assert_ne!(statement(true).encode()[..32], bytes[..32]);
    }

    #[test]
    fn signature_verifies_with_the_public_key_and_only_for_its_statement() {
        let rng = SystemRandom::new();
        let key =
            MeterKey::from_pkcs8(&MeterKey::generate_pkcs8(&rng).expect("gen"), &rng).expect("key");
        let sig = key.sign_statement(&statement(false), &rng).expect("sign");
        let public: PublicKey = key.public_key();
        let verifier = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public.as_bytes());
        verifier
            .verify(&statement(false).encode(), &sig.0)
            .expect("verifies");
        let mut other = statement(false);
        other.owner = [0x33; 20];
        assert!(verifier.verify(&other.encode(), &sig.0).is_err());
    }
}
