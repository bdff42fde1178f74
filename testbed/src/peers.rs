//! One rule for the external programs and servers that some tests talk to (anvil, Mosquitto,
//! PostgreSQL, Chromium, OpenSSL): a test that needs one runs when this machine has it — its
//! variable is set, or it is installed where the README says — and otherwise does not run and
//! says so in one line naming the peer and how to provide it. `.ci/run` provides every peer and
//! sets `GRIDSHARE_TEST_REQUIRE_PEERS=1`, under which a missing peer fails the test instead:
//! CI never passes with a test quietly left out.
//!
//! Design: the line is written straight to the process's standard error, which the test
//! harness does not capture (it captures only `print!`-style output), once per peer and test
//! binary, so `cargo test --workspace` on a machine with only the Rust toolchain passes and
//! shows what it did not run.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Something outside the workspace that a test needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Peer {
    /// Mosquitto, as a program the test starts and stops (broker outages, TLS, password files).
    Mosquitto,
    /// anvil (Foundry's EVM node): a running node, or the program to start one.
    Anvil,
    /// A PostgreSQL server the engine's storage tests also run on.
    Postgres,
    /// Chromium, to open the HTML pages the project writes.
    Chromium,
    /// The `openssl` command line, to make throw-away certificates.
    OpenSsl,
}

/// Where a peer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A server already running, by its URL.
    Url(String),
    /// A program the test starts itself.
    Program(PathBuf),
}

impl Location {
    /// The URL or the program's path, as text.
    pub fn as_str(&self) -> String {
        match self {
            Self::Url(url) => url.clone(),
            Self::Program(path) => path.display().to_string(),
        }
    }
}

/// The variable that turns a missing peer into a failed test (`.ci/run` sets it).
pub const REQUIRE_VAR: &str = "GRIDSHARE_TEST_REQUIRE_PEERS";

impl Peer {
    /// The peer's name as a reader knows it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mosquitto => "Mosquitto",
            Self::Anvil => "anvil",
            Self::Postgres => "PostgreSQL",
            Self::Chromium => "Chromium",
            Self::OpenSsl => "openssl",
        }
    }

    /// How to provide it, in one sentence.
    pub fn how_to_provide(self) -> &'static str {
        match self {
            Self::Mosquitto => "apt-get install mosquitto, or set MOSQUITTO_BIN",
            Self::Anvil => {
                "run `npm ci` in contracts/, or set GRIDSHARE_TEST_ANVIL_URL to a node started with --hardfork osaka"
            }
            Self::Postgres => {
                "set GRIDSHARE_TEST_POSTGRES_URL, e.g. postgres://postgres@127.0.0.1:5432/test"
            }
            Self::Chromium => "apt-get install chromium, or set GRIDSHARE_TEST_CHROMIUM",
            Self::OpenSsl => "apt-get install openssl",
        }
    }

    /// Where this machine has the peer, if it has it. Changes nothing and reports nothing.
    pub fn locate(self) -> Option<Location> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        match self {
            Self::Mosquitto => var("MOSQUITTO_BIN")
                .map(PathBuf::from)
                .or_else(|| {
                    ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
                        .iter()
                        .map(PathBuf::from)
                        .find(|p| p.is_file())
                })
                .or_else(|| on_path("mosquitto"))
                .map(Location::Program),
            Self::Anvil => var("GRIDSHARE_TEST_ANVIL_URL")
                .map(Location::Url)
                .or_else(|| {
                    let bin = workspace_root().join(crate::anvil::IN_NODE_MODULES);
                    bin.is_file().then_some(Location::Program(bin))
                }),
            Self::Postgres => var("GRIDSHARE_TEST_POSTGRES_URL").map(Location::Url),
            Self::Chromium => var("GRIDSHARE_TEST_CHROMIUM")
                .map(PathBuf::from)
                .or_else(|| on_path("chromium"))
                .map(Location::Program),
            Self::OpenSsl => on_path("openssl").map(Location::Program),
        }
    }
}

/// The peer's location; or, when this machine lacks it, `None` after saying (once per peer and
/// test binary) that the tests needing it do not run here. Under
/// [`REQUIRE_VAR`]`=1` a missing peer panics with the same sentence.
pub fn available(peer: Peer) -> Option<Location> {
    if let Some(location) = peer.locate() {
        return Some(location);
    }
    let line = format!(
        "NOT RUN here: the tests that need {} ({}).",
        peer.name(),
        peer.how_to_provide()
    );
    if std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1") {
        panic!("{line} {REQUIRE_VAR}=1 requires every peer");
    }
    static SAID: Mutex<BTreeSet<Peer>> = Mutex::new(BTreeSet::new());
    let first = SAID
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(peer);
    if first {
        // Straight to the process's stderr: the harness captures only `eprint!`.
        let _ = std::io::stderr().write_all(format!("\n{line}\n").as_bytes());
    }
    None
}

/// Like [`available`], for a peer that is a program the test starts.
pub fn program(peer: Peer) -> Option<PathBuf> {
    match available(peer)? {
        Location::Program(path) => Some(path),
        Location::Url(url) => panic!("{} is a server at {url}, not a program", peer.name()),
    }
}

/// The workspace's root directory (where the README is).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// `name` in a directory of `$PATH`, if there.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_peer_says_how_to_provide_it() {
        for peer in [
            Peer::Mosquitto,
            Peer::Anvil,
            Peer::Postgres,
            Peer::Chromium,
            Peer::OpenSsl,
        ] {
            assert!(!peer.name().is_empty());
            assert!(peer.how_to_provide().len() > 10, "{peer:?}");
        }
    }

    #[test]
    fn the_workspace_root_holds_the_readme() {
        assert!(workspace_root().join("README.md").is_file());
        assert!(workspace_root().join("Cargo.toml").is_file());
    }

    #[test]
    fn programs_are_found_on_the_path() {
        assert!(on_path("sh").is_some(), "sh is on every PATH");
        assert!(on_path("no-such-program-gridshare").is_none());
    }
}
