//! Where readings travel over MQTT: the broker URL every part accepts (`mqtt://` or, with TLS,
//! `mqtts://`) and the topic layout `<prefix>/<community>/meters/<meter>/{reading,status}`.
//!
//! Pure text handling, so the meter agent, the market engine and the broker's access rules
//! agree on one spelling of each.

use std::fmt;

/// The default topic prefix.
pub const DEFAULT_TOPIC_PREFIX: &str = "gridshare/v1";

/// A broker URL that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url:?}: {reason}")]
pub struct BrokerUrlError {
    /// The URL given.
    pub url: String,
    /// What is wrong, and what is expected.
    pub reason: String,
}

/// A broker address: host, port and whether the connection uses TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Host name or address (an IPv6 address without its brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Whether to use TLS (`mqtts://`).
    pub tls: bool,
}

impl BrokerUrl {
    /// Parses `mqtt://host[:port]` (also `tcp://`, default port 1883) or `mqtts://host[:port]`
    /// (also `ssl://`, default port 8883). Credentials and paths are refused: they belong in
    /// their own settings, not in a URL that ends up in logs.
    pub fn parse(url: &str) -> Result<Self, BrokerUrlError> {
        let bad = |reason: &str| BrokerUrlError {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected mqtt://host:port or mqtts://host:port"))?;
        let tls = match scheme {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            _ => return Err(bad("scheme must be mqtt or mqtts")),
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') || authority.contains('@') {
            return Err(bad(
                "give only host and port (credentials go in mqtt.username/password)",
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad("port must be 1-65535"))?,
            ),
            _ => (authority, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// The topics of one meter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterTopics {
    /// Signed readings (QoS 1, not retained).
    pub reading: String,
    /// `online` / `offline` status (retained, with the `offline` last will).
    pub status: String,
}

impl MeterTopics {
    /// `<prefix>/<community>/meters/<meter>/{reading,status}`.
    pub fn new(prefix: &str, community: &str, meter: &str) -> Self {
        let base = meter_base(prefix, community, meter);
        Self {
            reading: format!("{base}/reading"),
            status: format!("{base}/status"),
        }
    }
}

/// `<prefix>/<community>/meters/<meter>`: the level under which a meter's topics live.
pub fn meter_base(prefix: &str, community: &str, meter: &str) -> String {
    format!("{prefix}/{community}/meters/{meter}")
}

/// The filter the market engine subscribes to: every meter's readings in one community.
pub fn readings_filter(prefix: &str, community: &str) -> String {
    format!("{prefix}/{community}/meters/+/reading")
}

/// Whether `filter` can only match topics under `base` (itself included): it starts with
/// `base` literally and any wildcard comes after it. `base` itself holds no wildcard.
pub fn filter_stays_under(filter: &str, base: &str) -> bool {
    match filter.strip_prefix(base) {
        Some("") => true,
        Some(rest) => rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let u = BrokerUrl::parse("mqtt://broker.local:1884").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.tls),
            ("broker.local", 1884, false)
        );
        let u = BrokerUrl::parse("mqtts://broker.example").unwrap();
        assert_eq!((u.port, u.tls), (8883, true));
        assert_eq!(u.to_string(), "mqtts://broker.example:8883");
        assert_eq!(BrokerUrl::parse("tcp://127.0.0.1").unwrap().port, 1883);
        assert!(BrokerUrl::parse("ssl://h:8884").unwrap().tls);
        let v6 = BrokerUrl::parse("mqtt://[::1]:1999").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 1999));
        assert_eq!(v6.to_string(), "mqtt://[::1]:1999");
        for bad in [
            "broker:1883",
            "http://x",
            "mqtt://:1883",
            "mqtt://h:99999",
            "mqtt://h:0",
            "mqtt://u:p@h",
            "mqtt://h/path",
        ] {
            let err = BrokerUrl::parse(bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn topics_follow_the_design() {
        let t = MeterTopics::new("gridshare/v1", "elm-street", "home-07");
        assert_eq!(t.reading, "gridshare/v1/elm-street/meters/home-07/reading");
        assert_eq!(t.status, "gridshare/v1/elm-street/meters/home-07/status");
        assert_eq!(
            readings_filter("gridshare/v1", "elm-street"),
            "gridshare/v1/elm-street/meters/+/reading"
        );
    }

    #[test]
    fn filters_under_a_meter() {
        let base = meter_base("gridshare/v1", "elm", "home-07");
        for ok in [
            "gridshare/v1/elm/meters/home-07",
            "gridshare/v1/elm/meters/home-07/#",
            "gridshare/v1/elm/meters/home-07/+",
            "gridshare/v1/elm/meters/home-07/reading",
        ] {
            assert!(filter_stays_under(ok, &base), "{ok}");
        }
        for bad in [
            "gridshare/v1/elm/meters/home-070/reading",
            "gridshare/v1/elm/meters/+/reading",
            "gridshare/v1/elm/meters/#",
            "#",
            "gridshare/v1/elm/meters/home-0+",
        ] {
            assert!(!filter_stays_under(bad, &base), "{bad}");
        }
    }
}
