//! An MQTT broker embedded in the process (rumqttd): the market engine's default broker, the
//! agent's demo, and tests that need a real broker without installing one.
//!
//! rumqttd has no shutdown call: the broker lives until the process ends. Tests that need a
//! broker outage run a Mosquitto process instead and kill it.

use std::net::SocketAddr;

/// Decides whether a client may log in, from its user name and password.
pub type LoginCheck = std::sync::Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// Starts a broker listening on `listen` (MQTT 3.1.1) on a thread of its own. Anyone may
/// connect: for the agent's demo and tests on loopback.
pub fn start_embedded(listen: SocketAddr) -> Result<(), String> {
    start(listen, None)
}

/// Like [`start_embedded`], but a client must log in with a user name and password that
/// `check` accepts; anything else is refused at CONNECT.
pub fn start_embedded_with_login(listen: SocketAddr, check: LoginCheck) -> Result<(), String> {
    start(listen, Some(check))
}

/// Bytes of one segment of rumqttd's in-memory log of a topic.
///
/// Design: rumqttd keeps every topic's recent messages in memory, in up to
/// [`SEGMENTS_PER_TOPIC`] segments, whether or not its subscribers have read them. At the
/// 100 MB × 10 once configured here, a meter publishing 1 KB a second grew the broker by 3.6 MB
/// an hour, without end, and a 50 000-message flood on one topic stayed resident for good. The
/// engine, in the same process, reads its topics within milliseconds, and acknowledges after
/// storing (a reading it has not stored stays in flight, outside the log), so a few MB per
/// topic is plenty.
pub const SEGMENT_BYTES: usize = 1 << 20;

/// Segments kept per topic (see [`SEGMENT_BYTES`]).
pub const SEGMENTS_PER_TOPIC: usize = 2;

fn start(listen: SocketAddr, check: Option<LoginCheck>) -> Result<(), String> {
    let config = format!(
        r#"
id = 0
[router]
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = {SEGMENT_BYTES}
max_segment_count = {SEGMENTS_PER_TOPIC}

[v4.1]
name = "v4-1"
listen = "{listen}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 65536
max_inflight_count = 200
dynamic_filters = true
"#
    );
    let mut config: rumqttd::Config =
        toml::from_str(&config).map_err(|e| format!("embedded broker config: {e}"))?;
    if let Some(check) = check {
        let server = config
            .v4
            .as_mut()
            .and_then(|servers| servers.get_mut("1"))
            .ok_or_else(|| "embedded broker config: no v4 listener".to_owned())?;
        server.set_auth_handler(move |_client_id, user: String, password: String| {
            let allowed = check(&user, &password);
            async move { allowed }
        });
    }
    // Fail now if the port is taken, rather than inside the broker thread.
    drop(
        std::net::TcpListener::bind(listen)
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?,
    );
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(target: "broker", "embedded broker stopped: {e}");
            }
        })
        .map_err(|e| format!("cannot start broker thread: {e}"))?;
    Ok(())
}
