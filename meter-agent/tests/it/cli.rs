//! First contact over the command line: `discover` as a table and as JSON, and `doctor`
//! checking an installation end to end and naming the fix for each failure.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use gridshare_testbed::register_server::{Framing, RegisterBank, RegisterServer};
use gridshare_testbed::simulator::{Household, SimulatedDevice};
use serde_json::Value;

use crate::support;

/// Runs the binary off the runtime's thread (the test's Modbus server runs on it).
async fn cli(args: Vec<String>, path_prefix: Option<PathBuf>) -> (i32, String) {
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_meter-agent"));
        cmd.args(&args).env("RUST_LOG", "error");
        if let Some(dir) = path_prefix {
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{path}", dir.display()));
        }
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    })
    .await
    .unwrap()
}

async fn simulated() -> (SimulatedDevice, RegisterServer) {
    let sim = SimulatedDevice::new(Household::default(), 12 * 3_600_000);
    let server = RegisterServer::start("127.0.0.1:0".parse().unwrap(), sim.bank(), 1, Framing::Tcp)
        .await
        .unwrap();
    (sim, server)
}

#[tokio::test]
async fn discover_prints_a_table_of_points_and_the_same_as_json() {
    let (sim, server) = simulated().await;
    let addr = server.addr.to_string();
    let (code, out) = cli(
        vec![
            "discover".into(),
            "--address".into(),
            addr.clone(),
            "--json".into(),
        ],
        None,
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<u64> = v["sunspec"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 103, 203, 160, 124]);
    let points = v["points"].as_array().unwrap();
    let row = |model: &str, point: &str| {
        points
            .iter()
            .find(|p| p["model"] == model && p["point"] == point)
            .unwrap_or_else(|| panic!("no row {model} {point}"))
            .clone()
    };
    let (import, _) = sim.grid_counters_wh();
    let imp = row("203", "TotWhImp");
    assert_eq!(imp["unit"], "Wh");
    assert_eq!(imp["status"], "ok");
    assert!(imp["raw"].as_str().unwrap().starts_with("0x"));
    assert!(imp["scale_factor"].is_i64());
    assert_eq!(v["reading"]["import_wh"], import);
    assert_eq!(row("1", "SN")["value"], "SIM-000001");
    // A point the simulated meter does not implement says so instead of showing 0.
    assert!(
        points
            .iter()
            .any(|p| p["status"] == "not implemented" && p["value"].is_null()),
        "no not-implemented point listed"
    );
    // Repeating groups are named by instance.
    assert!(points.iter().any(|p| p["point"] == "module[0].DCWH"));

    let (code, table) = cli(vec!["discover".into(), "--address".into(), addr], None).await;
    assert_eq!(code, 0, "{table}");
    let header = table
        .lines()
        .find(|l| l.starts_with("MODEL"))
        .expect("a table header");
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        columns,
        ["MODEL", "POINT", "RAW", "SF", "VALUE", "UNIT", "STATUS"]
    );
    let line = table
        .lines()
        .find(|l| l.split_whitespace().take(2).eq(["203", "TotWhImp"]))
        .expect("a TotWhImp row");
    assert!(
        line.contains("Wh") && line.trim_end().ends_with("ok"),
        "{line}"
    );
    assert!(table.contains("what a reading would carry"));

    // A register-profile device: one row per register with its scale.
    let bank = RegisterBank::new();
    bank.set_input(0x34, &[0, 0]);
    bank.set_input(0x48, &[0x4640, 0xE400]); // 12345.0 kWh
    bank.set_input(0x4A, &[0xFFFF, 0xFFFF]); // NaN
    let meter = RegisterServer::start("127.0.0.1:0".parse().unwrap(), bank, 1, Framing::Tcp)
        .await
        .unwrap();
    let (code, out) = cli(
        vec![
            "discover".into(),
            "--address".into(),
            meter.addr.to_string(),
            "--profile".into(),
            "eastron-sdm630".into(),
            "--json".into(),
        ],
        None,
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let rows = v["points"].as_array().unwrap();
    let import = rows
        .iter()
        .find(|r| r["point"] == "import_wh @ 4 72")
        .unwrap();
    assert_eq!(import["raw"], "0x4640E400");
    assert_eq!(import["scale_factor"], 3);
    assert_eq!(import["value"], "12345000.000");
    let export = rows
        .iter()
        .find(|r| r["point"] == "export_wh @ 4 74")
        .unwrap();
    assert!(export["value"].is_null());
    assert_ne!(export["status"], "ok");
    assert_eq!(v["reading"]["import_wh"], 12_345_000);
}

fn write_config(dir: &Path, community: &str, device: &str, mqtt: &str) -> PathBuf {
    write_config_for(dir, "doc-1", community, device, mqtt)
}

fn write_config_for(dir: &Path, meter: &str, community: &str, device: &str, mqtt: &str) -> PathBuf {
    let key = dir.join("meter.key");
    if !key.exists() {
        meter_agent::keys::generate(&key, false).unwrap();
    }
    let path = dir.join("meter-agent.toml");
    std::fs::write(
        &path,
        format!(
            "meter_id = \"{meter}\"\ncommunity = \"{community}\"\nkey_file = \"{}\"\ndata_dir = \"{}\"\npoll_interval_ms = 200\nclock_sync = \"auto\"\n[modbus]\naddress = \"{device}\"\ntimeout_ms = 500\n[mqtt]\nurl = \"{mqtt}\"\nreconnect_initial_ms = 100\n",
            key.display(),
            dir.display()
        ),
    )
    .unwrap();
    path
}

/// A directory with a `chronyc` that answers `tracking` as chrony does.
fn fake_chronyc(dir: &Path, leap: &str) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("chronyc");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho 'C0A80001,192.168.0.1,3,1733000000.1,0.000012,0.000003,0.00002,-2.3,0.001,0.02,0.004,0.001,64.2,{leap}'\n"),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn line<'a>(out: &'a str, status: &str, check: &str) -> &'a str {
    out.lines()
        .find(|l| {
            let mut w = l.split_whitespace();
            w.next() == Some(status) && w.next() == Some(check)
        })
        .unwrap_or_else(|| panic!("no `{status} {check}` line in:\n{out}"))
}

#[tokio::test]
async fn doctor_checks_an_installation_end_to_end_and_names_the_fix() {
    let url = support::broker_url();
    let (_sim, server) = simulated().await;
    let dir = tempfile::tempdir().unwrap();
    let community = support::community("doctor");
    let config = write_config(dir.path(), &community, &server.addr.to_string(), &url);
    let cfg = || {
        vec![
            "doctor".to_owned(),
            "-c".to_owned(),
            config.display().to_string(),
        ]
    };
    let timesyncd = Path::new("/run/systemd/timesync/synchronized").exists();

    // Everything in order, the clock vouched for by chrony.
    let (code, out) = cli(cfg(), Some(fake_chronyc(dir.path(), "Normal"))).await;
    assert_eq!(code, 0, "{out}");
    assert!(line(&out, "ok", "device").contains("SIM-000001"), "{out}");
    assert!(line(&out, "ok", "key").contains("mode 600"), "{out}");
    line(&out, "ok", "broker");
    assert!(
        line(&out, "ok", "reading").contains("acknowledged"),
        "{out}"
    );
    let clock = line(&out, "ok", "clock");
    assert!(timesyncd || clock.contains("chrony"), "{clock}");
    assert!(out.contains("all checks passed"));

    // chrony says it is not synchronised (unless timesyncd already is, on this machine).
    if !timesyncd {
        let (code, out) = cli(cfg(), Some(fake_chronyc(dir.path(), "Not synchronised"))).await;
        assert_eq!(code, 1, "{out}");
        assert!(line(&out, "FAIL", "clock").contains("not synchronised"));
        assert!(out.contains("timedatectl set-ntp true"), "{out}");
    }

    // A key others can read.
    let key = dir.path().join("meter.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out) = cli(cfg(), Some(fake_chronyc(dir.path(), "Normal"))).await;
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "FAIL", "key").contains("644"), "{out}");
    assert!(
        out.contains(&format!("fix: chmod 600 {}", key.display())),
        "{out}"
    );
    line(&out, "FAIL", "reading");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A broker nobody listens on, and a device that is not there.
    let closed = format!("127.0.0.1:{}", gridshare_testbed::mosquitto::free_port());
    write_config(dir.path(), &community, &closed, &format!("mqtt://{closed}"));
    let (code, out) = cli(cfg(), Some(fake_chronyc(dir.path(), "Normal"))).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, "FAIL", "device").contains("cannot connect"),
        "{out}"
    );
    assert!(out.contains("check [modbus] address"), "{out}");
    line(&out, "FAIL", "broker");
    assert!(out.contains("check [mqtt] url"), "{out}");
    assert!(line(&out, "FAIL", "reading").contains("not tried"), "{out}");
    line(&out, "ok", "key");
    assert!(out.contains("3 check(s) failed"), "{out}");
}

#[tokio::test]
async fn doctor_names_a_refused_broker_login() {
    use gridshare_testbed::mosquitto::{self, Mosquitto};
    let dir = tempfile::tempdir().unwrap();
    let Some(passwd_bin) = mosquitto::passwd_program() else {
        return;
    };
    let passwords = dir.path().join("passwd");
    std::fs::write(&passwords, "").unwrap();
    let added = Command::new(&passwd_bin)
        .arg("-b")
        .arg(&passwords)
        .args(["doc-1", "right-password"])
        .status()
        .unwrap();
    assert!(added.success());
    let port = mosquitto::free_port();
    let Some(broker) = Mosquitto::with_config(
        dir.path(),
        port,
        &format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n",
            passwords.display()
        ),
    ) else {
        return;
    };
    let (_sim, server) = simulated().await;
    let community = support::community("doctor-login");
    let config = write_config(
        dir.path(),
        &community,
        &server.addr.to_string(),
        &broker.url(),
    );
    let with_login = |password: &str| {
        let text = std::fs::read_to_string(&config).unwrap();
        let text = text.split("username =").next().unwrap().to_owned();
        std::fs::write(
            &config,
            format!("{text}username = \"doc-1\"\npassword = \"{password}\"\n"),
        )
        .unwrap();
    };
    let args = || {
        vec![
            "doctor".to_owned(),
            "-c".to_owned(),
            config.display().to_string(),
        ]
    };

    with_login("wrong-password");
    let (code, out) = cli(args(), Some(fake_chronyc(dir.path(), "Normal"))).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, "FAIL", "broker").contains("refused the login as doc-1"),
        "{out}"
    );
    assert!(out.contains("check [mqtt] username and password"), "{out}");

    with_login("right-password");
    let (code, out) = cli(args(), Some(fake_chronyc(dir.path(), "Normal"))).await;
    assert_eq!(code, 0, "{out}");
    assert!(line(&out, "ok", "broker").contains("as doc-1"), "{out}");
}

/// `meter-agent run -c CONFIG` with the log on stderr at info; returns the child and its
/// stderr lines as they come.
fn spawn_run(config: &Path) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_meter-agent"))
        .args(["run", "-c"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Waits (off the runtime's thread) for the child to exit within 20 s; its status code and
/// everything it logged.
async fn exit_of(run: (std::process::Child, std::sync::mpsc::Receiver<String>)) -> (i32, String) {
    tokio::task::spawn_blocking(move || {
        let (mut child, lines) = run;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let code = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status.code().unwrap_or(-1);
            }
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                panic!(
                    "meter-agent run did not exit: {:?}",
                    lines.try_iter().collect::<Vec<_>>()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        (code, lines.try_iter().collect::<Vec<_>>().join("\n"))
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn run_exits_with_78_when_the_configuration_or_key_is_unusable() {
    // The systemd unit does not restart on 78 (RestartPreventExitStatus=78): an agent that
    // cannot start as configured must say why once, not every five seconds.
    let (_sim, server) = simulated().await;
    let dir = tempfile::tempdir().unwrap();
    let device = server.addr.to_string();
    let config = write_config_for(
        dir.path(),
        "run-78",
        &support::community("run"),
        &device,
        &support::broker_url(),
    );

    std::fs::remove_file(dir.path().join("meter.key")).unwrap();
    let (code, log) = exit_of(spawn_run(&config)).await;
    assert_eq!(code, 78, "{log}");
    assert!(log.contains("meter.key"), "{log}");

    std::fs::write(&config, "meter_idd = \"run-78\"\n").unwrap();
    let (code, log) = exit_of(spawn_run(&config)).await;
    assert_eq!(code, 78, "{log}");
    assert!(log.contains("meter_idd"), "{log}");

    let (code, log) = exit_of(spawn_run(&dir.path().join("missing.toml"))).await;
    assert_eq!(code, 78, "{log}");
    assert!(log.contains("missing.toml"), "{log}");
}

#[tokio::test]
async fn run_logs_the_first_reading_the_broker_acknowledged() {
    // `journalctl -u meter-agent` after installing: this line says the meter works (and
    // scripts/deb-check.sh times the install to it).
    let (_sim, server) = simulated().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_for(
        dir.path(),
        "run-first-ack",
        &support::community("run"),
        &server.addr.to_string(),
        &support::broker_url(),
    );
    let (mut child, lines) = spawn_run(&config);
    let found = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match lines.recv_timeout(left) {
                Ok(line) if line.contains("first reading acknowledged by the broker") => {
                    return Ok(line);
                }
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        Err(seen)
    })
    .await
    .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let line = found.unwrap_or_else(|seen| panic!("no first acknowledgement in {seen:#?}"));
    assert!(line.contains("seq=1"), "{line}");
}
