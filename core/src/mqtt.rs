//! Where readings travel over MQTT: the broker URL every part accepts (`mqtt://` or, with TLS,
//! `mqtts://`), the topic layout `<prefix>/<community>/meters/<meter>/{reading,status,resend}`
//! and the engine's request to send readings again ([`ResendRequest`]).
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
    /// The market engine's requests to send readings again ([`ResendRequest`]): only the
    /// engine publishes here, only the meter subscribes.
    pub resend: String,
}

impl MeterTopics {
    /// `<prefix>/<community>/meters/<meter>/{reading,status,resend}`.
    pub fn new(prefix: &str, community: &str, meter: &str) -> Self {
        let base = meter_base(prefix, community, meter);
        Self {
            reading: format!("{base}/reading"),
            status: format!("{base}/status"),
            resend: format!("{base}/resend"),
        }
    }
}

/// Most sequence-number ranges one [`ResendRequest`] names.
pub const MAX_RESEND_RANGES: usize = 16;

/// Most readings one [`ResendRequest`] asks for (all its ranges together).
pub const MAX_RESEND_READINGS: u64 = 1000;

/// Largest accepted request payload, bytes (16 ranges of two 20-digit numbers fit easily).
pub const MAX_RESEND_REQUEST_LEN: usize = 2048;

/// The market engine asks a meter's agent to publish readings again: the ones it signed with
/// the sequence numbers in `ranges` (inclusive), which the engine found missing. JSON
/// `{"ranges":[[first,last],...]}` on the meter's `resend` topic. The agent answers by
/// publishing the very same signed envelopes on its `reading` topic, as far as it still keeps
/// them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResendRequest {
    /// Inclusive ranges of sequence numbers, ascending and not overlapping.
    pub ranges: Vec<(u64, u64)>,
}

/// A resend request that is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResendRequestError {
    /// Longer than [`MAX_RESEND_REQUEST_LEN`].
    #[error("resend request of {0} bytes, limit {MAX_RESEND_REQUEST_LEN}")]
    Oversize(usize),
    /// Not the JSON shape.
    #[error("resend request is not {{\"ranges\":[[first,last],...]}}: {0}")]
    Malformed(String),
    /// A range that is empty, reversed, overlapping or out of order, or too many of them.
    #[error("resend request: {0}")]
    Invalid(String),
}

impl ResendRequest {
    /// A request for `ranges`, which must hold the bounds [`ResendRequest::parse`] checks.
    pub fn new(ranges: Vec<(u64, u64)>) -> Result<Self, ResendRequestError> {
        let request = Self { ranges };
        request.check()?;
        Ok(request)
    }

    /// Parses and checks a request as it arrives: at most [`MAX_RESEND_RANGES`] ranges,
    /// each `first <= last`, ascending without overlap, and [`MAX_RESEND_READINGS`] in all.
    pub fn parse(payload: &[u8]) -> Result<Self, ResendRequestError> {
        if payload.len() > MAX_RESEND_REQUEST_LEN {
            return Err(ResendRequestError::Oversize(payload.len()));
        }
        let request: Self = serde_json::from_slice(payload)
            .map_err(|e| ResendRequestError::Malformed(e.to_string()))?;
        request.check()?;
        Ok(request)
    }

    fn check(&self) -> Result<(), ResendRequestError> {
        let invalid = |m: String| Err(ResendRequestError::Invalid(m));
        if self.ranges.is_empty() || self.ranges.len() > MAX_RESEND_RANGES {
            return invalid(format!(
                "{} ranges, expected 1 to {MAX_RESEND_RANGES}",
                self.ranges.len()
            ));
        }
        let mut total = 0u64;
        let mut previous: Option<u64> = None;
        for &(first, last) in &self.ranges {
            if first > last {
                return invalid(format!("range [{first}, {last}] is reversed"));
            }
            if previous.is_some_and(|p| first <= p) {
                return invalid(format!(
                    "range [{first}, {last}] overlaps or precedes the one before"
                ));
            }
            previous = Some(last);
            total = total.saturating_add(last - first).saturating_add(1);
        }
        if total > MAX_RESEND_READINGS {
            return invalid(format!(
                "{total} readings asked for, at most {MAX_RESEND_READINGS} per request"
            ));
        }
        Ok(())
    }

    /// The JSON payload.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Every sequence number asked for, ascending.
    pub fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges.iter().flat_map(|&(a, b)| a..=b)
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
        assert_eq!(t.resend, "gridshare/v1/elm-street/meters/home-07/resend");
        assert_eq!(
            readings_filter("gridshare/v1", "elm-street"),
            "gridshare/v1/elm-street/meters/+/reading"
        );
    }

    #[test]
    fn resend_requests_are_bounded() {
        let r = ResendRequest::new(vec![(3, 5), (9, 9)]).unwrap();
        assert_eq!(r.to_json(), r#"{"ranges":[[3,5],[9,9]]}"#);
        assert_eq!(ResendRequest::parse(r.to_json().as_bytes()).unwrap(), r);
        assert_eq!(r.seqs().collect::<Vec<_>>(), vec![3, 4, 5, 9]);
        assert!(ResendRequest::new(vec![(1, 1000)]).is_ok());
        for bad in [
            r#"{"ranges":[]}"#,
            r#"{"ranges":[[5,3]]}"#,
            r#"{"ranges":[[1,5],[5,6]]}"#,
            r#"{"ranges":[[7,8],[1,2]]}"#,
            r#"{"ranges":[[1,1001]]}"#,
            r#"{"ranges":[[0,18446744073709551615]]}"#,
            r#"{"ranges":[[1,2]],"more":1}"#,
            "not json",
        ] {
            assert!(ResendRequest::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        let many: Vec<(u64, u64)> = (0..17).map(|i| (i * 2, i * 2)).collect();
        assert!(ResendRequest::new(many).is_err());
        let huge = vec![b' '; MAX_RESEND_REQUEST_LEN + 1];
        assert_eq!(
            ResendRequest::parse(&huge),
            Err(ResendRequestError::Oversize(MAX_RESEND_REQUEST_LEN + 1))
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
