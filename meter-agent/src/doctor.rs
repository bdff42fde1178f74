//! `meter-agent doctor`: checks a configured installation end to end — the device answers, the
//! key is readable only by its user, the broker accepts the login, a reading is acknowledged,
//! the clock is synchronised — and says what to fix for each check that fails.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, ConnectReturnCode, Event, Incoming, MqttOptions, QoS, Transport};
use tokio::sync::watch;

use crate::agent::{self, AgentStats};
use crate::config::{AgentConfig, ClockPolicy, DeviceKind};
use crate::device::{Device, PollError, ProfileDevice, Sample, Snapshot, SunSpecDevice};
use crate::publish::{BrokerUrl, Topics};
use crate::sunspec::SunSpecError;
use crate::transport::{LinkError, ModbusLink};

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked: `device`, `key`, `broker`, `reading`, `clock`.
    pub name: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What to do, when it failed.
    pub fix: Option<String>,
}

fn pass(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        ok: true,
        detail: detail.into(),
        fix: None,
    }
}

fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        ok: false,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// Runs every check in order. The reading check runs only when the device, key and broker
/// checks passed (it needs all three).
pub async fn run(config: &AgentConfig) -> Vec<Check> {
    let mut checks = vec![device(config).await, key(config), broker(config).await];
    if checks.iter().all(|c| c.ok) {
        checks.push(reading(config).await);
    } else {
        checks.push(fail(
            "reading",
            "not tried: the checks above must pass first",
            "fix the failures above, then run doctor again",
        ));
    }
    checks.push(clock(config).await);
    checks
}

fn describe(s: &Snapshot) -> String {
    let show = |name: &str, sample: &Sample, unit: &str| match sample {
        Sample::Value(v) => Some(format!("{name} {v} {unit}")),
        Sample::NotImplemented => None,
        Sample::Implausible(e) | Sample::DeviceError(e) => Some(format!("{name}: {e}")),
    };
    let parts: Vec<String> = [
        show("import", &s.import_wh, "Wh"),
        show("export", &s.export_wh, "Wh"),
        show("power", &s.power_w, "W"),
        show("battery charged", &s.battery_charge_wh, "Wh"),
        show("battery discharged", &s.battery_discharge_wh, "Wh"),
        show("SoC", &s.soc_bp, "bp"),
        show("PV power", &s.pv_power_w, "W"),
        show("PV produced", &s.pv_wh, "Wh"),
        show("battery power", &s.battery_power_w, "W"),
    ]
    .into_iter()
    .flatten()
    .collect();
    parts.join(", ")
}

async fn device(config: &AgentConfig) -> Check {
    let mut link = ModbusLink::new(config.modbus.clone());
    let target = config.modbus.address.clone();
    let unit = config.modbus.unit_id;
    let polled: Result<(String, Snapshot), PollError> = async {
        let (what, device) = match config.device.kind {
            DeviceKind::Profile => {
                let profile = config
                    .profile()
                    .map_err(|e| PollError::Link(LinkError::Transport(format!("profile: {e}"))))?;
                let what = format!("register profile {}", profile.name);
                (
                    what,
                    Device::Profile(ProfileDevice {
                        profile,
                        identity: config.identity().unwrap_or_default(),
                    }),
                )
            }
            DeviceKind::Sunspec => {
                let d = SunSpecDevice::discover(&mut link, config.device.sunspec.clone()).await?;
                let ids: Vec<String> = d.map.models.iter().map(|m| m.id.to_string()).collect();
                let what = format!(
                    "SunSpec at {} ({} {} {}), models {}",
                    d.map.base,
                    d.identity.manufacturer,
                    d.identity.model,
                    d.identity.serial,
                    ids.join(" ")
                );
                (what, Device::SunSpec(d))
            }
        };
        let mut snapshot = device.poll(&mut link).await?;
        for extra in config.extra_devices().unwrap_or_default() {
            extra.poll_into(&mut link, unit, &mut snapshot).await?;
        }
        Ok((what, snapshot))
    }
    .await;
    link.disconnect().await;
    match polled {
        Ok((what, snapshot)) => {
            let values = describe(&snapshot);
            let any = [&snapshot.import_wh, &snapshot.export_wh, &snapshot.power_w]
                .iter()
                .any(|s| matches!(s, Sample::Value(_)));
            if any {
                pass("device", format!("{target} unit {unit}: {what}; {values}"))
            } else {
                fail(
                    "device",
                    format!(
                        "{target} unit {unit}: {what} answers, but gives no energy or power: {values}"
                    ),
                    "check that this is the grid meter or inverter (not a battery alone), or pick another profile: `meter-agent devices`",
                )
            }
        }
        Err(PollError::SunSpec(SunSpecError::NotSunSpec(_))) => fail(
            "device",
            format!("{target} unit {unit} answers but has no SunSpec map"),
            "set [device] kind = \"profile\" with a profile from `meter-agent devices`, or the unit id the device uses for SunSpec (SMA 126, Kostal 71, Fronius meter 200)",
        ),
        Err(
            PollError::Link(LinkError::Connect { reason, .. })
            | PollError::SunSpec(SunSpecError::Link(LinkError::Connect { reason, .. })),
        ) => fail(
            "device",
            format!("cannot connect to {target}: {reason}"),
            "check [modbus] address (host:port; SolarEdge uses 1502) and that Modbus TCP is enabled on the device",
        ),
        Err(
            PollError::Link(LinkError::Timeout(ms))
            | PollError::SunSpec(SunSpecError::Link(LinkError::Timeout(ms))),
        ) => fail(
            "device",
            format!("{target} unit {unit} did not answer within {ms} ms"),
            "check [modbus] unit_id and, on RS-485, wiring, baud_rate and parity; some devices need a longer timeout_ms or connect_delay_ms",
        ),
        Err(e) => fail(
            "device",
            format!("{target} unit {unit}: {e}"),
            "run `meter-agent discover` with the same config to see what the device answers",
        ),
    }
}

/// The real user id of this process, from /proc (no libc call needed).
fn current_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn key(config: &AgentConfig) -> Check {
    let path = config.key_file.display().to_string();
    let meta = match std::fs::metadata(&config.key_file) {
        Ok(m) => m,
        Err(e) => {
            return fail(
                "key",
                format!("{path}: {e}"),
                format!("create it as the agent's user: `meter-agent keygen --out {path}`"),
            );
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return fail(
            "key",
            format!("{path} has mode {mode:o}: group or others can read the meter's signing key"),
            format!("chmod 600 {path}"),
        );
    }
    if let Some(uid) = current_uid()
        && meta.uid() != uid
    {
        return fail(
            "key",
            format!(
                "{path} belongs to uid {}, the agent runs as uid {uid}",
                meta.uid()
            ),
            format!(
                "chown the key to the agent's user (`sudo chown gridshare {path}`) or run doctor as that user"
            ),
        );
    }
    match crate::keys::load(&config.key_file) {
        Ok(k) => pass(
            "key",
            format!("{path} (mode {mode:o}), key id {}", k.public_key().key_id()),
        ),
        Err(e) => fail(
            "key",
            e.to_string(),
            format!(
                "replace it: `meter-agent keygen --force --out {path}` (the meter then needs approving again)"
            ),
        ),
    }
}

fn mqtt_options(config: &AgentConfig, client_id: &str) -> Result<MqttOptions, String> {
    let url = BrokerUrl::parse(&config.mqtt.url).map_err(|e| e.to_string())?;
    let mut o = MqttOptions::new(client_id, url.host, url.port);
    o.set_keep_alive(Duration::from_secs(10))
        .set_clean_session(true);
    if let Some(user) = &config.mqtt.username {
        o.set_credentials(user, config.mqtt.password.clone().unwrap_or_default());
    }
    if url.tls {
        o.set_transport(Transport::tls_with_config(
            gridshare_mqtt::tls_config(config.mqtt.ca_file.as_deref())
                .map_err(|e| e.to_string())?,
        ));
    }
    Ok(o)
}

fn client_id(config: &AgentConfig) -> String {
    // Not the agent's own id: a broker drops the older of two sessions with one id, and doctor
    // must not throw a running agent off.
    format!(
        "{}-doctor",
        config
            .mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("meter-agent-{}", config.meter_id))
    )
}

async fn broker(config: &AgentConfig) -> Check {
    let url = &config.mqtt.url;
    let options = match mqtt_options(config, &client_id(config)) {
        Ok(o) => o,
        Err(e) => return fail("broker", e, "fix [mqtt] url / ca_file"),
    };
    let (client, mut events) = AsyncClient::new(options, 8);
    let outcome = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    let _ = client.disconnect().await;
    let login = config
        .mqtt
        .username
        .as_deref()
        .map_or_else(|| "without a login".to_owned(), |u| format!("as {u}"));
    match outcome {
        Ok(Ok(())) => pass("broker", format!("{url} accepted the connection {login}")),
        Ok(Err(rumqttc::ConnectionError::ConnectionRefused(code))) => {
            let fix = match code {
                ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => {
                    "check [mqtt] username and password: the login your operator gave with the meter's approval"
                }
                _ => "ask your community operator whether the broker accepts this meter",
            };
            fail(
                "broker",
                format!("{url} refused the login {login}: {code:?}"),
                fix,
            )
        }
        Ok(Err(e)) => fail(
            "broker",
            format!("{url}: {e}"),
            "check [mqtt] url (mqtt://host:port, mqtts:// for TLS) and that this machine reaches it",
        ),
        Err(_) => fail(
            "broker",
            format!("{url}: no answer within 5 s"),
            "check [mqtt] url and the firewall between this machine and the broker",
        ),
    }
}

/// The meter's retained status on the broker (`online` while an agent runs), if any.
async fn retained_status(config: &AgentConfig) -> Option<String> {
    let topics = Topics::new(
        &config.mqtt.topic_prefix,
        &config.community,
        &config.meter_id,
    );
    let options = mqtt_options(config, &format!("{}-status", client_id(config))).ok()?;
    let (client, mut events) = AsyncClient::new(options, 8);
    let status = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    let _ = client.subscribe(&topics.status, QoS::AtMostOnce).await;
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    return Some(String::from_utf8_lossy(&p.payload).into_owned());
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten();
    let _ = client.disconnect().await;
    status
}

async fn reading(config: &AgentConfig) -> Check {
    if let Some(status) = retained_status(config).await
        && status.contains("\"online\"")
    {
        // An agent runs: a second one on the same outbox would sign a second reading with
        // the sequence numbers the first one uses. Look at its outbox instead.
        let waiting = match crate::outbox::Outbox::open(
            &config.outbox_path(),
            &match config.meter_id() {
                Ok(m) => m,
                Err(e) => return fail("reading", e.to_string(), "fix meter_id"),
            },
        )
        .await
        {
            Ok((outbox, _)) => {
                let n = outbox.len().await.unwrap_or(0);
                outbox.close().await;
                n
            }
            Err(e) => return fail("reading", e.to_string(), "check data_dir"),
        };
        return if waiting < 10 {
            pass(
                "reading",
                format!(
                    "an agent is online for this meter and its outbox holds {waiting} unacknowledged readings"
                ),
            )
        } else {
            fail(
                "reading",
                format!(
                    "an agent is online but {waiting} readings wait for the broker's acknowledgement"
                ),
                "look at `journalctl -u meter-agent` for publish errors; the readings are kept and sent once the broker acknowledges",
            )
        };
    }
    let stats = Arc::new(AgentStats::default());
    let (stop, shutdown) = watch::channel(false);
    let started = Instant::now();
    let task = tokio::spawn(agent::run(config.clone(), shutdown, stats.clone()));
    let deadline = started + Duration::from_secs(20);
    let mut acknowledged = false;
    while Instant::now() < deadline && !task.is_finished() {
        if stats.publish.acknowledged.load(Ordering::Relaxed) > 0 {
            acknowledged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    let _ = stop.send(true);
    let ended = task.await;
    match (acknowledged, ended) {
        (true, _) => pass(
            "reading",
            format!(
                "a signed reading was stored and acknowledged by the broker {} ms after start",
                took.as_millis()
            ),
        ),
        (false, Ok(Err(e))) => fail(
            "reading",
            e.to_string(),
            "fix the setting the message names",
        ),
        (false, _) => fail(
            "reading",
            format!(
                "no reading acknowledged within 20 s ({} stored, {} failed polls)",
                stats.stored.load(Ordering::Relaxed),
                stats.failed_polls.load(Ordering::Relaxed)
            ),
            "check that the login may publish to the meter's topics (ask your community operator)",
        ),
    }
}

async fn clock(config: &AgentConfig) -> Check {
    match config.clock_sync {
        ClockPolicy::Auto => {
            let c = crate::clock::check().await;
            if c.synchronised {
                pass(
                    "clock",
                    format!("synchronised ({}: {})", c.daemon, c.detail),
                )
            } else {
                fail(
                    "clock",
                    format!("not synchronised ({}: {})", c.daemon, c.detail),
                    "enable a time daemon: `sudo timedatectl set-ntp true` (systemd-timesyncd) or install chrony; readings are marked unsynchronised until then",
                )
            }
        }
        other => pass(
            "clock",
            format!("clock_sync = {other:?}: not checked, the configuration vouches for it"),
        ),
    }
}
