//! anvil (Foundry's EVM node) for the tests that settle and stake on a real node: the one
//! named by `GRIDSHARE_TEST_ANVIL_URL` (CI starts one), or a process started here from the
//! binary `npm ci` installs in `contracts/node_modules`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::peers::{self, Location, Peer};

/// Where `npm ci` in `contracts/` puts the anvil binary, from the workspace root.
pub const IN_NODE_MODULES: &str = "contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil";

/// A node to talk to; a node this test started is killed when dropped.
#[derive(Debug)]
pub struct Anvil {
    child: Option<Child>,
    /// Its JSON-RPC URL.
    pub url: String,
}

impl Anvil {
    /// The shared node, or a fresh one on a free port with the Osaka rules (P256VERIFY at
    /// 0x100); `None` (reported) where this machine has neither.
    pub fn start() -> Option<Self> {
        match peers::available(Peer::Anvil)? {
            Location::Url(url) => Some(Self { child: None, url }),
            Location::Program(bin) => Some(Self::spawn(&bin)),
        }
    }

    /// A node of the test's own, never the shared one: for tests that stop its mining, drop
    /// transactions from its pool or reorganise its chain. Needs the binary `npm ci` installs
    /// in `contracts/node_modules`; `None` (reported) where this machine has no anvil at all.
    pub fn start_own() -> Option<Self> {
        let bin = peers::workspace_root().join(IN_NODE_MODULES);
        if bin.is_file() {
            return Some(Self::spawn(&bin));
        }
        match peers::available(Peer::Anvil)? {
            Location::Program(bin) => Some(Self::spawn(&bin)),
            Location::Url(url) => panic!(
                "a test needs an anvil of its own besides the shared one at {url}: run `npm ci` \
                 in contracts/ for the binary"
            ),
        }
    }

    fn spawn(bin: &std::path::Path) -> Self {
        let port = crate::free_port();
        let child = Command::new(bin)
            .args([
                "--hardfork",
                "osaka",
                "--port",
                &port.to_string(),
                "--silent",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child: Some(child),
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Whether other tests share this node (then they take turns: moving its clock or mining
    /// affects everyone on it).
    pub fn is_shared(&self) -> bool {
        self.child.is_none()
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
