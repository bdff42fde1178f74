//! Passwords: Argon2id hashing and verification at the OWASP baseline (19 MiB, 2 passes,
//! 1 lane) in work areas allocated once and reused ([`WorkAreas`]), and the policy a new
//! password must meet. How many hashes run at once, and who may try, is the login guard's
//! ([`super::guard`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use argon2::password_hash::{Output, ParamsString, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use ring::rand::{SecureRandom, SystemRandom};

/// Longest password accepted (at login too: a longer one is refused before any hashing).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Shortest password a new account may have, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// Argon2id of a random password nobody knows, with the parameters [`hash_password`] uses: a
/// login for an unknown name is verified against it, so it costs what a wrong password costs.
pub(super) const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$kL7V/DLzXZNjbo/L2so7Lg$oN0eXhmpEw24R80PzwW9LHCdgMtALfwzoIoXrMEGDFA";

/// Leaked passwords new accounts may not use.
const COMMON_PASSWORDS: &str = include_str!("common-passwords.txt");

/// Argon2's work memory (19 MiB at the default parameters), one area per hashing slot,
/// allocated at first use and reused by every later hash.
///
/// Design: letting Argon2 allocate its own memory per hash kept every freed area resident
/// (glibc does not hand a freed 19 MiB block back, nor reuse it for the next one from the same
/// thread): each sequential login grew the engine by 19 MiB, measured, and 128 parallel ones by
/// 2.4 GB. Areas of our own cost the same memory once and never more.
#[derive(Debug, Default)]
pub struct WorkAreas {
    free: Mutex<Vec<Vec<Block>>>,
    bytes: AtomicU64,
}

impl WorkAreas {
    pub(super) const fn new() -> Self {
        Self {
            free: Mutex::new(Vec::new()),
            bytes: AtomicU64::new(0),
        }
    }

    /// Bytes the areas hold, in use or not.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Runs `work` in a free area (a new one when all are in use).
    pub(super) fn with<T>(&self, work: impl FnOnce(&mut Vec<Block>) -> T) -> T {
        let mut area = self
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        let before = area.capacity();
        let out = work(&mut area);
        let grown = area.capacity().saturating_sub(before) * std::mem::size_of::<Block>();
        self.bytes
            .fetch_add(u64::try_from(grown).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(area);
        out
    }
}

/// Work areas of [`hash_password`] (a demo creating a dozen accounts reuses one).
static SETUP_AREAS: WorkAreas = WorkAreas::new();

/// Argon2 of `password` and `salt` into `out`, in `area` (grown to the parameters' size).
fn argon2_into(
    argon: &Argon2<'_>,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
    area: &mut Vec<Block>,
) -> argon2::password_hash::Result<()> {
    let blocks = argon.params().block_count();
    if area.len() < blocks {
        area.resize(blocks, Block::default());
    }
    Ok(argon.hash_password_into_with_memory(password, salt, out, &mut area[..blocks])?)
}

/// A new Argon2id hash (default parameters, random salt) as a PHC string.
pub(super) fn hash_in(password: &str, area: &mut Vec<Block>) -> Result<String, String> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| "no randomness".to_owned())?;
    let salt_string = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    let argon = Argon2::default();
    let output = Output::init_with(Params::DEFAULT_OUTPUT_LEN, |out| {
        argon2_into(&argon, password.as_bytes(), &salt, out, area)
    })
    .map_err(|e| e.to_string())?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(argon.params()).map_err(|e| e.to_string())?,
        salt: Some(salt_string.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `stored` (with its algorithm, version, parameters
/// and salt); the comparison takes constant time.
pub(super) fn verify_in(stored: &str, password: &str, area: &mut Vec<Block>) -> bool {
    let Ok(hash) = PasswordHash::new(stored) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(version), Ok(params)) = (
        Algorithm::try_from(hash.algorithm),
        hash.version
            .map_or(Ok(Version::default()), Version::try_from),
        Params::try_from(&hash),
    ) else {
        return false;
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let argon = Argon2::new(algorithm, version, params);
    Output::init_with(expected.len(), |out| {
        argon2_into(&argon, password.as_bytes(), salt, out, area)
    })
    .is_ok_and(|computed| computed == expected)
}

/// Whether a new account's password is acceptable: at least [`MIN_PASSWORD_CHARS`] characters,
/// at most [`MAX_PASSWORD_BYTES`] bytes, not one character repeated, not the account's name,
/// not one of the most common leaked passwords.
pub fn password_policy(name: &str, password: &str) -> Result<(), String> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!("password: at most {MAX_PASSWORD_BYTES} bytes"));
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!(
            "password: at least {MIN_PASSWORD_CHARS} characters (a few words make one easy to remember)"
        ));
    }
    let mut chars = password.chars();
    if let Some(first) = chars.next()
        && chars.all(|c| c == first)
    {
        return Err("password: not one character repeated".into());
    }
    let lower = password.trim().to_lowercase();
    if lower == name.trim().to_lowercase() {
        return Err("password: must not be the account name".into());
    }
    if COMMON_PASSWORDS
        .lines()
        .filter(|l| !l.starts_with('#'))
        .any(|common| common == lower)
    {
        return Err("password: one of the most common leaked passwords; choose another".into());
    }
    Ok(())
}

/// Hashes a password with Argon2id and a random salt (PHC string format), off the async
/// workers. For tools and set-up (the operator command, the demo); requests go through the
/// [`super::guard::Auth`] guard's capacity instead.
pub async fn hash_password(password: &str) -> Result<String, String> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || SETUP_AREAS.with(|area| hash_in(&password, area)))
        .await
        .map_err(|e| e.to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dummy_hash_costs_what_a_real_one_costs() {
        let dummy = PasswordHash::new(DUMMY_HASH).unwrap();
        let real = hash_in("some password of ours", &mut Vec::new()).unwrap();
        let real = PasswordHash::new(&real).unwrap();
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(dummy.params, real.params);
    }

    #[test]
    fn hashes_in_our_work_areas_are_standard_argon2id() {
        use argon2::{PasswordHasher, PasswordVerifier};
        let mut area = Vec::new();
        let ours = hash_in("a passphrase of ours", &mut area).unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"a passphrase of ours", &parsed)
                .is_ok()
        );
        assert!(verify_in(&ours, "a passphrase of ours", &mut area));
        assert!(!verify_in(&ours, "a passphrase of yours", &mut area));
        // Hashes stored by earlier versions (argon2's own allocation) verify in the areas.
        let salt = SaltString::encode_b64(b"sixteen byte salt").unwrap();
        let theirs = Argon2::default()
            .hash_password(b"an older passphrase", &salt)
            .unwrap()
            .to_string();
        assert!(verify_in(&theirs, "an older passphrase", &mut area));
        assert!(!verify_in(&theirs, "an older passphrasE", &mut area));
        assert!(!verify_in("not a hash", "an older passphrase", &mut area));
    }

    #[test]
    fn weak_passwords_are_refused() {
        for weak in [
            "short",
            "aaaaaaaaaaaaaaaa",
            "home-01-home-01",
            "Password1234",
            "correct horse battery staple",
        ] {
            assert!(password_policy("home-01-home-01", weak).is_err(), "{weak}");
        }
        assert!(password_policy("home-01", &"x".repeat(1025)).is_err());
        assert!(password_policy("home-01", "demo-password").is_ok());
        assert!(password_policy("home-01", "correct horse battery").is_ok());
    }
}
