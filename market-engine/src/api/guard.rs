//! The login guard: password hashing within a fixed capacity, and failed logins counted per
//! account name and per client address.
//!
//! - At most `hashing_concurrency` hashes run at once, each in a reused work area, and at most
//!   `hashing_queue` more requests wait for one; beyond that a login or sign-up is answered 503
//!   with `Retry-After` at once. A flood of logins costs at most concurrency × 19 MiB and never
//!   queues unboundedly.
//! - Login attempts are counted per account name and per client address ([`LoginLimits`]); past
//!   a number of failures, each further attempt waits (doubling, capped) and is answered 429
//!   with `Retry-After` without the password being looked at.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::Block;
use axum::http::HeaderMap;
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::ApiError;
use super::passwords::{DUMMY_HASH, WorkAreas, hash_in, verify_in};

/// Names and addresses tracked at most by each of the failure tallies.
const MAX_TRACKED: usize = 100_000;

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
    pub(super) fn admit(
        &self,
        name: Option<&str>,
        address: Option<IpAddr>,
    ) -> Result<Attempt<'_>, Duration> {
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
    pub(super) async fn hash(&self, password: String) -> Result<String, ApiError> {
        self.hashing(move |area| hash_in(&password, area))
            .await?
            .map_err(ApiError::Internal)
    }

    /// Whether `password` matches `stored`; with no stored hash (an unknown name), the same
    /// work against [`DUMMY_HASH`], and `false`.
    pub(super) async fn verify(
        &self,
        stored: Option<String>,
        password: String,
    ) -> Result<bool, ApiError> {
        self.hashing(move |area| {
            let known = stored.is_some();
            let phc = stored.as_deref().unwrap_or(DUMMY_HASH);
            let matches = verify_in(phc, &password, area);
            known && matches
        })
        .await
    }

    /// Whether the session cookie for this request is `Secure`.
    pub(super) fn secure(&self, headers: &HeaderMap) -> bool {
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
pub(super) struct Attempt<'a> {
    auth: &'a Auth,
    name: Option<String>,
    address: Option<IpAddr>,
    settled: bool,
}

impl Attempt<'_> {
    /// The password was wrong (or the sign-up named a taken account): the failure stays.
    pub(super) fn failed(mut self) {
        self.settled = true;
    }

    /// The password was right: the name starts again from zero, the address gets this attempt
    /// back (not more: one good login between guesses must not wipe a guesser's record).
    pub(super) fn succeeded(mut self) {
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

/// The 429 of a name or address that must still wait.
pub(super) fn throttled(wait: Duration) -> ApiError {
    let retry_after_s = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::Throttled {
        message: format!(
            "too many failed attempts for this name or from this address; try again in {retry_after_s} s"
        ),
        retry_after_s: retry_after_s.max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
