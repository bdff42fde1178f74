//! The gate: the embedded broker's public MQTT 3.1.1 listener. It checks each client's login
//! and every packet the client sends against the access rules, and forwards what is allowed,
//! byte for byte, to rumqttd on a loopback port only the gate and the engine can log in to.
//! What rumqttd sends back is passed through untouched.
//!
//! Design: rumqttd 0.20 can check a password but has no topic access control and no hook on
//! a client's publishes, so the rules are enforced in front of it. Only client → broker
//! packets are parsed (with rumqttc's MQTT 3.1.1 codec); whole frames are forwarded from the
//! bytes received, so the hot path is one header check and one topic comparison per publish.
//! A client that breaks a rule is disconnected, not silently dropped: a misconfigured agent
//! then keeps its readings in its outbox (it deletes a reading only on PUBACK) instead of
//! losing them to a broker that acknowledged and discarded them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{ConnAck, Connect, ConnectReturnCode, Login, Publish, Subscribe};
use rumqttc::mqttbytes::{self, FixedHeader, PacketType, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use super::acl::Identity;
use super::credentials::password_hash;
use super::{BrokerAuthMetrics, ENGINE_USER};
use crate::store::Store;

/// Largest packet a client may send (the engine records an oversize reading as rejected, so
/// the gate lets through what the ingest checks should see).
const MAX_PACKET: usize = 1 << 20;

/// Time a new connection has to send its CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a client connection needs.
pub(crate) struct Gate {
    pub(crate) store: Store,
    pub(crate) prefix: String,
    pub(crate) community: String,
    /// rumqttd's loopback listener.
    pub(crate) upstream: SocketAddr,
    /// The password the gate logs in to rumqttd with on a client's behalf.
    pub(crate) gate_password: String,
    /// SHA-256 of the engine's own password.
    pub(crate) engine_hash: String,
    pub(crate) metrics: Arc<BrokerAuthMetrics>,
    pub(crate) sessions: Sessions,
    /// Bounds the credential lookups in progress, so a flood of logins queues instead of
    /// taking every database connection from the ingest.
    pub(crate) lookups: tokio::sync::Semaphore,
}

/// Open sessions by user name, so that a revoked or re-issued credential cuts them.
#[derive(Default)]
pub(crate) struct Sessions {
    next: AtomicU64,
    open: Mutex<HashMap<String, Vec<Session>>>,
}

struct Session {
    id: u64,
    /// The password hash it logged in with.
    hash: String,
    kill: Arc<Notify>,
}

impl Sessions {
    fn add(&self, user: &str, hash: &str) -> (u64, Arc<Notify>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let kill = Arc::new(Notify::new());
        if let Ok(mut open) = self.open.lock() {
            open.entry(user.to_owned()).or_default().push(Session {
                id,
                hash: hash.to_owned(),
                kill: kill.clone(),
            });
        }
        (id, kill)
    }

    fn remove(&self, user: &str, id: u64) {
        if let Ok(mut open) = self.open.lock()
            && let Some(list) = open.get_mut(user)
        {
            list.retain(|s| s.id != id);
            if list.is_empty() {
                open.remove(user);
            }
        }
    }

    /// Ends `user`'s sessions that did not log in with `live` (None: no live credential).
    /// Returns how many were ended.
    fn cut_stale(&self, user: &str, live: Option<&str>) -> u64 {
        let Ok(open) = self.open.lock() else {
            return 0;
        };
        let mut cut = 0;
        for s in open.get(user).into_iter().flatten() {
            if live != Some(s.hash.as_str()) {
                s.kill.notify_one();
                cut += 1;
            }
        }
        cut
    }

    fn is_open(&self, user: &str) -> bool {
        self.open.lock().is_ok_and(|o| o.contains_key(user))
    }
}

/// Accepts clients until `stop` turns true.
pub(crate) async fn accept(
    gate: Arc<Gate>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let gate = gate.clone();
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(&gate, stream, stop).await {
                            tracing::debug!(target: "broker", %peer, "connection closed: {e}");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors or similar: pause rather than spin.
                    tracing::warn!(target: "broker", "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

/// Every few seconds, ends sessions whose credentials were revoked or issued anew since.
pub(crate) async fn watch_revocations(gate: Arc<Gate>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut since = crate::pipeline::now_ms();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        // Overlap the windows: a row written with a clock a little behind is still seen.
        let started = crate::pipeline::now_ms();
        let changed = match gate
            .store
            .mqtt_credentials_changed_since(since.saturating_sub(10_000))
            .await
        {
            Ok(changed) => changed,
            Err(e) => {
                tracing::warn!(target: "broker", "cannot check for revoked credentials: {e}");
                continue;
            }
        };
        since = started;
        for user in changed {
            if !gate.sessions.is_open(&user) {
                continue;
            }
            match gate.store.live_mqtt_password_hash(&user).await {
                Ok(live) => {
                    let cut = gate.sessions.cut_stale(&user, live.as_deref());
                    if cut > 0 {
                        gate.metrics
                            .sessions_revoked
                            .fetch_add(cut, Ordering::Relaxed);
                        tracing::info!(target: "broker", user, sessions = cut, "credentials revoked or replaced: session ended");
                    }
                }
                Err(e) => tracing::warn!(target: "broker", user, "cannot check credentials: {e}"),
            }
        }
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum GateError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed packet: {0}")]
    Malformed(#[from] mqttbytes::Error),
    #[error("no CONNECT within {0:?}")]
    ConnectTimeout(Duration),
    #[error("first packet is not CONNECT")]
    NotConnect,
    #[error("login refused: {0}")]
    Refused(&'static str),
    #[error("{user}: {what} denied")]
    Denied { user: String, what: String },
    #[error("{0}")]
    Protocol(&'static str),
    #[error("credentials revoked")]
    Revoked,
    #[error("broker unreachable: {0}")]
    Upstream(std::io::Error),
}

/// Reads until one whole packet is buffered; returns its fixed header.
async fn read_frame(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<FixedHeader, GateError> {
    loop {
        match mqttbytes::check(buf.iter(), MAX_PACKET) {
            Ok(header) => return Ok(header),
            Err(mqttbytes::Error::InsufficientBytes(_)) => {
                if stream.read_buf(buf).await? == 0 {
                    return Err(GateError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn refuse(
    stream: &mut TcpStream,
    code: ConnectReturnCode,
    why: &'static str,
) -> Result<(), GateError> {
    let mut out = BytesMut::new();
    ConnAck {
        session_present: false,
        code,
    }
    .write(&mut out)?;
    // The client may be gone already; the refusal stands either way.
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
    Err(GateError::Refused(why))
}

async fn serve(
    gate: &Gate,
    mut client: TcpStream,
    mut stop: watch::Receiver<bool>,
) -> Result<(), GateError> {
    let _ = client.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let header = tokio::time::timeout(CONNECT_TIMEOUT, read_frame(&mut client, &mut buf))
        .await
        .map_err(|_| GateError::ConnectTimeout(CONNECT_TIMEOUT))??;
    if header.packet_type()? != PacketType::Connect {
        return Err(GateError::NotConnect);
    }
    let frame = buf.split_to(header.frame_length()).freeze();
    let connect = match Connect::read(header, frame) {
        Ok(c) if c.protocol == Protocol::V4 => c,
        Ok(_)
        | Err(mqttbytes::Error::InvalidProtocolLevel(_) | mqttbytes::Error::InvalidProtocol) => {
            return refuse(
                &mut client,
                ConnectReturnCode::RefusedProtocolVersion,
                "only MQTT 3.1.1",
            )
            .await;
        }
        Err(e) => return Err(e.into()),
    };

    // Who is it?
    let Some(login) = &connect.login else {
        gate.metrics.logins_refused.fetch_add(1, Ordering::Relaxed);
        tracing::info!(target: "broker", client_id = connect.client_id, "login refused: no user name and password");
        return refuse(
            &mut client,
            ConnectReturnCode::NotAuthorized,
            "no credentials",
        )
        .await;
    };
    let presented = password_hash(&login.password);
    let identity = if login.username == ENGINE_USER && presented == gate.engine_hash {
        Identity::Engine
    } else {
        let permit = gate.lookups.acquire().await.ok();
        let stored = gate.store.live_mqtt_password_hash(&login.username).await;
        drop(permit);
        let stored = stored.map_err(|e| {
            tracing::warn!(target: "broker", "credential lookup failed: {e}");
            GateError::Protocol("credential lookup failed")
        });
        match stored {
            Ok(Some(hash)) if hash == presented => {
                Identity::meter(&gate.prefix, &gate.community, &login.username)
            }
            Ok(_) => {
                gate.metrics.logins_refused.fetch_add(1, Ordering::Relaxed);
                tracing::info!(target: "broker", user = login.username, "login refused: wrong user name or password");
                return refuse(
                    &mut client,
                    ConnectReturnCode::BadUserNamePassword,
                    "wrong user name or password",
                )
                .await;
            }
            Err(e) => {
                let _ = refuse(
                    &mut client,
                    ConnectReturnCode::ServiceUnavailable,
                    "lookup failed",
                )
                .await;
                return Err(e);
            }
        }
    };
    if let Some(will) = &connect.last_will
        && !identity.may_publish(&will.topic)
    {
        gate.metrics.denied_will.fetch_add(1, Ordering::Relaxed);
        tracing::info!(target: "broker", user = identity.name(), topic = will.topic, "last will on a topic the client may not publish: login refused");
        return refuse(
            &mut client,
            ConnectReturnCode::NotAuthorized,
            "last will topic not allowed",
        )
        .await;
    }
    // rumqttd refuses client ids with these characters, and a refused link leaves state
    // behind that breaks the next login with the same id: refuse them here.
    if connect.client_id.contains(['+', '$', '#', '/']) {
        return refuse(
            &mut client,
            ConnectReturnCode::BadClientId,
            "client id with + $ # or /",
        )
        .await;
    }
    if connect.client_id.is_empty() && !connect.clean_session {
        return refuse(
            &mut client,
            ConnectReturnCode::BadClientId,
            "a persistent session needs a client id",
        )
        .await;
    }
    gate.metrics.logins_accepted.fetch_add(1, Ordering::Relaxed);

    // Log in to rumqttd on the client's behalf. The client id is put under the user name, so
    // that no client can take over another's session (rumqttd ends an older connection with
    // the same client id, and hands it that client's persistent session). An empty id gets
    // one of its own, as the broker would assign it.
    let user = login.username.clone();
    let kind = match identity {
        Identity::Engine => "engine",
        Identity::Meter { .. } => "meter",
    };
    let client_id = if connect.client_id.is_empty() {
        let n = gate.sessions.next.fetch_add(1, Ordering::Relaxed);
        format!("{kind}:{user}:~{n}")
    } else {
        format!("{kind}:{user}:{}", connect.client_id)
    };
    let forwarded = Connect {
        client_id,
        login: Some(Login {
            username: user.clone(),
            password: gate.gate_password.clone(),
        }),
        ..connect
    };
    let mut upstream = TcpStream::connect(gate.upstream)
        .await
        .map_err(GateError::Upstream)?;
    let _ = upstream.set_nodelay(true);
    let mut out = BytesMut::with_capacity(8 * 1024);
    forwarded.write(&mut out)?;
    upstream.write_all(&out).await?;
    // Hold the connection to rumqttd until its CONNACK: rumqttd 0.20 mishandles a client that
    // leaves before its CONNACK is written (the next login with that client id fails), so the
    // gate never lets that happen, whatever the client does.
    let mut answer = BytesMut::with_capacity(64);
    let header = tokio::time::timeout(CONNECT_TIMEOUT, read_frame(&mut upstream, &mut answer))
        .await
        .map_err(|_| GateError::ConnectTimeout(CONNECT_TIMEOUT))??;
    if header.packet_type()? != PacketType::ConnAck {
        return Err(GateError::Protocol(
            "the broker did not answer with CONNACK",
        ));
    }
    client.write_all(&answer).await?;

    let (session, kill) = gate.sessions.add(&user, &presented);
    let result = relay(gate, &identity, client, upstream, buf, &kill, &mut stop).await;
    gate.sessions.remove(&user, session);
    result
}

/// Passes broker → client bytes through and checks every client → broker packet.
async fn relay(
    gate: &Gate,
    identity: &Identity,
    client: TcpStream,
    upstream: TcpStream,
    mut buf: BytesMut,
    kill: &Notify,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), GateError> {
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut upstream_rx, mut upstream_tx) = upstream.into_split();
    let downstream = async {
        tokio::io::copy(&mut upstream_rx, &mut client_tx).await?;
        let _ = client_tx.shutdown().await;
        Ok::<(), GateError>(())
    };
    let upstream_side = async {
        loop {
            let (allowed, end) = screen(&gate.metrics, identity, &mut buf)?;
            if !allowed.is_empty() {
                upstream_tx.write_all(&allowed).await?;
            }
            match end {
                // rumqttd closes the connection once it has handled the DISCONNECT (and
                // discarded the will); closing it first makes it handle the loss twice.
                Some(End::Disconnect) => {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    return Ok(());
                }
                Some(End::Denied(e)) => {
                    let _ = upstream_tx.shutdown().await;
                    return Err(e);
                }
                None => {}
            }
            // Room for many publishes per read: fewer reads and writes per reading.
            if buf.capacity() - buf.len() < 16 * 1024 {
                buf.reserve(64 * 1024);
            }
            if client_rx.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
    };
    tokio::select! {
        r = downstream => r,
        r = upstream_side => r,
        () = kill.notified() => Err(GateError::Revoked),
        _ = stop.changed() => Ok(()),
    }
}

/// The topic of a PUBLISH frame, in place; `None` if the frame is too short for it.
fn publish_topic(frame: &[u8]) -> Option<&[u8]> {
    // Byte 0 is the type and flags, then 1 to 4 bytes of remaining length (high bit: more).
    let mut at = 1;
    while frame.get(at)? & 0x80 != 0 {
        at += 1;
        if at > 4 {
            return None;
        }
    }
    let start = at + 1;
    let len = usize::from(u16::from_be_bytes([
        *frame.get(start)?,
        *frame.get(start + 1)?,
    ]));
    frame.get(start + 2..start + 2 + len)
}

enum End {
    Disconnect,
    Denied(GateError),
}

/// Takes every whole packet out of `buf`; returns the bytes to forward (the packets up to the
/// first one that ends the connection) and why the connection ends, if it does.
fn screen(
    metrics: &BrokerAuthMetrics,
    identity: &Identity,
    buf: &mut BytesMut,
) -> Result<(Bytes, Option<End>), GateError> {
    let mut offset = 0;
    let mut frames = Vec::new();
    loop {
        match mqttbytes::check(buf[offset..].iter(), MAX_PACKET) {
            Ok(header) => {
                frames.push((offset, header));
                offset += header.frame_length();
            }
            Err(mqttbytes::Error::InsufficientBytes(_)) => break,
            Err(e) => return Err(e.into()),
        }
    }
    let chunk = buf.split_to(offset).freeze();
    for (at, header) in frames {
        let frame = chunk.slice(at..at + header.frame_length());
        let end = match header.packet_type()? {
            PacketType::Publish => {
                // The hot path: one comparison on the topic bytes in place.
                if publish_topic(&frame)
                    .and_then(|t| std::str::from_utf8(t).ok())
                    .is_some_and(|t| identity.may_publish(t))
                {
                    continue;
                }
                let publish = Publish::read(header, frame)?;
                if identity.may_publish(&publish.topic) {
                    continue;
                }
                metrics.denied_publish.fetch_add(1, Ordering::Relaxed);
                tracing::info!(target: "broker", user = identity.name(), topic = publish.topic, qos = ?publish.qos, "publish denied: disconnected");
                End::Denied(GateError::Denied {
                    user: identity.name().to_owned(),
                    what: format!("publish to {}", publish.topic),
                })
            }
            PacketType::Subscribe => {
                let subscribe = Subscribe::read(header, frame)?;
                match subscribe
                    .filters
                    .iter()
                    .find(|f| !identity.may_subscribe(&f.path))
                {
                    None => continue,
                    Some(f) => {
                        metrics.denied_subscribe.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(target: "broker", user = identity.name(), filter = f.path, "subscribe denied: disconnected");
                        End::Denied(GateError::Denied {
                            user: identity.name().to_owned(),
                            what: format!("subscribe to {}", f.path),
                        })
                    }
                }
            }
            PacketType::PubAck
            | PacketType::PubRec
            | PacketType::PubRel
            | PacketType::PubComp
            | PacketType::Unsubscribe
            | PacketType::PingReq => continue,
            PacketType::Disconnect => {
                return Ok((
                    chunk.slice(..at + header.frame_length()),
                    Some(End::Disconnect),
                ));
            }
            PacketType::Connect => End::Denied(GateError::Protocol("second CONNECT")),
            PacketType::ConnAck
            | PacketType::SubAck
            | PacketType::UnsubAck
            | PacketType::PingResp => {
                End::Denied(GateError::Protocol("a broker's packet from a client"))
            }
        };
        return Ok((chunk.slice(..at), Some(end)));
    }
    Ok((chunk, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::QoS;
    use rumqttc::mqttbytes::v4::{PingReq, SubscribeFilter};

    fn publish(topic: &str) -> BytesMut {
        let mut out = BytesMut::new();
        let mut p = Publish::new(topic, QoS::AtLeastOnce, b"x".to_vec());
        p.pkid = 1;
        p.write(&mut out).unwrap();
        out
    }

    #[test]
    fn allowed_packets_pass_whole_and_a_denied_one_ends_the_connection_before_it() {
        let metrics = BrokerAuthMetrics::default();
        let meter = Identity::meter("gridshare/v1", "elm", "home-01");
        let own = publish("gridshare/v1/elm/meters/home-01/reading");
        let mut ping = BytesMut::new();
        PingReq.write(&mut ping).unwrap();
        let foreign = publish("gridshare/v1/elm/meters/home-02/reading");

        // Two allowed packets and half of a third: the whole ones pass, the half waits.
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&own);
        buf.extend_from_slice(&ping);
        buf.extend_from_slice(&own[..3]);
        let (allowed, end) = screen(&metrics, &meter, &mut buf).unwrap();
        assert!(end.is_none());
        assert_eq!(allowed.len(), own.len() + ping.len());
        assert_eq!(&buf[..], &own[..3]);

        // The rest of it, then a publish under another meter's topic, then one of its own.
        buf.extend_from_slice(&own[3..]);
        buf.extend_from_slice(&foreign);
        buf.extend_from_slice(&own);
        let (allowed, end) = screen(&metrics, &meter, &mut buf).unwrap();
        assert_eq!(
            &allowed[..],
            &own[..],
            "only what came before the denied publish"
        );
        assert!(matches!(end, Some(End::Denied(GateError::Denied { .. }))));
        assert_eq!(metrics.denied_publish.load(Ordering::Relaxed), 1);

        let mut sub = BytesMut::new();
        let mut subscribe = Subscribe::new_many([SubscribeFilter::new(
            "gridshare/v1/elm/meters/+/reading".into(),
            QoS::AtLeastOnce,
        )]);
        subscribe.pkid = 2;
        subscribe.write(&mut sub).unwrap();
        let (allowed, end) = screen(&metrics, &meter, &mut sub).unwrap();
        assert!(allowed.is_empty());
        assert!(end.is_some());
        assert_eq!(metrics.denied_subscribe.load(Ordering::Relaxed), 1);
        // A publish longer than 127 bytes (two bytes of remaining length) is read right.
        let mut big = BytesMut::new();
        let mut p = Publish::new(
            "gridshare/v1/elm/meters/home-01/reading",
            QoS::AtLeastOnce,
            vec![b'x'; 20_000],
        );
        p.pkid = 3;
        p.write(&mut big).unwrap();
        assert_eq!(
            publish_topic(&big),
            Some(&b"gridshare/v1/elm/meters/home-01/reading"[..])
        );
        assert_eq!(publish_topic(&big[..3]), None);
        // The engine passes everything.
        let mut buf = foreign.clone();
        let (allowed, end) = screen(&metrics, &Identity::Engine, &mut buf).unwrap();
        assert!(end.is_none());
        assert_eq!(&allowed[..], &foreign[..]);
    }
}
