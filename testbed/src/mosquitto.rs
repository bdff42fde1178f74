//! A Mosquitto process on a free port that a test starts, stops and kills: broker outages,
//! persistence, password files and TLS listeners that the embedded broker cannot stand in for
//! (rumqttd has no shutdown call).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::peers::{self, Peer};

/// A running (or stopped, to be restarted) Mosquitto. Killed when dropped.
#[derive(Debug)]
pub struct Mosquitto {
    child: Option<Child>,
    bin: PathBuf,
    conf: PathBuf,
    /// The port it listens on.
    pub port: u16,
}

impl Mosquitto {
    /// Mosquitto on a free loopback port, anonymous clients allowed, with `extra` lines of
    /// configuration (e.g. `persistence true`); `None` when this machine has no Mosquitto
    /// (reported as in [`peers::available`]).
    pub fn start(dir: &Path, extra: &str) -> Option<Self> {
        let port = free_port();
        Self::with_config(
            dir,
            port,
            &format!("listener {port} 127.0.0.1\nallow_anonymous true\n{extra}"),
        )
    }

    /// Mosquitto with the whole configuration `config`, which must listen on `port` (the one
    /// waited for).
    pub fn with_config(dir: &Path, port: u16, config: &str) -> Option<Self> {
        let bin = peers::program(Peer::Mosquitto)?;
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        std::fs::write(&conf, config).expect("the test directory is writable");
        let mut m = Self {
            child: None,
            bin,
            conf,
            port,
        };
        m.restart();
        Some(m)
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Starts it again with the same configuration, and waits until its port answers.
    pub fn restart(&mut self) {
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "mosquitto did not start on port {} with {}",
            self.port,
            self.conf.display()
        );
    }

    /// Stops it the way an operator does (SIGTERM, so it saves persistent sessions) and waits
    /// until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    /// Kills it at once (SIGKILL): nothing is saved.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `mosquitto_passwd`, installed beside the broker; `None` (reported) where this machine has no
/// Mosquitto.
pub fn passwd_program() -> Option<PathBuf> {
    let bin = peers::program(Peer::Mosquitto)?;
    bin.parent()
        .map(|d| d.join("mosquitto_passwd"))
        .filter(|p| p.is_file())
        .or_else(|| {
            ["/usr/bin/mosquitto_passwd", "/usr/sbin/mosquitto_passwd"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
        })
        .or_else(|| Some(PathBuf::from("mosquitto_passwd")))
}

/// A free TCP port on loopback (free when asked; a test binds it soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("loopback has free ports")
}
