//! Every account's chain address, from one place ([`Custody::address`]): settlement batches,
//! their trade leaves, the proof document and `GET /api/v1/me` all ask it.
//!
//! A household without a wallet of its own (every household, until it links one) has a
//! custodial key: a secp256k1 key the engine derives for it from one master secret, so the
//! engine can open its account on chain (an EIP-712 `OpenAccount` signature, submitted with
//! `openAccountFor`) and the household can later take its key out and use it in any wallet.
//! The utility (account −1) and the grid operator (−2) settle to the addresses the operator
//! configures (`[chain] utility_address`, `grid_operator_address`), or by default to custodial
//! keys of the engine as well, so that a newcomer's batch is never refused for an account
//! nobody opened.
//!
//! Design: the master secret is 32 random bytes, held in the environment variable
//! `[chain] custody_key_env` (hex), or else in the file `[chain] custody_key_file` (default:
//! beside the chain's state file, `*.custody.key`), which the engine creates on first start
//! with mode 0600 (atomically: two engines starting at once read the same secret) and says so
//! in its log. An account's key is `keccak256("gridshare-custody-v1" ‖ master ‖ id ‖ n)`,
//! the first `n` that is a valid secp256k1 scalar: nothing secret is stored per account or in
//! the database (a database dump reveals no key), the keys and addresses are the same after
//! every restart, and they differ per account because keccak256 does. What protects the
//! custodial money is therefore the master secret: whoever reads that file (or the engine's
//! environment) controls every custodial account, exactly as whoever holds the operator key
//! can settle batches — which is why a household should export its key and move to a wallet
//! of its own, and why the file is never world-readable. Losing it loses the custodial
//! accounts: back it up with the operator key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use alloy::primitives::{Address, B256, keccak256};
use alloy::signers::local::PrivateKeySigner;

use super::{ChainConfig, SettlerError};

/// The engine-held master secret and the addresses configured for the utility and the grid
/// operator: every account's address.
pub struct Custody {
    master: [u8; 32],
    utility: Option<Address>,
    grid_operator: Option<Address>,
    /// Addresses derived so far, both ways (deriving one costs a curve multiplication).
    cache: Mutex<(HashMap<i64, Address>, HashMap<Address, i64>)>,
    /// Wallets households linked as their addresses, both ways ([`super::link`]).
    links: std::sync::RwLock<(HashMap<i64, Address>, HashMap<Address, i64>)>,
}

impl std::fmt::Debug for Custody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Custody")
            .field("utility", &self.utility)
            .field("grid_operator", &self.grid_operator)
            .finish_non_exhaustive()
    }
}

/// The utility's account id in the ledger.
pub const UTILITY: i64 = -1;
/// The grid operator's account id in the ledger.
pub const GRID_OPERATOR: i64 = -2;

impl Custody {
    /// Custody under `master`, every account custodial.
    pub fn from_master(master: [u8; 32]) -> Self {
        Self {
            master,
            utility: None,
            grid_operator: None,
            cache: Mutex::new(Default::default()),
            links: Default::default(),
        }
    }

    /// A fresh random master secret (tests, and the first start).
    pub fn generate() -> Result<Self, SettlerError> {
        Ok(Self::from_master(
            random_master().map_err(SettlerError::Custody)?,
        ))
    }

    /// The configured custody: the master secret from `custody_key_env`, else from
    /// `custody_key_file` (created on first start), and the utility's and grid operator's
    /// configured addresses.
    pub fn load(config: &ChainConfig) -> Result<Self, SettlerError> {
        let master = match std::env::var(&config.custody_key_env) {
            Ok(text) => parse_master(&text).map_err(|e| SettlerError::Config {
                key: "custody_key_env",
                expected: format!("${}: {e}", config.custody_key_env),
            })?,
            Err(_) => load_or_create(&custody_file(config)).map_err(SettlerError::Custody)?,
        };
        let party = |text: &str, key: &'static str| -> Result<Option<Address>, SettlerError> {
            if text.trim().is_empty() {
                return Ok(None);
            }
            let address: Address = text.trim().parse().map_err(|e: alloy::hex::FromHexError| {
                SettlerError::Config {
                    key,
                    expected: e.to_string(),
                }
            })?;
            if address.is_zero() {
                return Err(SettlerError::Config {
                    key,
                    expected: "an address of its own: the zero address cannot settle".into(),
                });
            }
            Ok(Some(address))
        };
        let mut custody = Self::from_master(master);
        custody.utility = party(&config.utility_address, "utility_address")?;
        custody.grid_operator = party(&config.grid_operator_address, "grid_operator_address")?;
        Ok(custody)
    }

    /// The account's custodial key; `None` for the utility or grid operator when their address
    /// is configured (the engine holds no key for it).
    pub fn signer(&self, account: i64) -> Option<PrivateKeySigner> {
        if !self.is_custodial(account) {
            return None;
        }
        let mut n: u32 = 0;
        loop {
            let mut seed = b"gridshare-custody-v1".to_vec();
            seed.extend_from_slice(&self.master);
            seed.extend_from_slice(&account.to_be_bytes());
            seed.extend_from_slice(&n.to_be_bytes());
            // Zero or ≥ the curve order: about one in 2^128; the next counter then.
            if let Ok(key) = PrivateKeySigner::from_bytes(&keccak256(&seed)) {
                return Some(key);
            }
            n += 1;
        }
    }

    /// Makes `wallet` the account's address from now on (its owner linked it): the engine holds
    /// no key for it any more.
    pub fn link(&self, account: i64, wallet: Address) {
        let mut links = self
            .links
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(old) = links.0.insert(account, wallet) {
            links.1.remove(&old);
        }
        links.1.insert(wallet, account);
    }

    /// The wallet the account linked, if any.
    pub fn linked(&self, account: i64) -> Option<Address> {
        self.links
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .get(&account)
            .copied()
    }

    /// Whether the engine holds the account's key.
    pub fn is_custodial(&self, account: i64) -> bool {
        if self.linked(account).is_some() {
            return false;
        }
        match account {
            UTILITY => self.utility.is_none(),
            GRID_OPERATOR => self.grid_operator.is_none(),
            _ => true,
        }
    }

    /// The account's chain address: its custodial key's, or the configured one of the utility
    /// and grid operator. The one lookup every batch, leaf and document uses.
    pub fn address(&self, account: i64) -> Address {
        let configured = match account {
            UTILITY => self.utility,
            GRID_OPERATOR => self.grid_operator,
            _ => self.linked(account),
        };
        if let Some(address) = configured {
            return address;
        }
        if let Some(address) = self.lock().0.get(&account) {
            return *address;
        }
        let address = self
            .signer(account)
            .map(|k| k.address())
            .unwrap_or_default();
        let mut cache = self.lock();
        cache.0.insert(account, address);
        cache.1.insert(address, account);
        address
    }

    /// The account whose custodial address is `address`, among `candidates` (the engine's
    /// account ids) and those derived before.
    pub fn custodial_account(
        &self,
        address: Address,
        candidates: impl IntoIterator<Item = i64>,
    ) -> Option<i64> {
        if let Some(account) = self.lock().1.get(&address) {
            return self.is_custodial(*account).then_some(*account);
        }
        candidates
            .into_iter()
            .filter(|a| self.is_custodial(*a))
            .find(|a| self.address(*a) == address)
    }

    /// The account whose chain address is `address` — the utility's or grid operator's
    /// configured one, or a custodial one among `candidates` and those derived before.
    pub fn account_of(
        &self,
        address: Address,
        candidates: impl IntoIterator<Item = i64>,
    ) -> Option<i64> {
        if self.utility == Some(address) {
            return Some(UTILITY);
        }
        if self.grid_operator == Some(address) {
            return Some(GRID_OPERATOR);
        }
        if let Some(account) = self
            .links
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1
            .get(&address)
        {
            return Some(*account);
        }
        self.custodial_account(address, candidates)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<i64, Address>, HashMap<Address, i64>)> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Where the master secret is kept when no environment variable holds it.
pub fn custody_file(config: &ChainConfig) -> PathBuf {
    match &config.custody_key_file {
        Some(path) => path.clone(),
        None => config.state_file.with_extension("custody.key"),
    }
}

fn random_master() -> Result<[u8; 32], String> {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut master = [0u8; 32];
    SystemRandom::new()
        .fill(&mut master)
        .map_err(|_| "no system randomness for the custody master secret".to_string())?;
    Ok(master)
}

fn parse_master(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    let bytes: B256 = text
        .parse()
        .map_err(|_| "the custody master secret must be 32 bytes in hex (64 digits)".to_string())?;
    if bytes.is_zero() {
        return Err("the custody master secret must not be zero".into());
    }
    Ok(bytes.0)
}

/// Reads the master secret from `path`, or creates the file (mode 0600) with a new one.
fn load_or_create(path: &Path) -> Result<[u8; 32], String> {
    let shown = path.display();
    match std::fs::read_to_string(path) {
        Ok(text) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(path)
                    .map_err(|e| format!("{shown}: {e}"))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(format!(
                        "{shown}: the custody master secret is readable by others (mode {:o}); \
                         chmod 600 it",
                        mode & 0o777
                    ));
                }
            }
            return parse_master(&text).map_err(|e| format!("{shown}: {e}"));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{shown}: {e}")),
    }
    // Written to a file of our own, then linked into place: a second engine starting at the
    // same moment either links first (and we read its secret) or finds ours complete.
    let master = random_master()?;
    let tmp = path.with_extension(format!("key.{}.tmp", std::process::id()));
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options
            .open(&tmp)
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        writeln!(file, "{}", B256::from(master))
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::warn!(target: "chain", file = %shown, "created the custody master secret for the households' custodial keys; back it up with the operator key (losing it loses the custodial accounts)");
            Ok(master)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create(path),
        Err(e) => Err(format!("{shown}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> ChainConfig {
        ChainConfig {
            state_file: dir.join("chain.json"),
            custody_key_env: "GRIDSHARE_TEST_CUSTODY_KEY_UNSET".into(),
            ..ChainConfig::default()
        }
    }

    /// The same account has the same address after a restart (the master secret is read back
    /// from its file), different accounts have different addresses, and the address is the
    /// custodial key's.
    #[test]
    fn addresses_are_stable_across_restarts_and_differ_per_account() {
        let dir = std::env::temp_dir().join(format!("custody-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = Custody::load(&config(&dir)).unwrap();
        let again = Custody::load(&config(&dir)).unwrap();
        let accounts = [1, 2, 3, 1_000, UTILITY, GRID_OPERATOR];
        let addresses: Vec<Address> = accounts.iter().map(|a| first.address(*a)).collect();
        for (a, address) in accounts.iter().zip(&addresses) {
            assert_eq!(again.address(*a), *address, "account {a} after a restart");
            assert_eq!(first.signer(*a).unwrap().address(), *address);
            assert_eq!(again.custodial_account(*address, accounts), Some(*a));
        }
        let distinct: std::collections::BTreeSet<_> = addresses.iter().collect();
        assert_eq!(distinct.len(), accounts.len(), "{addresses:?}");
        // Another master secret (another engine) gives other addresses.
        let other = Custody::generate().unwrap();
        assert_ne!(other.address(1), first.address(1));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let file = custody_file(&config(&dir));
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            // Readable by others: refused rather than used.
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(
                Custody::load(&config(&dir))
                    .unwrap_err()
                    .to_string()
                    .contains("chmod 600")
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A configured utility address is used as it is and has no custodial key.
    #[test]
    fn configured_parties_are_not_custodial() {
        let utility: Address = Address::repeat_byte(0x11);
        let mut custody = Custody::generate().unwrap();
        custody.utility = Some(utility);
        assert_eq!(custody.address(UTILITY), utility);
        assert!(custody.signer(UTILITY).is_none());
        assert!(custody.is_custodial(GRID_OPERATOR));
        assert_eq!(custody.custodial_account(utility, [UTILITY]), None);
    }
}
