//! The agent's main loop: poll the device, normalise, sign, store in the outbox, wake the
//! publisher. One task owns the Modbus link (one master per bus); the publisher runs beside it
//! and drains the outbox.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gridshare_core::reading::{ClockSync, MeterId, MeterKey, Reading};
use ring::rand::SystemRandom;
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::{AgentConfig, ClockPolicy, ConfigError, DeviceKind};
use crate::device::{Device, ExtraDevice, PollError, ProfileDevice, SunSpecDevice};
use crate::home_assistant::{self, MeterState};
use crate::keys::{self, KeyError};
use crate::normalise::Normaliser;
use crate::outbox::{Outbox, OutboxError};
use crate::publish::{MqttConfigError, PublishStats, Publisher, Topics};
use crate::transport::ModbusLink;

/// Why the agent could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The key is missing, unreadable or too readable.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The outbox cannot be opened.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The broker settings are unusable.
    #[error(transparent)]
    Mqtt(#[from] MqttConfigError),
    /// The data directory cannot be created.
    #[error("data_dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl AgentError {
    /// Whether the household's configuration (the file, the key, the broker settings) is at
    /// fault, so that starting again unchanged cannot help; `run` then exits with 78.
    pub fn is_configuration(&self) -> bool {
        matches!(self, Self::Config(_) | Self::Key(_) | Self::Mqtt(_))
    }
}

/// Live counters of a running agent.
#[derive(Debug, Default)]
pub struct AgentStats {
    /// Readings stored in the outbox.
    pub stored: std::sync::atomic::AtomicU64,
    /// Polls that reached nobody.
    pub failed_polls: std::sync::atomic::AtomicU64,
    /// The publisher's counters.
    pub publish: Arc<PublishStats>,
}

/// Runs until `shutdown` turns true. Readings not yet acknowledged stay in the outbox.
pub async fn run(
    config: AgentConfig,
    shutdown: watch::Receiver<bool>,
    stats: Arc<AgentStats>,
) -> Result<(), AgentError> {
    config.validate()?;
    let meter_id = config.meter_id()?;
    let key = keys::load(&config.key_file)?;
    std::fs::create_dir_all(&config.data_dir).map_err(|source| AgentError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    let (outbox, state) = Outbox::open(&config.outbox_path(), &meter_id).await?;
    let public = key.public_key();
    let waiting = outbox.len().await.unwrap_or(0);
    tracing::info!(
        target: "agent",
        meter = %meter_id,
        key_id = %public.key_id(),
        next_seq = state.next_seq,
        waiting,
        "meter agent starting"
    );

    let wake = Arc::new(Notify::new());
    let publisher = Publisher {
        topics: Topics::new(
            &config.mqtt.topic_prefix,
            &config.community,
            meter_id.as_str(),
        ),
        client_id: config
            .mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("meter-agent-{meter_id}")),
        online_payload: serde_json::json!({
            "state": "online",
            "meter_id": meter_id.as_str(),
            "key_id": public.key_id().to_string(),
            "public_key": public.to_hex(),
            "agent": concat!("meter-agent ", env!("CARGO_PKG_VERSION")),
        })
        .to_string(),
        config: config.mqtt.clone(),
        outbox: outbox.clone(),
        wake: wake.clone(),
        stats: stats.publish.clone(),
        retention: Duration::from_secs(config.resend_retention_s),
    };
    publisher.validate()?;
    // The publisher stops after the poller, so that the last reading the poller stored is
    // sent (and acknowledged) before the agent leaves.
    let (stop_publisher, publisher_stop) = watch::channel(false);
    let publisher_task = tokio::spawn(publisher.run(publisher_stop));
    let (ha, ha_task) = if config.home_assistant.enabled {
        let (tx, rx) = watch::channel(MeterState::Starting);
        let task = tokio::spawn(home_assistant::run(
            config.home_assistant.clone(),
            meter_id.as_str().to_owned(),
            rx,
            shutdown.clone(),
        ));
        (Some(tx), Some(task))
    } else {
        (None, None)
    };

    let device = match config.device.kind {
        DeviceKind::Sunspec => None,
        DeviceKind::Profile => Some(Device::Profile(ProfileDevice {
            profile: config.profile()?,
            identity: config.identity()?,
        })),
    };
    let mut poller = Poller {
        link: ModbusLink::new(config.modbus.clone()),
        device,
        extra: config.extra_devices()?,
        ha,
        normaliser: Normaliser::new(state.last_good),
        next_seq: state.next_seq,
        rng: SystemRandom::new(),
        key,
        meter_id,
        outbox: outbox.clone(),
        wake,
        stats: stats.clone(),
        config,
    };
    poller.run(shutdown).await;
    poller.link.disconnect().await;
    let _ = stop_publisher.send(true);
    match publisher_task.await {
        Ok(result) => result?,
        Err(e) => tracing::error!(target: "agent", "publisher task failed: {e}"),
    }
    if let Some(task) = ha_task {
        // The poller is gone: the Home Assistant task sees its channel close and says offline.
        drop(poller);
        match task.await {
            Ok(Err(e)) => tracing::warn!(target: "home_assistant", "{e}"),
            Err(e) => tracing::error!(target: "agent", "home assistant task failed: {e}"),
            Ok(Ok(())) => {}
        }
    }
    let waiting = outbox.len().await.unwrap_or(0);
    outbox.close().await;
    tracing::info!(target: "agent", waiting, "meter agent stopped");
    Ok(())
}

struct Poller {
    config: AgentConfig,
    link: ModbusLink,
    device: Option<Device>,
    extra: Vec<ExtraDevice>,
    /// The latest reading for Home Assistant, when enabled.
    ha: Option<watch::Sender<MeterState>>,
    normaliser: Normaliser,
    next_seq: u64,
    key: MeterKey,
    rng: SystemRandom,
    meter_id: MeterId,
    outbox: Outbox,
    wake: Arc<Notify>,
    stats: Arc<AgentStats>,
}

impl Poller {
    async fn run(&mut self, mut shutdown: watch::Receiver<bool>) {
        let mut interval =
            tokio::time::interval(Duration::from_millis(self.config.poll_interval_ms));
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut failures: u32 = 0;
        let mut retry_at = Instant::now();
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            if Instant::now() < retry_at {
                continue;
            }
            match self.poll_once().await {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(target: "agent", "device answers again");
                    }
                    failures = 0;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    self.stats
                        .failed_polls
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let wait = backoff(
                        self.config.backoff_initial_ms,
                        self.config.backoff_max_ms,
                        failures,
                    );
                    // Log the first failure and then every tenth, not one line per second.
                    if failures == 1 || failures.is_multiple_of(10) {
                        tracing::warn!(
                            target: "agent",
                            failures,
                            retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                            "device poll failed: {e}"
                        );
                    }
                    retry_at = Instant::now() + wait;
                    if let Some(ha) = &self.ha {
                        ha.send_replace(MeterState::DeviceDown);
                    }
                    if matches!(e, PollError::SunSpec(_)) {
                        // The map changed or discovery failed: discover again next time.
                        self.device = None;
                    }
                    self.link.disconnect().await;
                }
            }
            if self.config.modbus.disconnect_after_poll {
                self.link.disconnect().await;
            }
        }
    }

    async fn poll_once(&mut self) -> Result<(), PollError> {
        if self.device.is_none() {
            // Only SunSpec devices start unknown; profile devices are built at start.
            let found =
                SunSpecDevice::discover(&mut self.link, self.config.device.sunspec.clone()).await?;
            self.device = Some(Device::SunSpec(found));
        }
        let Some(device) = &self.device else {
            return Ok(());
        };
        let mut snapshot = device.poll(&mut self.link).await?;
        for extra in &self.extra {
            extra
                .poll_into(&mut self.link, self.config.modbus.unit_id, &mut snapshot)
                .await?;
        }
        let (measurements, last_good) = self.normaliser.measure(&snapshot);
        let reading = Reading {
            meter_id: self.meter_id.clone(),
            device: device.identity().clone(),
            seq: self.next_seq,
            timestamp_ms: now_ms(),
            clock: clock_status(self.config.clock_sync).await,
            import_wh: measurements.import_wh,
            export_wh: measurements.export_wh,
            battery_charge_wh: measurements.battery_charge_wh,
            battery_discharge_wh: measurements.battery_discharge_wh,
            power_w: measurements.power_w,
            soc_bp: measurements.soc_bp,
            flow: measurements.flow,
        };
        let signed = match self.key.sign(reading, &self.rng) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(target: "agent", "cannot sign reading: {e}");
                return Ok(());
            }
        };
        match self.outbox.append(&signed, &last_good).await {
            Ok(()) => {
                self.normaliser.commit(&measurements, last_good);
                self.next_seq += 1;
                self.stats
                    .stored
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.wake.notify_one();
                if let Some(ha) = &self.ha {
                    ha.send_replace(MeterState::Reading(Box::new(signed.reading.clone())));
                }
                tracing::debug!(target: "agent", seq = signed.reading.seq, "reading stored");
            }
            // The sequence number is not consumed, so the next reading reuses it: no gap.
            Err(e) => tracing::error!(target: "agent", "reading not stored: {e}"),
        }
        Ok(())
    }
}

/// Exponential backoff: `initial × 2^(failures−1)`, capped at `max`.
pub fn backoff(initial_ms: u64, max_ms: u64, failures: u32) -> Duration {
    let factor = 1u64 << failures.saturating_sub(1).min(20);
    Duration::from_millis(initial_ms.saturating_mul(factor).min(max_ms))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The clock status under `policy`. `auto` asks the time daemon that runs
/// (systemd-timesyncd, chrony or ntpd; see [`crate::clock`]).
pub async fn clock_status(policy: ClockPolicy) -> ClockSync {
    match policy {
        ClockPolicy::Synchronised => ClockSync::Synchronised,
        ClockPolicy::Informative => ClockSync::Informative,
        ClockPolicy::Unsynchronised => ClockSync::Unsynchronised,
        ClockPolicy::Auto => {
            if crate::clock::check_cached().await.synchronised {
                ClockSync::Synchronised
            } else {
                ClockSync::Unsynchronised
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(500, 10_000, 1), Duration::from_millis(500));
        assert_eq!(backoff(500, 10_000, 2), Duration::from_millis(1000));
        assert_eq!(backoff(500, 10_000, 5), Duration::from_millis(8000));
        assert_eq!(backoff(500, 10_000, 6), Duration::from_millis(10_000));
        assert_eq!(
            backoff(500, 10_000, u32::MAX),
            Duration::from_millis(10_000)
        );
    }
}
