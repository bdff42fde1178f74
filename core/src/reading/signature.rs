//! ECDSA P-256 / SHA-256 keys and signatures over the encoded reading.

use ring::rand::SecureRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};

use super::{Reading, ReadingError};

/// A meter's signing key (P-256), loaded from PKCS#8.
pub struct MeterKey {
    pub(super) pair: EcdsaKeyPair,
}

impl std::fmt::Debug for MeterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("MeterKey")
            .field("key_id", &self.public_key().key_id())
            .finish_non_exhaustive()
    }
}

impl MeterKey {
    /// Generates a new key as a PKCS#8 v1 document (what `meter-agent keygen` writes).
    pub fn generate_pkcs8(rng: &dyn SecureRandom) -> Result<Vec<u8>, ReadingError> {
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, rng)
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|_| ReadingError::InvalidKey {
                reason: "the random number generator failed".into(),
            })
    }

    /// Loads a key from a PKCS#8 document.
    pub fn from_pkcs8(pkcs8: &[u8], rng: &dyn SecureRandom) -> Result<Self, ReadingError> {
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, rng)
            .map(|pair| Self { pair })
            .map_err(|e| ReadingError::InvalidKey {
                reason: format!("not a P-256 PKCS#8 private key: {e}"),
            })
    }

    /// The public half, to register with the market and the chain.
    pub fn public_key(&self) -> PublicKey {
        let mut sec1 = [0u8; 65];
        sec1.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(sec1)
    }

    /// Signs a reading after checking its invariants.
    pub fn sign(
        &self,
        reading: Reading,
        rng: &dyn SecureRandom,
    ) -> Result<SignedReading, ReadingError> {
        reading.validate()?;
        let sig = self
            .pair
            .sign(rng, &reading.encode())
            .map_err(|_| ReadingError::SigningFailed)?;
        let mut signature = [0u8; 64];
        signature.copy_from_slice(sig.as_ref());
        Ok(SignedReading {
            reading,
            key_id: self.public_key().key_id(),
            signature: Signature(signature),
        })
    }
}

/// A P-256 public key as a SEC1 uncompressed point: `0x04 ‖ x ‖ y`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 65]);

impl PublicKey {
    /// Wraps a SEC1 uncompressed point (65 bytes starting with `0x04`) that lies on P-256.
    ///
    /// The curve check is made here, not left to the first verification: a key that is not a
    /// point can never verify a reading, so registering one would only squat a meter id.
    pub fn from_sec1(bytes: &[u8]) -> Result<Self, ReadingError> {
        let sec1: [u8; 65] = bytes.try_into().map_err(|_| ReadingError::InvalidKey {
            reason: format!(
                "a P-256 public key is 65 bytes (uncompressed SEC1), got {}",
                bytes.len()
            ),
        })?;
        if sec1[0] != 0x04 {
            return Err(ReadingError::InvalidKey {
                reason: format!(
                    "public key must be an uncompressed point starting with 0x04, got 0x{:02x}",
                    sec1[0]
                ),
            });
        }
        if p256::PublicKey::from_sec1_bytes(&sec1).is_err() {
            return Err(ReadingError::InvalidKey {
                reason: "public key is not a point on the P-256 curve (or is the identity)".into(),
            });
        }
        Ok(Self(sec1))
    }

    /// Parses the hex form (130 hex digits, optional `0x` prefix).
    pub fn from_hex(text: &str) -> Result<Self, ReadingError> {
        let text = text.trim();
        let text = text.strip_prefix("0x").unwrap_or(text);
        let bytes = hex::decode(text).map_err(|e| ReadingError::InvalidKey {
            reason: format!("public key is not hex: {e}"),
        })?;
        Self::from_sec1(&bytes)
    }

    /// The SEC1 bytes.
    pub fn as_bytes(&self) -> &[u8; 65] {
        &self.0
    }

    /// Lower-case hex of the SEC1 bytes.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The affine x coordinate (as P256VERIFY takes it).
    pub fn x(&self) -> [u8; 32] {
        let mut x = [0u8; 32];
        x.copy_from_slice(&self.0[1..33]);
        x
    }

    /// The affine y coordinate.
    pub fn y(&self) -> [u8; 32] {
        let mut y = [0u8; 32];
        y.copy_from_slice(&self.0[33..65]);
        y
    }

    /// The short id of this key: the first 8 bytes of SHA-256 of the SEC1 point.
    pub fn key_id(&self) -> KeyId {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.0);
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest.as_ref()[..8]);
        KeyId(id)
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

/// Short identifier of a meter key, carried in every envelope so a receiver can pick the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// Parses 16 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, ReadingError> {
        let mut id = [0u8; 8];
        hex::decode_to_slice(text, &mut id).map_err(|e| ReadingError::InvalidField {
            field: "key_id",
            reason: format!("must be 16 hex digits: {e}"),
        })?;
        Ok(Self(id))
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A P-256 signature in its fixed form `r ‖ s` (32 bytes each, big-endian).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl Signature {
    /// Parses 128 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, ReadingError> {
        let mut sig = [0u8; 64];
        hex::decode_to_slice(text, &mut sig).map_err(|e| ReadingError::InvalidField {
            field: "signature",
            reason: format!("must be 128 hex digits (r ‖ s): {e}"),
        })?;
        Ok(Self(sig))
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// `r`, as P256VERIFY takes it.
    pub fn r(&self) -> [u8; 32] {
        let mut r = [0u8; 32];
        r.copy_from_slice(&self.0[..32]);
        r
    }

    /// `s`, as P256VERIFY takes it.
    pub fn s(&self) -> [u8; 32] {
        let mut s = [0u8; 32];
        s.copy_from_slice(&self.0[32..]);
        s
    }
}

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature({})", self.to_hex())
    }
}

/// A reading with the id of the key that signed it and the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedReading {
    /// The signed fields.
    pub reading: Reading,
    /// Id of the signing key.
    pub key_id: KeyId,
    /// Signature over `sha256(reading.encode())`.
    pub signature: Signature,
}

impl SignedReading {
    /// The signed bytes, rebuilt from the fields.
    pub fn encoded(&self) -> Vec<u8> {
        self.reading.encode()
    }

    /// SHA-256 of the encoding: the message hash that P256VERIFY takes on chain.
    pub fn digest(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &self.encoded()).as_ref());
        out
    }

    /// Checks that this reading was signed by `key`: the key id matches, the fields are valid,
    /// and the signature matches the encoding rebuilt from the fields.
    pub fn verify(&self, key: &PublicKey) -> Result<(), ReadingError> {
        let key_id = key.key_id();
        if self.key_id != key_id {
            return Err(ReadingError::KeyIdMismatch {
                envelope: self.key_id,
                key: key_id,
            });
        }
        self.reading.validate()?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.as_bytes())
            .verify(&self.encoded(), &self.signature.0)
            .map_err(|_| ReadingError::BadSignature { key: key_id })
    }
}
