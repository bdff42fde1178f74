//! `meter-agent`: reads an inverter or meter over Modbus, signs every reading and publishes it
//! over MQTT. Run `meter-agent --help` for the commands.

use std::io::Read;
#[cfg(feature = "demo")]
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
#[cfg(feature = "demo")]
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use gridshare_core::reading::{PublicKey, SignedReading};
#[cfg(feature = "demo")]
use gridshare_testbed::register_server::{Framing, RegisterServer};
#[cfg(feature = "demo")]
use gridshare_testbed::simulator::{self, Household};
use meter_agent::agent::{self, AgentStats};
#[cfg(feature = "demo")]
use meter_agent::config::ClockPolicy;
use meter_agent::config::{AgentConfig, DEFAULT_CONFIG, DeviceKind};
use meter_agent::device::{Device, ProfileDevice, Sample, SunSpecDevice};
use meter_agent::keys;
use meter_agent::profile::RegisterProfile;
use meter_agent::sunspec;
use meter_agent::transport::{ModbusLink, Table, TransportKind};
use meter_agent::value::PointRow;
use tokio::sync::watch;

/// Exit status of `run` when the configuration or the key is unusable (sysexits' EX_CONFIG):
/// the systemd unit does not restart on it (`RestartPreventExitStatus=78`), since the same
/// files would fail the same way every five seconds.
const EX_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "meter-agent",
    version,
    about = "Gridshare meter agent: Modbus → signed readings → MQTT, losing nothing"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Settings that override the config file.
#[derive(clap::Args, Clone, Default)]
struct Overrides {
    /// Config file (TOML); see `meter-agent config`.
    #[arg(short, long, env = "METER_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Meter id.
    #[arg(long)]
    meter_id: Option<String>,
    /// Community.
    #[arg(long)]
    community: Option<String>,
    /// Key file.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Data directory (outbox).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Device address host:port.
    #[arg(long)]
    address: Option<String>,
    /// Transport: tcp, rtu, rtu-over-tcp.
    #[arg(long)]
    transport: Option<String>,
    /// Serial port for rtu.
    #[arg(long)]
    serial_port: Option<String>,
    /// Modbus unit id.
    #[arg(long)]
    unit_id: Option<u8>,
    /// Built-in register profile (implies kind = profile).
    #[arg(long)]
    profile: Option<String>,
    /// Broker URL.
    #[arg(long, env = "MQTT_URL")]
    mqtt_url: Option<String>,
    /// Poll interval, ms.
    #[arg(long)]
    poll_interval_ms: Option<u64>,
}

#[derive(Subcommand)]
enum Command {
    /// Poll the device, sign and publish readings until stopped (Ctrl-C / SIGTERM).
    Run(Overrides),
    /// Create the meter's signing key (PKCS#8, mode 0600) and print its public key.
    Keygen {
        /// Where to write the key.
        #[arg(long, default_value = "/var/lib/gridshare/meter.key")]
        out: PathBuf,
        /// Replace an existing key (the meter gets a new identity).
        #[arg(long)]
        force: bool,
    },
    /// Print the public key of a key file (to register the meter).
    Pubkey {
        /// The key file.
        #[arg(long, default_value = "/var/lib/gridshare/meter.key")]
        key: PathBuf,
    },
    /// Print the commented default configuration.
    Config,
    /// List the built-in register profiles.
    Profiles,
    /// The devices the agent reads (built-in profiles and SunSpec families), as the Markdown
    /// table in the README.
    Devices,
    /// Connect to the device and print every point it gives (model, point, raw registers, scale
    /// factor, value, unit, status) and what a reading would carry.
    Discover {
        #[command(flatten)]
        overrides: Overrides,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check a configured installation end to end (device, key, broker, an acknowledged
    /// reading, clock) and say what to fix; exits 1 when a check fails.
    Doctor(Overrides),
    /// Check a signed reading (JSON, from a file or stdin) against a public key.
    Verify {
        /// Public key, hex (130 digits, from `keygen` or `pubkey`).
        #[arg(long)]
        public_key: String,
        /// The reading; `-` or absent for stdin.
        file: Option<PathBuf>,
    },
    /// Serve a simulated SunSpec hybrid inverter (PV, battery, grid meter) over Modbus TCP.
    #[cfg(feature = "demo")]
    SimulateDevice {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:1502")]
        listen: SocketAddr,
        /// Simulated seconds per real second.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Simulated time of day to start at, hours.
        #[arg(long, default_value_t = 11.0)]
        start_hour: f64,
        /// Serve RTU framing over TCP instead of Modbus TCP.
        #[arg(long)]
        rtu_over_tcp: bool,
        /// PV peak power, W.
        #[arg(long, default_value_t = 6000.0)]
        pv_peak_w: f64,
        /// Battery capacity, Wh (0 for none).
        #[arg(long, default_value_t = 10000.0)]
        battery_wh: f64,
        /// Serial number in model 1.
        #[arg(long, default_value = "SIM-000001")]
        serial: String,
    },
    /// Everything on this machine: a simulated inverter, an embedded MQTT broker and the agent;
    /// prints every reading as the broker delivers it, with its signature checked.
    #[cfg(feature = "demo")]
    Demo {
        /// Port of the embedded broker.
        #[arg(long, default_value_t = 18830)]
        mqtt_port: u16,
        /// Simulated seconds per real second.
        #[arg(long, default_value_t = 60.0)]
        speed: f64,
        /// Directory for the demo's key and outbox (default: a fresh temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| gridshare_mqtt::DEFAULT_LOG_FILTER.into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(o) => {
            let config = match load_config(&o) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return Ok(ExitCode::from(EX_CONFIG));
                }
            };
            let (tx, rx) = watch::channel(false);
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!(target: "agent", "stopping: flushing and announcing offline");
                let _ = tx.send(true);
            });
            if let Err(e) = agent::run(config, rx, Arc::new(AgentStats::default())).await {
                eprintln!("error: {e}");
                return Ok(if e.is_configuration() {
                    ExitCode::from(EX_CONFIG)
                } else {
                    ExitCode::FAILURE
                });
            }
        }
        Command::Keygen { out, force } => {
            let public = keys::generate(&out, force)?;
            println!("wrote {} (mode 0600)", out.display());
            print_public(&public);
        }
        Command::Pubkey { key } => print_public(&keys::load(&key)?.public_key()),
        Command::Config => print!("{DEFAULT_CONFIG}"),
        Command::Profiles => {
            for name in RegisterProfile::builtin_names() {
                let p = RegisterProfile::builtin(name)?;
                println!("{name:20} {}", p.description);
            }
        }
        Command::Doctor(o) => return doctor(&load_config(&o)?).await,
        Command::Devices => print!("{}", meter_agent::catalog::markdown()),
        Command::Discover { overrides, json } => discover(&load_config(&overrides)?, json).await?,
        Command::Verify { public_key, file } => return verify(&public_key, file.as_deref()),
        #[cfg(feature = "demo")]
        Command::SimulateDevice {
            listen,
            speed,
            start_hour,
            rtu_over_tcp,
            pv_peak_w,
            battery_wh,
            serial,
        } => {
            let household = Household {
                pv_peak_w,
                battery_wh,
                serial,
                ..Household::default()
            };
            let framing = if rtu_over_tcp {
                Framing::RtuOverTcp
            } else {
                Framing::Tcp
            };
            let server = simulate(listen, household, speed, start_hour, framing).await?;
            println!(
                "simulated SunSpec hybrid inverter on {} ({framing:?}, unit id 1, {speed}x time); Ctrl-C to stop",
                server.addr
            );
            wait_for_signal().await;
        }
        #[cfg(feature = "demo")]
        Command::Demo {
            mqtt_port,
            speed,
            dir,
        } => demo(mqtt_port, speed, dir).await?,
    }
    Ok(ExitCode::SUCCESS)
}

fn load_config(o: &Overrides) -> anyhow::Result<AgentConfig> {
    let mut c = match &o.config {
        Some(path) => AgentConfig::load(path)?,
        None => AgentConfig::default(),
    };
    if let Some(v) = &o.meter_id {
        c.meter_id.clone_from(v);
    }
    if let Some(v) = &o.community {
        c.community.clone_from(v);
    }
    if let Some(v) = &o.key_file {
        c.key_file.clone_from(v);
    }
    if let Some(v) = &o.data_dir {
        c.data_dir.clone_from(v);
    }
    if let Some(v) = &o.address {
        c.modbus.address.clone_from(v);
    }
    if let Some(v) = &o.transport {
        c.modbus.transport = match v.as_str() {
            "tcp" => TransportKind::Tcp,
            "rtu" => TransportKind::Rtu,
            "rtu-over-tcp" => TransportKind::RtuOverTcp,
            other => bail!("--transport {other:?}: expected tcp, rtu or rtu-over-tcp"),
        };
    }
    if let Some(v) = &o.serial_port {
        c.modbus.serial_port.clone_from(v);
    }
    if let Some(v) = o.unit_id {
        c.modbus.unit_id = v;
    }
    if let Some(v) = &o.profile {
        c.device.kind = DeviceKind::Profile;
        c.device.profile = Some(v.clone());
        c.device.profile_file = None;
    }
    if let Some(v) = &o.mqtt_url {
        c.mqtt.url.clone_from(v);
    }
    if let Some(v) = o.poll_interval_ms {
        c.poll_interval_ms = v;
    }
    c.validate()?;
    Ok(c)
}

fn print_public(public: &PublicKey) {
    println!("key id:     {}", public.key_id());
    println!("public key: {}", public.to_hex());
    println!("Register this public key for your meter with your community operator.");
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn discover(config: &AgentConfig, json: bool) -> anyhow::Result<()> {
    let mut link = ModbusLink::new(config.modbus.clone());
    let target = match config.modbus.transport {
        TransportKind::Rtu => config.modbus.serial_port.clone(),
        _ => config.modbus.address.clone(),
    };
    let unit = config.modbus.unit_id;
    let mut rows: Vec<PointRow> = Vec::new();
    let mut header = serde_json::json!({ "device": target, "unit_id": unit });
    let mut notes: Vec<String> = Vec::new();
    let device = if config.device.kind == DeviceKind::Profile {
        let profile = config.profile()?;
        notes.push(format!(
            "register profile {}: {}",
            profile.name, profile.description
        ));
        header["profile"] = profile.name.clone().into();
        let mut data = Vec::new();
        for span in profile.read_plan() {
            let table = match span.function {
                meter_agent::profile::Function::Holding => Table::Holding,
                meter_agent::profile::Function::Input => Table::Input,
            };
            match link.read(table, span.address, span.count).await {
                Ok(regs) => data.push((span, regs)),
                Err(e) if e.is_exception() => notes.push(format!(
                    "read of {} registers at {} (function {}) refused: {e}",
                    span.count,
                    span.address,
                    span.function.code()
                )),
                Err(e) => return Err(e).with_context(|| format!("reading {target}")),
            }
        }
        rows.extend(profile.rows(&data));
        Device::Profile(ProfileDevice {
            profile,
            identity: config.identity()?,
        })
    } else {
        let map = sunspec::discover(&mut link)
            .await
            .with_context(|| format!("discovering SunSpec models on {target}"))?;
        notes.push(format!(
            "SunSpec map at {}: {} models, end marker {}",
            map.base,
            map.models.len(),
            if map.end_marker {
                "present"
            } else {
                "missing (tolerated)"
            }
        ));
        header["sunspec"] = serde_json::json!({
            "base": map.base,
            "end_marker": map.end_marker,
            "models": map.models.iter().map(|m| serde_json::json!({
                "id": m.id, "address": m.address, "len": m.len, "known": m.is_known(),
            })).collect::<Vec<_>>(),
        });
        for m in &map.models {
            let name =
                sunspec::models::definition(m.id).map_or("(no definition: skipped)", |d| d.label);
            notes.push(format!(
                "  model {:>5} at {:>5}, {:>3} registers  {name}",
                m.id, m.address, m.len
            ));
        }
        for m in map.models.iter().filter(|m| m.is_known()) {
            match sunspec::read_model(&mut link, *m).await {
                Ok(block) => rows.extend(block.rows()),
                Err(e) => notes.push(format!("model {}: {e}", m.id)),
            }
        }
        Device::SunSpec(SunSpecDevice::discover(&mut link, config.device.sunspec.clone()).await?)
    };
    let mut snapshot = device.poll(&mut link).await?;
    for extra in config.extra_devices()? {
        extra.poll_into(&mut link, unit, &mut snapshot).await?;
    }
    link.disconnect().await;
    let sample = |s: &Sample| match s {
        Sample::Value(v) => serde_json::json!(v),
        Sample::NotImplemented => serde_json::json!({"status": "not implemented"}),
        Sample::Implausible(e) => serde_json::json!({"status": "implausible", "reason": e}),
        Sample::DeviceError(e) => serde_json::json!({"status": "device error", "reason": e}),
    };
    let reading = serde_json::json!({
        "import_wh": sample(&snapshot.import_wh),
        "export_wh": sample(&snapshot.export_wh),
        "battery_charge_wh": sample(&snapshot.battery_charge_wh),
        "battery_discharge_wh": sample(&snapshot.battery_discharge_wh),
        "power_w": sample(&snapshot.power_w),
        "soc_bp": sample(&snapshot.soc_bp),
        "pv_power_w": sample(&snapshot.pv_power_w),
        "pv_wh": sample(&snapshot.pv_wh),
        "battery_power_w": sample(&snapshot.battery_power_w),
    });
    if json {
        header["points"] = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "model": r.model,
                    "point": r.point,
                    "raw": r.raw,
                    "scale_factor": r.scale_factor,
                    "value": r.value,
                    "unit": r.unit,
                    "status": r.status,
                })
            })
            .collect();
        header["reading"] = reading;
        println!("{}", serde_json::to_string_pretty(&header)?);
        return Ok(());
    }
    println!(
        "device {target} ({:?}, unit id {unit})",
        config.modbus.transport
    );
    for n in &notes {
        println!("{n}");
    }
    println!();
    print_table(&rows);
    println!("\nwhat a reading would carry:");
    for (name, value) in reading.as_object().into_iter().flatten() {
        println!("  {name:<22} {value}");
    }
    Ok(())
}

/// The points as an aligned table.
fn print_table(rows: &[PointRow]) {
    let head = ["MODEL", "POINT", "RAW", "SF", "VALUE", "UNIT", "STATUS"];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.model.clone(),
                r.point.clone(),
                r.raw.clone(),
                r.scale_factor.map(|s| s.to_string()).unwrap_or_default(),
                r.value.clone().unwrap_or_default(),
                r.unit.clone().unwrap_or_default(),
                r.status.clone(),
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |row: &[String]| {
        let parts: Vec<String> = row
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(&head.map(str::to_owned));
    for row in &cells {
        line(row);
    }
}

async fn doctor(config: &AgentConfig) -> anyhow::Result<ExitCode> {
    println!(
        "meter-agent doctor: meter {} in community {}",
        config.meter_id, config.community
    );
    let checks = meter_agent::doctor::run(config).await;
    for c in &checks {
        let mark = if c.ok { "ok  " } else { "FAIL" };
        println!("  {mark} {:<8} {}", c.name, c.detail);
        if let Some(fix) = &c.fix {
            println!("       {:<8} fix: {fix}", "");
        }
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed == 0 {
        println!("all checks passed");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{failed} check(s) failed");
        Ok(ExitCode::FAILURE)
    }
}

fn verify(public_key: &str, file: Option<&Path>) -> anyhow::Result<ExitCode> {
    let key = PublicKey::from_hex(public_key)?;
    let mut text = String::new();
    match file {
        Some(p) if p != Path::new("-") => {
            text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        }
        _ => {
            std::io::stdin().read_to_string(&mut text)?;
        }
    }
    let outcome = SignedReading::from_json(text.trim()).and_then(|s| s.verify(&key).map(|()| s));
    match outcome {
        Ok(s) => {
            println!(
                "OK: meter {} seq {} signed by key {}",
                s.reading.meter_id, s.reading.seq, s.key_id
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("NOT VERIFIED: {e}");
            Ok(ExitCode::from(2))
        }
    }
}

/// Starts a simulated device and the task that advances its clock.
#[cfg(feature = "demo")]
async fn simulate(
    listen: SocketAddr,
    household: Household,
    speed: f64,
    start_hour: f64,
    framing: Framing,
) -> anyhow::Result<RegisterServer> {
    if !(speed > 0.0 && speed <= 100_000.0) {
        bail!("--speed must be between 0 and 100000");
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let start_ms = (start_hour.rem_euclid(24.0) * 3_600_000.0) as u64;
    simulator::serve(household, start_ms, listen, framing, 200, speed)
        .await
        .with_context(|| format!("cannot listen on {listen}"))
}

#[cfg(feature = "demo")]
async fn demo(mqtt_port: u16, speed: f64, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let tmp;
    let dir = match dir {
        Some(d) => d,
        None => {
            tmp = std::env::temp_dir().join(format!("gridshare-demo-{}", std::process::id()));
            tmp.clone()
        }
    };
    std::fs::create_dir_all(&dir)?;
    let key_file = dir.join("meter.key");
    let public = if key_file.exists() {
        keys::load(&key_file)?.public_key()
    } else {
        keys::generate(&key_file, false)?
    };
    let broker_addr: SocketAddr = ([127, 0, 0, 1], mqtt_port).into();
    gridshare_mqtt::broker::start_embedded(broker_addr).map_err(anyhow::Error::msg)?;
    let device = simulate(
        "127.0.0.1:0".parse()?,
        Household::default(),
        speed,
        10.0,
        Framing::Tcp,
    )
    .await?;
    println!("Gridshare meter-agent demo");
    println!(
        "  simulated SunSpec hybrid inverter  modbus://{} ({speed}x time)",
        device.addr
    );
    println!("  embedded MQTT broker               mqtt://{broker_addr}");
    println!(
        "  meter key                          {} (id {})",
        key_file.display(),
        public.key_id()
    );
    println!(
        "  outbox                             {}",
        dir.join("outbox.sqlite").display()
    );
    println!("Readings as the broker delivers them (signature checked); Ctrl-C to stop.\n");

    let mut config = AgentConfig {
        meter_id: "demo-home-01".into(),
        community: "demo".into(),
        key_file,
        data_dir: dir.clone(),
        clock_sync: ClockPolicy::Auto,
        ..AgentConfig::default()
    };
    config.modbus.address = device.addr.to_string();
    config.mqtt.url = format!("mqtt://{broker_addr}");
    let topic = format!("gridshare/v1/{}/meters/+/reading", config.community);

    let mut options = rumqttc::MqttOptions::new("demo-listener", "127.0.0.1", mqtt_port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = rumqttc::AsyncClient::new(options, 64);
    client.subscribe(&topic, rumqttc::QoS::AtLeastOnce).await?;
    let (tx, rx) = watch::channel(false);
    let agent = tokio::spawn(agent::run(config, rx, Arc::new(AgentStats::default())));

    let listen = async {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Incoming::Publish(p))) => {
                    print_reading(&p.payload, &public);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    };
    tokio::select! {
        () = listen => {}
        () = wait_for_signal() => {}
    }
    let _ = tx.send(true);
    agent.await??;
    Ok(())
}

#[cfg(feature = "demo")]
fn print_reading(payload: &[u8], public: &PublicKey) {
    let signed = match SignedReading::from_json_bytes(payload) {
        Ok(s) => s,
        Err(e) => {
            println!("rejected: {e}");
            return;
        }
    };
    let check = match signed.verify(public) {
        Ok(()) => "signature ok".to_owned(),
        Err(e) => format!("REJECTED: {e}"),
    };
    let r = &signed.reading;
    let show = |v: Option<u64>| v.map_or_else(|| "—".to_owned(), |v| v.to_string());
    println!(
        "seq {:>5}  import {:>9} Wh  export {:>9} Wh  battery +{} / -{} Wh  power {:>6} W  soc {:>6}  pv {:>6} W {} Wh  battery {:>6} W  {check}",
        r.seq,
        show(r.import_wh.value()),
        show(r.export_wh.value()),
        show(r.battery_charge_wh.value()),
        show(r.battery_discharge_wh.value()),
        r.power_w
            .value()
            .map_or_else(|| "—".into(), |v| v.to_string()),
        r.soc_bp
            .value()
            .map_or_else(|| "—".into(), |v| format!("{}.{:02}%", v / 100, v % 100)),
        r.flow
            .pv_power_w
            .value()
            .map_or_else(|| "—".into(), |v| v.to_string()),
        show(r.flow.pv_wh.value()),
        r.flow
            .battery_power_w
            .value()
            .map_or_else(|| "—".into(), |v| v.to_string()),
    );
}
