//! The engine's embedded MQTT broker with authentication and topic access control.
//!
//! - [`credentials`]: meters' MQTT credentials in the database (issued when the operator
//!   approves a meter, replaced, revoked);
//! - [`acl`]: who may publish and subscribe where;
//! - the gate (private): the public listener that enforces both in front of rumqttd.
//!
//! Design: rumqttd listens on a loopback port of its own, where only the gate (with a password
//! generated at start-up, on behalf of a client it checked) and the engine (with its own
//! generated password) can log in. Nothing in the database or on disk lets anyone else in.

mod acl;
pub mod credentials;
mod gate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::sync::watch;

pub use acl::Identity;
pub use credentials::{
    CredentialError, issue_meter_credentials, password_hash, revoke_meter_credentials,
};

use crate::store::Store;

/// The engine's user name at its embedded broker.
pub const ENGINE_USER: &str = "market-engine";

/// Counters of the broker's logins and access-rule denials (Prometheus counters).
#[derive(Debug, Default)]
pub struct BrokerAuthMetrics {
    /// Logins accepted at the gate.
    pub logins_accepted: AtomicU64,
    /// Logins refused: no credentials, unknown user, wrong or revoked password.
    pub logins_refused: AtomicU64,
    /// Publishes to a topic the client may not publish to (the client is disconnected).
    pub denied_publish: AtomicU64,
    /// Subscriptions to a filter the client may not read (the client is disconnected).
    pub denied_subscribe: AtomicU64,
    /// Logins naming a last will on a topic the client may not publish to (refused).
    pub denied_will: AtomicU64,
    /// Open sessions ended because their credentials were revoked or issued anew.
    pub sessions_revoked: AtomicU64,
}

/// Why the embedded broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The public listener.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// rumqttd on its loopback port.
    #[error("embedded broker: {0}")]
    Broker(String),
    /// No random secret.
    #[error(transparent)]
    Credentials(#[from] CredentialError),
}

/// A running embedded broker.
#[derive(Debug, Clone)]
pub struct EmbeddedBroker {
    /// Where clients connect (the gate).
    pub listen: SocketAddr,
    /// rumqttd's loopback port, for the engine's own subscription.
    pub internal: SocketAddr,
    engine_password: String,
}

impl EmbeddedBroker {
    /// Starts rumqttd on a free loopback port and the gate on `listen`, for meters of
    /// `community` under the topic prefix `prefix`; runs until `stop` turns true (rumqttd
    /// itself lives until the process ends, reachable by no one once the gate is closed).
    pub async fn start(
        listen: SocketAddr,
        store: Store,
        prefix: &str,
        community: &str,
        metrics: Arc<BrokerAuthMetrics>,
        stop: watch::Receiver<bool>,
    ) -> Result<(Self, Vec<tokio::task::JoinHandle<()>>), BrokerError> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| BrokerError::Listen {
                addr: listen,
                source,
            })?;
        let listen = listener
            .local_addr()
            .map_err(|source| BrokerError::Listen {
                addr: listen,
                source,
            })?;
        let gate_password = credentials::random_secret()?;
        let engine_password = credentials::random_secret()?;
        let internal = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| BrokerError::Broker(format!("no free loopback port: {e}")))?;
        let (gate_hash, engine_hash) = (
            password_hash(&gate_password),
            password_hash(&engine_password),
        );
        let check_engine_hash = engine_hash.clone();
        gridshare_mqtt::broker::start_embedded_with_login(
            internal,
            Arc::new(move |user: &str, password: &str| {
                let presented = password_hash(password);
                presented == gate_hash || (user == ENGINE_USER && presented == check_engine_hash)
            }),
        )
        .map_err(BrokerError::Broker)?;
        // rumqttd binds on its own thread: wait until it answers.
        let mut ready = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(internal).await.is_ok() {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !ready {
            return Err(BrokerError::Broker(format!(
                "rumqttd did not start on {internal}"
            )));
        }
        let gate = Arc::new(gate::Gate {
            store,
            prefix: prefix.to_owned(),
            community: community.to_owned(),
            upstream: internal,
            gate_password,
            engine_hash,
            metrics,
            sessions: gate::Sessions::default(),
            lookups: tokio::sync::Semaphore::new(8),
        });
        let tasks = vec![
            tokio::spawn(gate::accept(gate.clone(), listener, stop.clone())),
            tokio::spawn(gate::watch_revocations(gate, stop)),
        ];
        tracing::info!(target: "broker", %listen, "embedded broker: meters log in with their issued credentials");
        Ok((
            Self {
                listen,
                internal,
                engine_password,
            },
            tasks,
        ))
    }

    /// The engine's own login (user name, password), generated at start-up. It may publish
    /// and subscribe anywhere, at the gate and at rumqttd's loopback port.
    pub fn engine_login(&self) -> (String, String) {
        (ENGINE_USER.to_owned(), self.engine_password.clone())
    }
}
