//! Accounts, sessions and API tokens: who is calling, and keeping password guessing slow for an
//! attacker and cheap for the engine.
//!
//! - Account names are normalised (trimmed, lower case) and drawn from one character set
//!   ([`account_name`]), so look-alikes (`HOME-01`, `home-01.`) cannot sit beside `home-01`;
//!   login applies the same normalisation. New passwords follow [`password_policy`].
//! - Passwords are hashed with Argon2id at the OWASP baseline (19 MiB, 2 passes, 1 lane). At
//!   most `hashing_concurrency` hashes run at once, each in a work area allocated once and
//!   reused ([`WorkAreas`]), and at most `hashing_queue` more requests wait for one; beyond that
//!   a login or sign-up is answered 503 with `Retry-After` at once. A flood of logins costs at
//!   most concurrency × 19 MiB and never queues unboundedly.
//! - Login attempts are counted per account name and per client address ([`LoginLimits`]); past
//!   a number of failures, each further attempt waits (doubling, capped) and is answered 429
//!   with `Retry-After` without the password being looked at.
//! - A login for an unknown name does the same work as one with a wrong password (a
//!   verification against a fixed hash of the same parameters) and gets the same answer.
//! - The session lives in an HttpOnly cookie, never in a response body, marked `Secure` behind
//!   TLS; API tokens expire, are listed and can be revoked; logout deletes the session.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{Output, ParamsString, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::{HeaderMap, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;

use super::{ApiError, AppState, json_body, random_token};
use crate::pipeline::now_ms;
use crate::store::{AccountRow, CredentialRow};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "gridshare_session";
/// Longest password accepted (at login too: a longer one is refused before any hashing).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Shortest password a new account may have, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest name a login looks up (names were up to 64 characters before they were limited to
/// 32; longer ones cannot exist).
const MAX_LOGIN_NAME_BYTES: usize = 64;
/// Hex digits of a token's hash that name it in listings and revocations.
const TOKEN_ID_HEX: usize = 16;
const DAY_MS: u64 = 86_400_000;
/// Names and addresses tracked at most by each of the failure tallies.
const MAX_TRACKED: usize = 100_000;

/// Argon2id of a random password nobody knows, with the parameters [`hash_password`] uses: a
/// login for an unknown name is verified against it, so it costs what a wrong password costs.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$kL7V/DLzXZNjbo/L2so7Lg$oN0eXhmpEw24R80PzwW9LHCdgMtALfwzoIoXrMEGDFA";

/// Leaked passwords new accounts may not use.
const COMMON_PASSWORDS: &str = include_str!("common-passwords.txt");

/// The `[auth]` section of the engine's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Mark the session cookie `Secure` (sent over HTTPS only). Requests that arrive with
    /// `X-Forwarded-Proto: https` get a `Secure` cookie anyway.
    pub secure_cookies: bool,
    /// Take the client's address for the per-address login limit from the last entry of
    /// `X-Forwarded-For` (a reverse proxy appends it). Only behind a proxy: a client that
    /// connects directly could write the header itself.
    pub trust_forwarded_for: bool,
    /// How long a login lasts, days.
    pub session_days: u32,
    /// How long an API token lasts unless its request says otherwise, days.
    pub token_days: u32,
    /// The longest lifetime a token request may ask for, days.
    pub max_token_days: u32,
    /// Password hashes computed at once (19 MiB each); 0: one per core.
    pub hashing_concurrency: u32,
    /// Logins and sign-ups that may wait for a hashing slot; more are answered 503 at once.
    pub hashing_queue: u32,
    /// Wrong passwords for one account name before its logins wait.
    pub failures_per_name: u32,
    /// Failed logins (and sign-ups for taken names) from one client address (IPv6: its /64)
    /// before its logins wait.
    pub failures_per_address: u32,
    /// The first wait, seconds; it doubles with every further failure.
    pub lockout_s: u32,
    /// The longest wait, seconds.
    pub max_lockout_s: u32,
    /// A name or address without a failure for this long starts again from zero, seconds.
    pub failure_window_s: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            secure_cookies: false,
            trust_forwarded_for: false,
            session_days: 7,
            token_days: 90,
            max_token_days: 365,
            hashing_concurrency: 0,
            hashing_queue: 32,
            failures_per_name: 5,
            failures_per_address: 20,
            lockout_s: 1,
            max_lockout_s: 900,
            failure_window_s: 3600,
        }
    }
}

impl AuthConfig {
    /// Checks the values, naming the key at fault.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=365).contains(&self.session_days) {
            return Err("auth.session_days: 1 to 365".into());
        }
        if !(1..=3650).contains(&self.max_token_days) {
            return Err("auth.max_token_days: 1 to 3650".into());
        }
        if !(1..=self.max_token_days).contains(&self.token_days) {
            return Err("auth.token_days: 1 to auth.max_token_days".into());
        }
        if self.hashing_concurrency > 1024 {
            return Err("auth.hashing_concurrency: at most 1024 (0: one per core)".into());
        }
        if self.hashing_queue > 100_000 {
            return Err("auth.hashing_queue: at most 100000".into());
        }
        if self.failures_per_name == 0 || self.failures_per_address == 0 {
            return Err("auth.failures_per_name and auth.failures_per_address: at least 1".into());
        }
        if self.lockout_s == 0 || self.max_lockout_s < self.lockout_s {
            return Err("auth.lockout_s: at least 1, and at most auth.max_lockout_s".into());
        }
        if self.failure_window_s < self.max_lockout_s {
            return Err("auth.failure_window_s: at least auth.max_lockout_s".into());
        }
        Ok(())
    }
}

/// What the login guard counted (the engine exports them on `/metrics`).
#[derive(Debug, Default)]
pub struct AuthMetrics {
    /// Logins with the right name and password.
    pub logins_succeeded: AtomicU64,
    /// Logins with a wrong name or password.
    pub logins_failed: AtomicU64,
    /// Logins answered 429 because their name or address failed too often.
    pub logins_throttled: AtomicU64,
    /// Logins and sign-ups answered 503 because the hashing queue was full.
    pub hashing_busy: AtomicU64,
    /// Argon2 computations (hashes and verifications) started.
    pub password_hashes: AtomicU64,
    /// Argon2 computations running now.
    pub hashes_running: AtomicU64,
    /// The most Argon2 computations that ever ran at once.
    pub hashes_running_peak: AtomicU64,
}

/// Failures of one account name or one client address.
#[derive(Debug, Clone, Copy)]
struct Tally {
    /// Attempts counted as failures (an attempt counts from its start, and is given back when
    /// it succeeds or never reaches the password check).
    failures: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// Failed logins per account name and per client address, and the waits they earn.
///
/// Design: an attempt is counted when it starts, under the lock, not when its password turns
/// out wrong: parallel guesses then see each other, so no more than the allowed number ever
/// reach the password check at once.
#[derive(Debug, Default)]
pub struct LoginLimits {
    names: HashMap<String, Tally>,
    addresses: HashMap<IpAddr, Tally>,
}

/// The limits' settings, from [`AuthConfig`].
#[derive(Debug, Clone, Copy)]
struct Policy {
    free: u32,
    lockout: Duration,
    max_lockout: Duration,
    window: Duration,
}

impl Policy {
    /// The wait after `failures` failures (none below the free number).
    fn wait(&self, failures: u32) -> Option<Duration> {
        let beyond = failures.checked_sub(self.free)?;
        let factor = 1u32.checked_shl(beyond.min(31)).unwrap_or(u32::MAX);
        Some(
            self.lockout
                .checked_mul(factor)
                .map_or(self.max_lockout, |d| d.min(self.max_lockout)),
        )
    }
}

/// How long `key` must still wait, if it must.
fn locked<K: std::hash::Hash + Eq>(
    map: &HashMap<K, Tally>,
    key: &K,
    now: Instant,
    policy: Policy,
) -> Option<Duration> {
    let tally = map.get(key)?;
    if now.duration_since(tally.last) > policy.window {
        return None;
    }
    tally
        .locked_until
        .and_then(|until| until.checked_duration_since(now))
        .filter(|d| !d.is_zero())
}

fn count<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, Tally>,
    key: &K,
    now: Instant,
    policy: Policy,
) {
    if !map.contains_key(key) && map.len() >= MAX_TRACKED {
        prune(map, now, policy);
    }
    let tally = map.entry(key.clone()).or_insert(Tally {
        failures: 0,
        last: now,
        locked_until: None,
    });
    if now.duration_since(tally.last) > policy.window {
        tally.failures = 0;
        tally.locked_until = None;
    }
    tally.failures = tally.failures.saturating_add(1);
    tally.last = now;
    if let Some(wait) = policy.wait(tally.failures) {
        tally.locked_until = Some(now + wait);
    }
}

fn refund<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Tally>, key: &K, policy: Policy) {
    if let Some(tally) = map.get_mut(key) {
        tally.failures = tally.failures.saturating_sub(1);
        if tally.failures < policy.free {
            tally.locked_until = None;
        }
        if tally.failures == 0 {
            map.remove(key);
        }
    }
}

/// Keeps the tally within [`MAX_TRACKED`]: drops what the window has forgotten, then, if a
/// flood of names or addresses still fills it, the older half.
fn prune<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, Tally>,
    now: Instant,
    policy: Policy,
) {
    map.retain(|_, t| now.duration_since(t.last) <= policy.window);
    if map.len() >= MAX_TRACKED {
        let mut by_age: Vec<(Instant, K)> = map.iter().map(|(k, t)| (t.last, k.clone())).collect();
        by_age.sort_by_key(|(last, _)| *last);
        for (_, key) in by_age.into_iter().take(MAX_TRACKED / 2) {
            map.remove(&key);
        }
    }
}

/// The key of a client address: IPv6 clients are counted per /64, which one household or one
/// attacker usually holds whole; an IPv4-mapped address is its IPv4 address.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

/// The login guard: hashing capacity, failure limits and their counters.
#[derive(Debug)]
pub struct Auth {
    config: AuthConfig,
    permits: usize,
    hashing: Arc<Semaphore>,
    /// Requests holding or waiting for a hashing permit.
    admitted: AtomicUsize,
    limits: Mutex<LoginLimits>,
    areas: Arc<WorkAreas>,
    /// The counters.
    pub metrics: Arc<AuthMetrics>,
}

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
    const fn new() -> Self {
        Self {
            free: Mutex::new(Vec::new()),
            bytes: AtomicU64::new(0),
        }
    }

    /// Bytes the areas hold, in use or not.
    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Runs `work` in a free area (a new one when all are in use).
    fn with<T>(&self, work: impl FnOnce(&mut Vec<Block>) -> T) -> T {
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
fn hash_in(password: &str, area: &mut Vec<Block>) -> Result<String, String> {
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
fn verify_in(stored: &str, password: &str, area: &mut Vec<Block>) -> bool {
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

impl Auth {
    /// A guard with these settings (already validated).
    pub fn new(config: AuthConfig) -> Self {
        let permits = match config.hashing_concurrency {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            n => usize::try_from(n).unwrap_or(1),
        };
        Self {
            permits,
            hashing: Arc::new(Semaphore::new(permits)),
            admitted: AtomicUsize::new(0),
            limits: Mutex::new(LoginLimits::default()),
            areas: Arc::new(WorkAreas::default()),
            metrics: Arc::new(AuthMetrics::default()),
            config,
        }
    }

    /// The settings.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// Bytes held by Argon2 work areas (a gauge for `/metrics`): at most
    /// `hashing_concurrency` × 19 MiB.
    pub fn hashing_memory_bytes(&self) -> u64 {
        self.areas.bytes()
    }

    fn policies(&self) -> (Policy, Policy) {
        let policy = |free| Policy {
            free,
            lockout: Duration::from_secs(u64::from(self.config.lockout_s)),
            max_lockout: Duration::from_secs(u64::from(self.config.max_lockout_s)),
            window: Duration::from_secs(u64::from(self.config.failure_window_s)),
        };
        (
            policy(self.config.failures_per_name),
            policy(self.config.failures_per_address),
        )
    }

    /// Starts an attempt for the name and address (either may be absent): the wait if one of
    /// them must still wait, else the attempt, counted as a failure until it says otherwise.
    fn admit(&self, name: Option<&str>, address: Option<IpAddr>) -> Result<Attempt<'_>, Duration> {
        let (names, addresses) = self.policies();
        let name = name.map(str::to_owned);
        let address = address.map(address_key);
        let now = Instant::now();
        let mut limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        let wait = [
            name.as_ref()
                .and_then(|n| locked(&limits.names, n, now, names)),
            address.and_then(|a| locked(&limits.addresses, &a, now, addresses)),
        ]
        .into_iter()
        .flatten()
        .max();
        if let Some(wait) = wait {
            return Err(wait);
        }
        if let Some(n) = &name {
            count(&mut limits.names, n, now, names);
        }
        if let Some(a) = &address {
            count(&mut limits.addresses, a, now, addresses);
        }
        Ok(Attempt {
            auth: self,
            name,
            address,
            settled: false,
        })
    }

    /// Runs Argon2 work on the blocking pool within the hashing capacity: 503 at once when
    /// `hashing_queue` requests already wait.
    async fn hashing<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let waiting = self.admitted.fetch_add(1, Ordering::SeqCst);
        let _admitted = Admitted(&self.admitted);
        let queue = usize::try_from(self.config.hashing_queue).unwrap_or(usize::MAX);
        if waiting >= self.permits.saturating_add(queue) {
            self.metrics.hashing_busy.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::Busy {
                message: "the engine is busy checking passwords; try again in a moment".into(),
                retry_after_s: 1,
            });
        }
        let permit = self
            .hashing
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::Internal("password hashing stopped".into()))?;
        let metrics = self.metrics.clone();
        let areas = self.areas.clone();
        // The permit moves into the blocking task: it is released when the hash is done, not
        // when a client that hung up drops this future.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            metrics.password_hashes.fetch_add(1, Ordering::Relaxed);
            let running = metrics.hashes_running.fetch_add(1, Ordering::SeqCst) + 1;
            metrics
                .hashes_running_peak
                .fetch_max(running, Ordering::SeqCst);
            let out = areas.with(work);
            metrics.hashes_running.fetch_sub(1, Ordering::SeqCst);
            out
        })
        .await
        .map_err(|e| ApiError::Internal(format!("password hashing: {e}")))
    }

    /// Hashes a new password within the hashing capacity.
    async fn hash(&self, password: String) -> Result<String, ApiError> {
        self.hashing(move |area| hash_in(&password, area))
            .await?
            .map_err(ApiError::Internal)
    }

    /// Whether `password` matches `stored`; with no stored hash (an unknown name), the same
    /// work against [`DUMMY_HASH`], and `false`.
    async fn verify(&self, stored: Option<String>, password: String) -> Result<bool, ApiError> {
        self.hashing(move |area| {
            let known = stored.is_some();
            let phc = stored.as_deref().unwrap_or(DUMMY_HASH);
            let matches = verify_in(phc, &password, area);
            known && matches
        })
        .await
    }

    /// Whether the session cookie for this request is `Secure`.
    fn secure(&self, headers: &HeaderMap) -> bool {
        self.config.secure_cookies
            || headers
                .get_all("x-forwarded-proto")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .next_back()
                .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
    }
}

/// Gives back the place in the hashing queue.
struct Admitted<'a>(&'a AtomicUsize);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One login or sign-up in progress, counted as a failure of its name and address. Dropped
/// without a verdict (the database failed, the engine was busy, the client hung up before the
/// password was checked), it is given back.
struct Attempt<'a> {
    auth: &'a Auth,
    name: Option<String>,
    address: Option<IpAddr>,
    settled: bool,
}

impl Attempt<'_> {
    /// The password was wrong (or the sign-up named a taken account): the failure stays.
    fn failed(mut self) {
        self.settled = true;
    }

    /// The password was right: the name starts again from zero, the address gets this attempt
    /// back (not more: one good login between guesses must not wipe a guesser's record).
    fn succeeded(mut self) {
        self.settled = true;
        let (_, addresses) = self.auth.policies();
        let mut limits = self.auth.limits.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(name) = &self.name {
            limits.names.remove(name);
        }
        if let Some(address) = &self.address {
            refund(&mut limits.addresses, address, addresses);
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let (names, addresses) = self.auth.policies();
        let mut limits = self.auth.limits.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(name) = &self.name {
            refund(&mut limits.names, name, names);
        }
        if let Some(address) = &self.address {
            refund(&mut limits.addresses, address, addresses);
        }
    }
}

/// The client's address: the TCP peer (the server is run with
/// `into_make_service_with_connect_info`), or with `trust_forwarded_for` the last entry of
/// `X-Forwarded-For`. Absent when the router is called without a socket (`Router::oneshot`);
/// the per-address limit then does not apply.
pub struct ClientAddress(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let forwarded = if state.auth.config.trust_forwarded_for {
            parts
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .next_back()
                .and_then(|a| a.trim().parse::<IpAddr>().ok())
        } else {
            None
        };
        Ok(Self(forwarded.or(peer)))
    }
}

/// The authenticated account, from the session cookie or a bearer token (an API token, or the
/// session's secret).
pub struct Authenticated(pub AccountRow);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers).or_else(|| cookie(&parts.headers, SESSION_COOKIE));
        let Some(token) = token else {
            return Err(ApiError::Unauthorized);
        };
        state
            .store
            .account_by_credential(&token_hash(&token), now_ms())
            .await?
            .map(Authenticated)
            .ok_or(ApiError::Unauthorized)
    }
}

/// The account behind the request's session or token, if it sends one; a credential that is
/// sent but not valid is refused (401), never served as anonymous.
pub(super) async fn optional_account(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<AccountRow>, ApiError> {
    let Some(token) = bearer(headers).or_else(|| cookie(headers, SESSION_COOKIE)) else {
        return Ok(None);
    };
    state
        .store
        .account_by_credential(&token_hash(&token), now_ms())
        .await?
        .map(Some)
        .ok_or(ApiError::Unauthorized)
}

fn token_hash(token: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ))
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(|t| t.trim().to_owned())
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then(|| v.to_owned())
        })
}

/// The session cookie carrying `token` for `max_age_s` (an empty token and 0 clear it).
fn session_cookie(token: &str, max_age_s: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age_s}{secure}"
    )
}

/// An account name as stored: trimmed and lower case, 3 to 32 characters of `a-z 0-9 . _ -`,
/// starting and ending with a letter or digit, no two of `. _ -` in a row.
pub fn account_name(raw: &str) -> Result<String, String> {
    let name = raw.trim().to_lowercase();
    let separator = |b: u8| matches!(b, b'.' | b'_' | b'-');
    let bytes = name.as_bytes();
    let ok = (3..=32).contains(&bytes.len())
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || separator(b))
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && !bytes.windows(2).any(|w| separator(w[0]) && separator(w[1]));
    if ok {
        Ok(name)
    } else {
        Err(
            "name: 3 to 32 characters of a-z 0-9 . _ - (capitals count as lower case), \
             starting and ending with a letter or digit, no two of . _ - in a row"
                .into(),
        )
    }
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
/// [`Auth`] guard's capacity instead.
pub async fn hash_password(password: &str) -> Result<String, String> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || SETUP_AREAS.with(|area| hash_in(&password, area)))
        .await
        .map_err(|e| e.to_string())?
}

fn invalid(field: &str, message: String) -> ApiError {
    ApiError::Invalid {
        field: field.into(),
        message,
    }
}

fn throttled(wait: Duration) -> ApiError {
    let retry_after_s = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::Throttled {
        message: format!(
            "too many failed attempts for this name or from this address; try again in {retry_after_s} s"
        ),
        retry_after_s: retry_after_s.max(1),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Credentials {
    name: String,
    password: String,
}

/// `POST /api/v1/accounts`: a new household account.
pub(super) async fn create_account(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    body: Result<Json<Credentials>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let c = json_body(body)?;
    let name = account_name(&c.name).map_err(|m| invalid("name", m))?;
    password_policy(&name, &c.password).map_err(|m| invalid("password", m))?;
    // Sign-ups for taken names count against the address like failed logins: they would
    // otherwise tell a stranger which names exist, as fast as it can ask.
    let attempt = state.auth.admit(None, address).map_err(throttled)?;
    if state.store.account_by_name(&name).await?.is_some() {
        attempt.failed();
        return Err(ApiError::Conflict(format!(
            "account {name:?} already exists"
        )));
    }
    let hash = state.auth.hash(c.password).await?;
    let id = state
        .store
        .create_account(&name, &hash, "household", now_ms())
        .await?;
    attempt.succeeded();
    Ok((StatusCode::CREATED, Json(json!({ "id": id, "name": name }))))
}

/// `POST /api/v1/sessions`: log in. The session is in the cookie only.
pub(super) async fn login(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    body: Result<Json<Credentials>, JsonRejection>,
) -> Result<Response, ApiError> {
    let c = json_body(body)?;
    if c.password.len() > MAX_PASSWORD_BYTES {
        return Err(invalid(
            "password",
            format!("password: at most {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    let name = c.name.trim().to_lowercase();
    if name.is_empty() || name.len() > MAX_LOGIN_NAME_BYTES {
        return Err(invalid(
            "name",
            format!("name: 1 to {MAX_LOGIN_NAME_BYTES} characters"),
        ));
    }
    let metrics = &state.auth.metrics;
    let attempt = state.auth.admit(Some(&name), address).map_err(|wait| {
        metrics.logins_throttled.fetch_add(1, Ordering::Relaxed);
        tracing::info!(target: "api", name, ?address, "login throttled");
        throttled(wait)
    })?;
    let mut account = state.store.account_by_name(&name).await?;
    let as_typed = c.name.trim();
    if account.is_none() && as_typed != name {
        // Accounts registered before names were normalised may hold capitals.
        account = state.store.account_by_name(as_typed).await?;
    }
    let stored = account.as_ref().map(|a| a.password_hash.clone());
    let right = state.auth.verify(stored, c.password).await?;
    let Some(account) = account.filter(|_| right) else {
        attempt.failed();
        metrics.logins_failed.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::LoginFailed);
    };
    attempt.succeeded();
    metrics.logins_succeeded.fetch_add(1, Ordering::Relaxed);
    let now = now_ms();
    if let Err(e) = state
        .store
        .delete_expired_credentials(account.id, now)
        .await
    {
        tracing::warn!(target: "api", account = account.name, "expired credentials not deleted: {e}");
    }
    let token = random_token()?;
    let lifetime_ms = u64::from(state.auth.config.session_days) * DAY_MS;
    let expires_ms = now + lifetime_ms;
    state
        .store
        .insert_credential(
            &CredentialRow {
                token_hash: token_hash(&token),
                kind: "session".into(),
                label: "login".into(),
                created_ms: Some(now),
                expires_ms,
            },
            account.id,
        )
        .await?;
    let cookie = session_cookie(&token, lifetime_ms / 1000, state.auth.secure(&headers));
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(json!({ "account": account.name, "role": account.role, "expires_ms": expires_ms })),
    )
        .into_response())
}

/// `DELETE /api/v1/sessions`: log out. Deletes the session (from the cookie, or a session's
/// secret sent as a bearer token) and clears the cookie; answers 204 even without one, so a
/// stale cookie is always cleared.
pub(super) async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    for token in [cookie(&headers, SESSION_COOKIE), bearer(&headers)]
        .into_iter()
        .flatten()
    {
        state.store.delete_session(&token_hash(&token)).await?;
    }
    let cookie = session_cookie("", 0, state.auth.secure(&headers));
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenRequest {
    label: String,
    expires_in_days: Option<u32>,
}

fn token_json(credential: &CredentialRow) -> serde_json::Value {
    json!({
        "id": &credential.token_hash[..TOKEN_ID_HEX.min(credential.token_hash.len())],
        "label": credential.label,
        "created_ms": credential.created_ms,
        "expires_ms": credential.expires_ms,
    })
}

/// `POST /api/v1/tokens`: an API token for a bot, shown once.
pub(super) async fn create_token(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
    body: Result<Json<TokenRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let req = json_body(body)?;
    if req.label.is_empty() || req.label.len() > 64 || req.label.chars().any(char::is_control) {
        return Err(invalid(
            "label",
            "label: 1 to 64 printable characters".into(),
        ));
    }
    let config = &state.auth.config;
    let days = req.expires_in_days.unwrap_or(config.token_days);
    if !(1..=config.max_token_days).contains(&days) {
        return Err(invalid(
            "expires_in_days",
            format!("expires_in_days: 1 to {}", config.max_token_days),
        ));
    }
    let token = random_token()?;
    let now = now_ms();
    let credential = CredentialRow {
        token_hash: token_hash(&token),
        kind: "api_token".into(),
        label: req.label,
        created_ms: Some(now),
        expires_ms: now + u64::from(days) * DAY_MS,
    };
    state
        .store
        .insert_credential(&credential, account.id)
        .await?;
    let mut body = token_json(&credential);
    body["token"] = json!(token);
    Ok((StatusCode::CREATED, Json(body)))
}

/// `GET /api/v1/tokens`: the account's unexpired API tokens (never their secrets).
pub(super) async fn list_tokens(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tokens: Vec<_> = state
        .store
        .credentials(account.id, "api_token", now_ms())
        .await?
        .iter()
        .map(token_json)
        .collect();
    Ok(Json(json!({ "tokens": tokens })))
}

/// `DELETE /api/v1/tokens/{id}`: revokes one of the account's API tokens. Another account's
/// token is "not found", like one that never existed.
pub(super) async fn revoke_token(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let well_formed = id.len() == TOKEN_ID_HEX && id.bytes().all(|b| b.is_ascii_hexdigit());
    if well_formed
        && state
            .store
            .delete_credential(account.id, "api_token", &id)
            .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!(
            "you have no API token {id:?} (GET /api/v1/tokens lists them)"
        )))
    }
}

/// `GET /api/v1/me`: the authenticated account.
pub(super) async fn me(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
) -> Json<serde_json::Value> {
    // The account's chain address, from the one lookup batches and proofs use; null without a
    // chain.
    let chain = state.market.custody().map(|custody| {
        json!({
            "address": custody.address(account.id).to_string(),
            "custodial": custody.is_custodial(account.id),
            "settlement_contract": state.settler.as_ref().map(|s| format!("{:#x}", s.settlement_address())),
        })
    });
    Json(json!({ "id": account.id, "name": account.name, "role": account.role, "chain": chain }))
}

/// The body of `POST /api/v1/me/custodial-key/export`: the account's password, re-entered.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PasswordAgain {
    password: String,
}

/// `POST /api/v1/me/custodial-key/export`: the household's custodial private key, to import
/// into a wallet of its own.
///
/// Design: the household takes its key itself — no operator ever handles it on its behalf —
/// and only with its password re-entered (a stolen session or API token alone is not enough),
/// under the same per-name and per-address throttle as logging in; the answer is marked
/// `no-store` and the export is logged (without the key). The engine still holds the key after
/// an export (it is derived, not stored): the household should move its money to a wallet it
/// alone controls once it has one.
pub(super) async fn export_custodial_key(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    Authenticated(account): Authenticated,
    body: Result<Json<PasswordAgain>, JsonRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(body)?;
    if body.password.len() > MAX_PASSWORD_BYTES {
        return Err(invalid(
            "password",
            format!("password: at most {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    let custody = state.market.custody().cloned().ok_or_else(|| {
        ApiError::NotFound("no chain is configured: the account has no chain key".into())
    })?;
    let attempt = state
        .auth
        .admit(Some(&account.name), address)
        .map_err(throttled)?;
    let right = state
        .auth
        .verify(Some(account.password_hash.clone()), body.password)
        .await?;
    if !right {
        attempt.failed();
        // The session is valid (not 401, which would sign the app out): the password
        // re-entered is what is wrong, said by its field.
        return Err(ApiError::Forbidden(
            "password: not this account's password".into(),
        ));
    }
    attempt.succeeded();
    let key = custody
        .signer(account.id)
        .ok_or_else(|| ApiError::NotFound("the engine holds no key for this account".into()))?;
    tracing::warn!(target: "api", account = account.name, address = %key.address(), "custodial key exported by its household");
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "address": key.address().to_string(),
            "private_key": alloy::primitives::B256::from(key.to_bytes()).to_string(),
        })),
    )
        .into_response())
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
    fn names_are_normalised_and_look_alikes_refused() {
        assert_eq!(account_name(" HOME-01 ").unwrap(), "home-01");
        for bad in [
            "home-01.",
            ".home",
            "ho",
            "home..01",
            "home-_01",
            "höme-01",
            "home 01",
            "a@b.c",
            "x234567890123456789012345678901234",
        ] {
            assert!(account_name(bad).is_err(), "{bad}");
        }
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

    #[test]
    fn waits_double_from_the_first_failure_beyond_the_free_ones() {
        let policy = Policy {
            free: 3,
            lockout: Duration::from_secs(1),
            max_lockout: Duration::from_secs(10),
            window: Duration::from_secs(60),
        };
        assert_eq!(policy.wait(2), None);
        assert_eq!(policy.wait(3), Some(Duration::from_secs(1)));
        assert_eq!(policy.wait(4), Some(Duration::from_secs(2)));
        assert_eq!(policy.wait(6), Some(Duration::from_secs(8)));
        assert_eq!(policy.wait(7), Some(Duration::from_secs(10)));
        assert_eq!(policy.wait(u32::MAX), Some(Duration::from_secs(10)));
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(address_key(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
    }
}
