//! Who may talk to the broker: the embedded broker refuses anonymous clients and wrong
//! passwords, confines a meter to its own topics and reads readings only for the engine; the
//! shipped Mosquitto ACL does the same; the engine ingests through a TLS broker.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::{Mosquitto, Peer, mosquitto, peers};
use market_engine::broker::{issue_meter_credentials, revoke_meter_credentials};
use market_engine::config::EngineConfig;
use market_engine::server::Engine;
use meter_agent::agent::{self, AgentStats};
use meter_agent::config::AgentConfig;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, LastWill,
    MqttOptions, QoS,
};
use tokio::sync::{mpsc, watch};

use crate::{databases, engine_config, free_port, unique};

/// An engine with its embedded broker on a free port, whatever `GRIDSHARE_TEST_MQTT_URL` says.
async fn embedded_engine(community: &str, database_url: &str) -> (Engine, EngineConfig) {
    let mut config = engine_config(community, database_url);
    let port = free_port();
    config.mqtt.embedded_listen = format!("127.0.0.1:{port}");
    config.mqtt.url = format!("mqtt://127.0.0.1:{port}");
    (Engine::start(&config).await.unwrap(), config)
}

/// A meter id unique to this run (at most 32 characters).
fn meter_id(prefix: &str) -> String {
    let id = unique(prefix);
    id[id.len().saturating_sub(32)..]
        .trim_start_matches('-')
        .to_owned()
}

/// Registers a meter (any key: these tests are about the broker) and issues its credentials.
async fn approved_meter(engine: &Engine, meter: &str) -> String {
    let account = crate::household_account(&engine.store, "home").await;
    engine
        .store
        .register_meter(meter, account, &format!("04-{meter}"), "k", 0)
        .await
        .unwrap();
    issue_meter_credentials(&engine.store, meter).await.unwrap()
}

fn options(port: u16, id: &str, login: Option<(&str, &str)>) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    if let Some((user, password)) = login {
        o.set_credentials(user, password);
    }
    o
}

/// Connects; the event loop after the CONNACK, or the refusal.
async fn connect(options: MqttOptions) -> Result<(AsyncClient, EventLoop), ConnectionError> {
    let (client, mut events) = AsyncClient::new(options, 100);
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("no answer to CONNECT");
    outcome.map(|()| (client, events))
}

fn port_of(config: &EngineConfig) -> u16 {
    market_engine::config::broker_host_port(&config.mqtt.url)
        .unwrap()
        .1
}

fn refused_with(result: Result<(AsyncClient, EventLoop), ConnectionError>) -> ConnectReturnCode {
    match result {
        Err(ConnectionError::ConnectionRefused(code)) => code,
        Err(e) => panic!("expected a refusal at CONNACK, got {e}"),
        Ok(_) => panic!("expected a refusal at CONNACK, but the client was let in"),
    }
}

/// Polls until the broker closes the connection; panics if it stays open for 5 s.
async fn expect_disconnect(mut events: EventLoop, what: &str) {
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if events.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{what}: the client was not disconnected");
}

/// A client that collects what it receives on `filter`: (topic, payload, retained).
async fn subscriber(
    options: MqttOptions,
    filter: &str,
) -> mpsc::UnboundedReceiver<(String, Vec<u8>, bool)> {
    let (client, mut events) = connect(options).await.unwrap();
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _client = client;
        let mut subscribed_tx = Some(subscribed_tx);
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Incoming::SubAck(_))) => {
                    if let Some(s) = subscribed_tx.take() {
                        let _ = s.send(());
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec(), p.retain));
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed)
        .await
        .unwrap()
        .unwrap();
    rx
}

/// Publishes one QoS 1 message and waits for its PUBACK.
async fn publish_acked(options: MqttOptions, topic: &str, payload: &[u8], retain: bool) {
    let (client, mut events) = connect(options).await.unwrap();
    client
        .publish(topic, QoS::AtLeastOnce, retain, payload.to_vec())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Event::Incoming(Incoming::PubAck(_)) = events.poll().await.unwrap() {
                return;
            }
        }
    })
    .await
    .expect("no PUBACK");
}

/// Nothing arrives within `wait`.
async fn expect_nothing(rx: &mut mpsc::UnboundedReceiver<(String, Vec<u8>, bool)>, what: &str) {
    if let Ok(Some((topic, payload, _))) =
        tokio::time::timeout(Duration::from_millis(700), rx.recv()).await
    {
        panic!(
            "{what}: received {topic}: {}",
            String::from_utf8_lossy(&payload)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_refuses_anonymous_clients_and_wrong_passwords() {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let community = unique("auth");
        let (engine, config) = embedded_engine(&community, &url).await;
        let port = port_of(&config);
        let meter = meter_id("m");
        let password = approved_meter(&engine, &meter).await;

        let anonymous = connect(options(port, "anonymous", None)).await;
        assert_eq!(
            refused_with(anonymous),
            ConnectReturnCode::NotAuthorized,
            "{url}"
        );
        let wrong = connect(options(port, "guess", Some((&meter, "not-the-password")))).await;
        assert_eq!(refused_with(wrong), ConnectReturnCode::BadUserNamePassword);
        let unknown = connect(options(port, "who", Some(("nobody", &password)))).await;
        assert_eq!(
            refused_with(unknown),
            ConnectReturnCode::BadUserNamePassword
        );
        // The right password is let in.
        connect(options(port, "ok", Some((&meter, &password))))
            .await
            .unwrap();
        // Issuing again replaces the password; revoking refuses the new one too.
        let renewed = issue_meter_credentials(&engine.store, &meter)
            .await
            .unwrap();
        assert_ne!(renewed, password);
        let old = connect(options(port, "old", Some((&meter, &password)))).await;
        assert_eq!(refused_with(old), ConnectReturnCode::BadUserNamePassword);
        connect(options(port, "renewed", Some((&meter, &renewed))))
            .await
            .unwrap();
        assert!(
            revoke_meter_credentials(&engine.store, &meter)
                .await
                .unwrap()
        );
        let revoked = connect(options(port, "revoked", Some((&meter, &renewed)))).await;
        assert_eq!(
            refused_with(revoked),
            ConnectReturnCode::BadUserNamePassword
        );
        // Credentials are issued only for registered meters.
        assert!(
            issue_meter_credentials(&engine.store, "no-such-meter")
                .await
                .is_err()
        );

        let auth = &engine.broker_auth;
        assert_eq!(auth.logins_refused.load(Ordering::Relaxed), 5, "{url}");
        assert_eq!(auth.logins_accepted.load(Ordering::Relaxed), 2, "{url}");
        // As an operator sees them: scraped from the engine's /metrics.
        let text = crate::demo::http_get(engine.http.port(), "/metrics")
            .await
            .unwrap();
        assert!(
            text.contains("gridshare_broker_logins_total{outcome=\"refused\"} 5"),
            "{text}"
        );
        engine.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_reads_no_readings_and_publishes_only_its_own_topics() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("engine.sqlite").display());
    let community = unique("acl");
    let (engine, config) = embedded_engine(&community, &url).await;
    let port = port_of(&config);
    let (a, b) = (meter_id("a"), meter_id("b"));
    let (pass_a, pass_b) = (
        approved_meter(&engine, &a).await,
        approved_meter(&engine, &b).await,
    );
    let topics = |m: &str| gridshare_core::mqtt::MeterTopics::new("gridshare/v1", &community, m);
    let as_a = |id: &str| options(port, id, Some((&a, &pass_a)));
    let as_b = |id: &str| options(port, id, Some((&b, &pass_b)));
    let as_engine = |id: &str| crate::engine_client(&engine, &config, id.to_owned());

    // The engine's credential reads every reading.
    let mut readings = subscriber(
        as_engine("engine-view"),
        &gridshare_core::mqtt::readings_filter("gridshare/v1", &community),
    )
    .await;

    // Meter A cannot read readings: its subscription ends its connection, and nothing of
    // B's reaches it.
    let (sniffer, events) = connect(as_a("a-sniffer")).await.unwrap();
    sniffer
        .subscribe(
            format!("gridshare/v1/{community}/meters/+/reading"),
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    expect_disconnect(events, "subscribing to every meter's readings").await;
    let (sniffer, events) = connect(as_a("a-sniffer-2")).await.unwrap();
    sniffer.subscribe("#", QoS::AtMostOnce).await.unwrap();
    expect_disconnect(events, "subscribing to #").await;

    // B publishes; only the engine sees it.
    publish_acked(as_b("b"), &topics(&b).reading, b"reading of b", false).await;
    let (topic, payload, _) = tokio::time::timeout(Duration::from_secs(5), readings.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (topic, payload),
        (topics(&b).reading, b"reading of b".to_vec())
    );

    // A cannot publish B's reading, nor a retained status for B, nor into another community.
    for (topic, retain) in [
        (topics(&b).reading, false),
        (topics(&b).status, true),
        (
            gridshare_core::mqtt::MeterTopics::new("gridshare/v1", "elsewhere", &a).reading,
            false,
        ),
        (format!("gridshare/v1/{community}/market"), false),
        // Only the engine asks an agent to send readings again: a meter asking a neighbour's
        // agent (or its own) could make it flood the broker.
        (topics(&b).resend, false),
        (topics(&a).resend, false),
    ] {
        let (client, events) = connect(as_a("a-forger")).await.unwrap();
        client
            .publish(&topic, QoS::AtLeastOnce, retain, b"forged".to_vec())
            .await
            .unwrap();
        expect_disconnect(events, &format!("publishing to {topic}")).await;
    }
    expect_nothing(&mut readings, "a forged reading reached the engine").await;
    // No retained status for B exists (a new subscriber would get it at once).
    let mut status_b = subscriber(as_engine("status-view"), &topics(&b).status).await;
    expect_nothing(&mut status_b, "a forged retained status for B").await;
    // A's last will cannot name B's status either.
    let mut with_will = as_a("a-will");
    with_will.set_last_will(LastWill::new(
        topics(&b).status,
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    assert_eq!(
        refused_with(connect(with_will).await),
        ConnectReturnCode::NotAuthorized
    );

    // A's own topics work: a reading and a retained status, and it may read them back.
    let mut own = subscriber(
        as_a("a-own"),
        &format!(
            "{}/#",
            gridshare_core::mqtt::meter_base("gridshare/v1", &community, &a)
        ),
    )
    .await;
    publish_acked(as_a("a"), &topics(&a).status, b"online", true).await;
    publish_acked(as_a("a"), &topics(&a).reading, b"reading of a", false).await;
    let (topic, _, _) = tokio::time::timeout(Duration::from_secs(5), readings.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(topic, topics(&a).reading);
    // The engine's request to send readings again reaches A on A's resend topic.
    publish_acked(
        as_engine("engine-asks"),
        &topics(&a).resend,
        br#"{"ranges":[[1,2]]}"#,
        false,
    )
    .await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (topic, _, _) = tokio::time::timeout(Duration::from_secs(5), own.recv())
            .await
            .unwrap()
            .unwrap();
        seen.push(topic);
    }
    seen.sort();
    let mut want = vec![topics(&a).reading, topics(&a).status, topics(&a).resend];
    want.sort();
    assert_eq!(seen, want);
    // Client ids are kept apart per user: A cannot end the engine's session by taking its id.
    let (_, _) = connect(as_a(&format!("market-engine-{community}")))
        .await
        .unwrap();
    publish_acked(as_b("b"), &topics(&b).reading, b"still flowing", false).await;
    let (_, payload, _) = tokio::time::timeout(Duration::from_secs(5), readings.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(payload, b"still flowing");

    let auth = &engine.broker_auth;
    assert_eq!(auth.denied_subscribe.load(Ordering::Relaxed), 2);
    assert_eq!(auth.denied_publish.load(Ordering::Relaxed), 6);
    assert_eq!(auth.denied_will.load(Ordering::Relaxed), 1);
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_meter_agent_feeds_the_engine_and_revocation_cuts_it_off() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("engine.sqlite").display());
    let community = unique("agent");
    let (engine, config) = embedded_engine(&community, &url).await;
    let account = crate::household_account(&engine.store, "home").await;
    let agent_dir = tempfile::tempdir().unwrap();
    let key_file = agent_dir.path().join("meter.key");
    let public = meter_agent::keys::generate(&key_file, false).unwrap();
    let meter = meter_id("m");
    let device = crate::simulated_device("SIM-000001");
    crate::register_approved(
        &engine.store,
        &engine.keys,
        &meter,
        account,
        public,
        &device,
    )
    .await;
    let password = issue_meter_credentials(&engine.store, &meter)
        .await
        .unwrap();

    let server = crate::simulated_inverter().await;
    let mut agent_config = AgentConfig {
        meter_id: meter.clone(),
        community: community.clone(),
        key_file,
        data_dir: agent_dir.path().to_path_buf(),
        poll_interval_ms: 100,
        ..AgentConfig::default()
    };
    agent_config.modbus.address = server.addr.to_string();
    agent_config.mqtt.url = config.mqtt.url.clone();
    agent_config.mqtt.username = Some(meter.clone());
    agent_config.mqtt.password = Some(password);
    agent_config.mqtt.reconnect_max_ms = 500;
    let (stop, stopped) = watch::channel(false);
    let agent = tokio::spawn(agent::run(
        agent_config,
        stopped,
        Arc::new(AgentStats::default()),
    ));
    let wait = |what: &'static str, done: Box<dyn Fn() -> bool + Send>| async move {
        for _ in 0..200 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}");
    };
    let ingest = engine.ingest.clone();
    wait(
        "10 readings stored",
        Box::new(move || ingest.accepted.load(Ordering::Relaxed) >= 10),
    )
    .await;
    let stored = engine.store.readings(&meter, 0, 1000).await.unwrap();
    assert!(stored.len() >= 10);

    // Revoked: the open session ends within seconds and the agent's reconnects are refused.
    revoke_meter_credentials(&engine.store, &meter)
        .await
        .unwrap();
    let auth = engine.broker_auth.clone();
    wait(
        "the revoked session to end",
        Box::new(move || auth.sessions_revoked.load(Ordering::Relaxed) == 1),
    )
    .await;
    let auth = engine.broker_auth.clone();
    wait(
        "a refused reconnect",
        Box::new(move || auth.logins_refused.load(Ordering::Relaxed) >= 1),
    )
    .await;
    let before = engine.ingest.accepted.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        engine.ingest.accepted.load(Ordering::Relaxed),
        before,
        "nothing flows after revocation"
    );
    stop.send(true).unwrap();
    agent.await.unwrap().unwrap();
    engine.stop().await;
}

fn add_password(passwd_bin: &Path, file: &Path, user: &str, password: &str) {
    let status = Command::new(passwd_bin)
        .arg("-b")
        .arg(file)
        .arg(user)
        .arg(password)
        .status()
        .expect("mosquitto_passwd");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_mosquitto_acl_confines_meters_to_their_own_topics() {
    let dir = tempfile::tempdir().unwrap();
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/mosquitto");
    let Some(passwd_bin) = mosquitto::passwd_program() else {
        return;
    };
    let passwords = dir.path().join("gridshare.passwd");
    std::fs::write(&passwords, "").unwrap();
    let (pass_a, pass_b, pass_engine) = ("password-of-a", "password-of-b", "engine-password");
    add_password(&passwd_bin, &passwords, "home-a", pass_a);
    add_password(&passwd_bin, &passwords, "home-b", pass_b);
    add_password(&passwd_bin, &passwords, "market-engine", pass_engine);
    // The shipped files as they are, but for the port and where they live.
    let port = free_port();
    let acl = dir.path().join("gridshare.acl");
    std::fs::copy(dist.join("acl"), &acl).unwrap();
    let shipped = std::fs::read_to_string(dist.join("mosquitto.conf")).unwrap();
    let conf: String = shipped
        .lines()
        .map(|line| match line.split_whitespace().next() {
            Some("listener") => format!("listener {port} 127.0.0.1"),
            Some("password_file") => format!("password_file {}", passwords.display()),
            Some("acl_file") => format!("acl_file {}", acl.display()),
            Some("persistence_location") => {
                format!("persistence_location {}/", dir.path().display())
            }
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let Some(_broker) = Mosquitto::with_config(dir.path(), port, &conf) else {
        return;
    };

    let topics = |m: &str| gridshare_core::mqtt::MeterTopics::new("gridshare/v1", "demo", m);
    let mut engine_view = subscriber(
        options(
            port,
            "market-engine-demo",
            Some(("market-engine", pass_engine)),
        ),
        "gridshare/v1/demo/meters/+/reading",
    )
    .await;
    // Anonymous clients and wrong passwords are refused.
    assert!(matches!(
        connect(options(port, "anon", None)).await,
        Err(ConnectionError::ConnectionRefused(_))
    ));
    assert!(matches!(
        connect(options(port, "guess", Some(("home-a", "guess")))).await,
        Err(ConnectionError::ConnectionRefused(_))
    ));
    // A subscribes to every reading; B publishes: only the engine user gets it.
    let mut sniffer = subscriber(
        options(port, "a-sniffer", Some(("home-a", pass_a))),
        "gridshare/v1/demo/meters/+/reading",
    )
    .await;
    publish_acked(
        options(port, "b", Some(("home-b", pass_b))),
        &topics("home-b").reading,
        b"reading of b",
        false,
    )
    .await;
    let (topic, _, _) = tokio::time::timeout(Duration::from_secs(5), engine_view.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(topic, topics("home-b").reading);
    expect_nothing(&mut sniffer, "meter A read B's reading").await;
    // A publishes under B's topics and into another community: Mosquitto drops it.
    for (topic, retain) in [
        (topics("home-b").reading, false),
        (topics("home-b").status, true),
        ("gridshare/v1/other/meters/home-a/reading".to_owned(), false),
    ] {
        publish_to_mosquitto(
            options(port, "a-forger", Some(("home-a", pass_a))),
            &topic,
            b"forged",
            retain,
        )
        .await;
    }
    expect_nothing(&mut engine_view, "A's forged reading").await;
    let mut status_b = subscriber(
        options(port, "status-view", Some(("market-engine", pass_engine))),
        &topics("home-b").status,
    )
    .await;
    expect_nothing(&mut status_b, "A's forged retained status for B").await;
    // A's own reading goes through.
    publish_acked(
        options(port, "a", Some(("home-a", pass_a))),
        &topics("home-a").reading,
        b"reading of a",
        false,
    )
    .await;
    let (topic, _, _) = tokio::time::timeout(Duration::from_secs(5), engine_view.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(topic, topics("home-a").reading);

    // Only the engine asks A's agent to send readings again: B's and A's own requests on A's
    // resend topic go nowhere, the engine's arrives.
    let mut requests = subscriber(
        options(port, "a-requests", Some(("home-a", pass_a))),
        &topics("home-a").resend,
    )
    .await;
    for (user, password) in [("home-b", pass_b), ("home-a", pass_a)] {
        publish_to_mosquitto(
            options(port, &format!("{user}-asks"), Some((user, password))),
            &topics("home-a").resend,
            br#"{"ranges":[[1,1000]]}"#,
            false,
        )
        .await;
    }
    expect_nothing(&mut requests, "a meter's request on A's resend topic").await;
    publish_acked(
        options(port, "engine-asks", Some(("market-engine", pass_engine))),
        &topics("home-a").resend,
        br#"{"ranges":[[1,2]]}"#,
        false,
    )
    .await;
    let (topic, payload, _) = tokio::time::timeout(Duration::from_secs(5), requests.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (topic, payload),
        (topics("home-a").resend, br#"{"ranges":[[1,2]]}"#.to_vec())
    );
}

/// Publishes one QoS 1 message to Mosquitto, which may deny it: 2.0 answers a denied QoS 1
/// publish of an MQTT 3.1.1 client with a PUBACK carrying a reason code, which rumqttc takes
/// for a broken connection. Returns on the PUBACK, the error, or after two seconds.
async fn publish_to_mosquitto(options: MqttOptions, topic: &str, payload: &[u8], retain: bool) {
    let (client, mut events) = connect(options).await.unwrap();
    client
        .publish(topic, QoS::AtLeastOnce, retain, payload.to_vec())
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Incoming::PubAck(_))) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// A throw-away CA and a server certificate for 127.0.0.1 and localhost, made with the
/// `openssl` command line.
fn throwaway_pki(dir: &Path) {
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl must be installed for the TLS test");
        assert!(status.success(), "openssl {args:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=gridshare test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    // Mosquitto started as root reads the key after dropping to its own user: a throw-away
    // key in a throw-away directory may be readable by all.
    use std::os::unix::fs::PermissionsExt;
    for (path, mode) in [(dir.to_path_buf(), 0o755), (dir.join("server.key"), 0o644)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_ingests_through_a_tls_broker() {
    let dir = tempfile::tempdir().unwrap();
    let Some(passwd_bin) = mosquitto::passwd_program() else {
        return;
    };
    if peers::available(Peer::OpenSsl).is_none() {
        return;
    }
    throwaway_pki(dir.path());
    let passwords = dir.path().join("passwd");
    std::fs::write(&passwords, "").unwrap();
    add_password(&passwd_bin, &passwords, "market-engine", "engine-password");
    add_password(&passwd_bin, &passwords, "tls-meter", "meter-password");
    let port = free_port();
    let conf = format!(
        "listener {port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\nallow_anonymous false\npassword_file {}\nmax_inflight_messages 1000\nmax_queued_messages 0\n",
        passwords.display(),
        d = dir.path().display()
    );
    let Some(_broker) = Mosquitto::with_config(dir.path(), port, &conf) else {
        return;
    };

    let community = unique("tls");
    let url = format!("sqlite://{}", dir.path().join("engine.sqlite").display());
    let mut config = engine_config(&community, &url);
    config.mqtt.embedded_listen = String::new();
    config.mqtt.url = format!("mqtts://localhost:{port}");
    config.mqtt.ca_file = Some(dir.path().join("ca.pem"));
    config.mqtt.username = Some("market-engine".into());
    config.mqtt.password = Some("engine-password".into());
    // A CA file that is not there is named at start-up.
    let mut missing = config.clone();
    missing.mqtt.ca_file = Some(dir.path().join("no-such-ca.pem"));
    missing.database.url = format!("sqlite://{}", dir.path().join("other.sqlite").display());
    let err = Engine::start(&missing).await.err().unwrap().to_string();
    assert!(err.contains("no-such-ca.pem"), "{err}");
    let engine = Engine::start(&config).await.unwrap();
    let account = crate::household_account(&engine.store, "home").await;
    let agent_dir = tempfile::tempdir().unwrap();
    let key_file = agent_dir.path().join("meter.key");
    let public = meter_agent::keys::generate(&key_file, false).unwrap();
    let device = crate::simulated_device("SIM-000001");
    crate::register_approved(
        &engine.store,
        &engine.keys,
        "tls-meter",
        account,
        public,
        &device,
    )
    .await;
    let server = crate::simulated_inverter().await;
    let mut agent_config = AgentConfig {
        meter_id: "tls-meter".into(),
        community: community.clone(),
        key_file,
        data_dir: agent_dir.path().to_path_buf(),
        poll_interval_ms: 100,
        ..AgentConfig::default()
    };
    agent_config.modbus.address = server.addr.to_string();
    agent_config.mqtt.url = format!("mqtts://localhost:{port}");
    agent_config.mqtt.ca_file = Some(dir.path().join("ca.pem"));
    agent_config.mqtt.username = Some("tls-meter".into());
    agent_config.mqtt.password = Some("meter-password".into());
    let (stop, stopped) = watch::channel(false);
    let agent = tokio::spawn(agent::run(
        agent_config,
        stopped,
        Arc::new(AgentStats::default()),
    ));
    for _ in 0..300 {
        if engine.ingest.accepted.load(Ordering::Relaxed) >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored = engine.store.readings("tls-meter", 0, 1000).await.unwrap();
    assert!(
        stored.len() >= 10,
        "readings arrived over TLS: {}",
        stored.len()
    );
    stop.send(true).unwrap();
    agent.await.unwrap().unwrap();
    engine.stop().await;
}
