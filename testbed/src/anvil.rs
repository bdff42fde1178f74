//! anvil (Foundry's EVM node) for the tests that settle and stake on a real node: the one
//! named by `GRIDSHARE_TEST_ANVIL_URL` (CI starts one), or a process started here from the
//! binary `npm ci` installs in `contracts/node_modules`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::peers::{self, Location, Peer};

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
            Location::Program(bin) => {
                let port = crate::free_port();
                let child = Command::new(&bin)
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
                Some(Self {
                    child: Some(child),
                    url: format!("http://127.0.0.1:{port}"),
                })
            }
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
