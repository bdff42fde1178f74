//! Is the system clock synchronised? `clock_sync = "auto"` asks the time daemon that runs:
//! systemd-timesyncd (its marker file), chrony (`chronyc -c tracking`) or ntpd (`ntpq -c rv`).
//! The answer is cached for a minute, so a poll every second does not start a process every
//! second; the commands run under a short timeout on a blocking thread, never the poller's.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an answer is reused.
const CACHE: Duration = Duration::from_secs(60);
/// How long a daemon's client may take to answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// The marker systemd-timesyncd leaves once it has synchronised the clock.
const TIMESYNCD_MARKER: &str = "/run/systemd/timesync/synchronized";

/// What the time daemon said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockCheck {
    /// Whether the clock is synchronised.
    pub synchronised: bool,
    /// Which daemon answered (`systemd-timesyncd`, `chrony`, `ntpd`), or `none`.
    pub daemon: &'static str,
    /// What it said, for `doctor` and logs.
    pub detail: String,
}

static LAST: Mutex<Option<(Instant, ClockCheck)>> = Mutex::new(None);

/// The clock's state, from the cache when it is younger than a minute.
pub async fn check_cached() -> ClockCheck {
    if let Some((at, check)) = LAST.lock().ok().and_then(|g| g.clone())
        && at.elapsed() < CACHE
    {
        return check;
    }
    let check = check().await;
    if let Ok(mut g) = LAST.lock() {
        *g = Some((Instant::now(), check.clone()));
    }
    check
}

/// Asks the time daemons, in turn: timesyncd's marker, then chrony, then ntpd.
pub async fn check() -> ClockCheck {
    if Path::new(TIMESYNCD_MARKER).exists() {
        return ClockCheck {
            synchronised: true,
            daemon: "systemd-timesyncd",
            detail: format!("{TIMESYNCD_MARKER} present"),
        };
    }
    if let Some(out) = query("chronyc", &["-n", "-c", "tracking"]).await
        && let Some(check) = parse_chrony_tracking(&out)
    {
        return check;
    }
    if let Some(out) = query("ntpq", &["-n", "-c", "rv 0 leap,stratum"]).await
        && let Some(check) = parse_ntpq_rv(&out)
    {
        return check;
    }
    ClockCheck {
        synchronised: false,
        daemon: "none",
        detail: "no synchronised systemd-timesyncd, and neither chronyc nor ntpq answered"
            .to_owned(),
    }
}

async fn query(program: &str, args: &[&str]) -> Option<String> {
    let program = program.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || run_with_timeout(&program, &args))
        .await
        .ok()
        .flatten()
}

/// Runs a client under [`QUERY_TIMEOUT`] (a hung daemon must not hang the agent).
fn run_with_timeout(program: &str, args: &[String]) -> Option<String> {
    use std::io::Read;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().ok()? {
            break status;
        }
        if started.elapsed() > QUERY_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = String::new();
    child.stdout.take()?.read_to_string(&mut out).ok()?;
    status.success().then_some(out)
}

/// `chronyc -c tracking`: comma-separated; field 3 is the stratum, field 14 the leap status
/// (`Normal`, `Insert second`, `Delete second` or `Not synchronised`).
pub fn parse_chrony_tracking(out: &str) -> Option<ClockCheck> {
    let fields: Vec<&str> = out.lines().next()?.split(',').collect();
    let stratum: u32 = fields.get(2)?.trim().parse().ok()?;
    let leap = fields.get(13)?.trim();
    let synchronised = leap != "Not synchronised" && (1..16).contains(&stratum);
    Some(ClockCheck {
        synchronised,
        daemon: "chrony",
        detail: format!(
            "reference {}, stratum {stratum}, leap status {leap}",
            fields.get(1).unwrap_or(&"?")
        ),
    })
}

/// `ntpq -c "rv 0 leap,stratum"`: `leap=00, stratum=2` (or `leap_none`-style words); leap 11
/// (`alarm`) or stratum 16 means not synchronised.
pub fn parse_ntpq_rv(out: &str) -> Option<ClockCheck> {
    let mut leap = None;
    let mut stratum = None;
    for part in out.split([',', '\n']) {
        if let Some((k, v)) = part.trim().split_once('=') {
            match k.trim() {
                "leap" => leap = Some(v.trim().to_owned()),
                "stratum" => stratum = v.trim().parse::<u32>().ok(),
                _ => {}
            }
        }
    }
    let leap = leap?;
    let stratum = stratum?;
    let alarm = leap == "11" || leap == "3" || leap.contains("alarm");
    Some(ClockCheck {
        synchronised: !alarm && (1..16).contains(&stratum),
        daemon: "ntpd",
        detail: format!("leap={leap}, stratum={stratum}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chrony_tracking_is_read() {
        let synced = "C0A80001,192.168.0.1,3,1733000000.123,0.000012,0.000003,0.000020,-2.345,0.001,0.02,0.004,0.001,64.2,Normal\n";
        let c = parse_chrony_tracking(synced).unwrap();
        assert!(c.synchronised);
        assert_eq!(c.daemon, "chrony");
        let unsynced = "00000000,,0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,1.0,1.0,0.0,Not synchronised\n";
        assert!(!parse_chrony_tracking(unsynced).unwrap().synchronised);
        assert_eq!(parse_chrony_tracking("506 Cannot talk to daemon\n"), None);
    }

    #[test]
    fn ntpq_variables_are_read() {
        assert!(parse_ntpq_rv("leap=00, stratum=2\n").unwrap().synchronised);
        assert!(!parse_ntpq_rv("leap=11, stratum=16\n").unwrap().synchronised);
        assert!(!parse_ntpq_rv("leap=alarm, stratum=3").unwrap().synchronised);
        assert_eq!(parse_ntpq_rv("ntpq: read: Connection refused"), None);
    }
}
