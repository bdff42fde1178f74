//! A local anvil node for development and tests: the one `npm ci` installs into
//! `contracts/node_modules`, started with the Osaka rules (P256VERIFY at 0x100) on a free
//! loopback port, and killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running anvil child process.
#[derive(Debug)]
pub struct LocalAnvil {
    child: Child,
    url: String,
}

impl LocalAnvil {
    /// Where `npm ci` in `contracts/` puts anvil.
    pub fn binary() -> PathBuf {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
        ))
    }

    /// Starts anvil on a free loopback port and waits until it accepts connections.
    pub fn start() -> Result<Self, String> {
        let bin = Self::binary();
        if !bin.exists() {
            return Err(format!(
                "anvil not found at {}: run `npm ci` in contracts/ (or point the tests at a node with GRIDSHARE_TEST_ANVIL_URL)",
                bin.display()
            ));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
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
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let anvil = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(anvil);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("anvil did not listen on port {port} within 10 s"))
    }

    /// Its JSON-RPC URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for LocalAnvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
