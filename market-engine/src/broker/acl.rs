//! Who may do what on the embedded broker: the access rules, pure.
//!
//! A meter publishes only its own `reading` and `status` (its last will likewise) in its own
//! community, and may subscribe only under its own topics: to check what it sent, and to hear
//! the engine's requests on its `resend` topic, where only the engine publishes (a meter that
//! could publish there could make a neighbour's agent flood the broker). The engine may do
//! anything. The same rules are shipped for Mosquitto and EMQX in
//! `market-engine/dist/`.

use gridshare_core::mqtt::{MeterTopics, filter_stays_under, meter_base};

/// Who a logged-in client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The market engine itself (or a tool holding its credential).
    Engine,
    /// A meter, by its id.
    Meter {
        /// The meter id (the MQTT user name).
        meter_id: String,
        /// Its topics.
        topics: MeterTopics,
        /// The level its topics live under.
        base: String,
    },
}

impl Identity {
    /// A meter of `community` under the topic prefix `prefix`.
    pub fn meter(prefix: &str, community: &str, meter_id: &str) -> Self {
        Self::Meter {
            meter_id: meter_id.to_owned(),
            topics: MeterTopics::new(prefix, community, meter_id),
            base: meter_base(prefix, community, meter_id),
        }
    }

    /// Whether this client may publish to `topic` (also: name it as its last will).
    pub fn may_publish(&self, topic: &str) -> bool {
        match self {
            Self::Engine => true,
            Self::Meter { topics, .. } => topic == topics.reading || topic == topics.status,
        }
    }

    /// Whether this client may subscribe to `filter`.
    pub fn may_subscribe(&self, filter: &str) -> bool {
        match self {
            Self::Engine => true,
            Self::Meter { base, .. } => filter_stays_under(filter, base),
        }
    }

    /// The user name, for logs.
    pub fn name(&self) -> &str {
        match self {
            Self::Engine => super::ENGINE_USER,
            Self::Meter { meter_id, .. } => meter_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_meter_publishes_only_its_own_reading_and_status() {
        let a = Identity::meter("gridshare/v1", "elm", "home-01");
        assert!(a.may_publish("gridshare/v1/elm/meters/home-01/reading"));
        assert!(a.may_publish("gridshare/v1/elm/meters/home-01/status"));
        for denied in [
            "gridshare/v1/elm/meters/home-02/reading",
            "gridshare/v1/elm/meters/home-02/status",
            "gridshare/v1/oak/meters/home-01/reading",
            "gridshare/v1/elm/meters/home-01/command",
            "gridshare/v1/elm/meters/home-01/resend",
            "gridshare/v1/elm/meters/home-02/resend",
            "gridshare/v1/elm/meters/home-01",
            "gridshare/v1/elm/meters/+/reading",
            "gridshare/v1/elm/meters/home-01/reading/x",
        ] {
            assert!(!a.may_publish(denied), "{denied}");
        }
        assert!(Identity::Engine.may_publish("anything/at/all"));
        assert!(Identity::Engine.may_publish("gridshare/v1/elm/meters/home-01/resend"));
    }

    #[test]
    fn a_meter_reads_only_its_own_topics() {
        let a = Identity::meter("gridshare/v1", "elm", "home-01");
        assert!(a.may_subscribe("gridshare/v1/elm/meters/home-01/#"));
        assert!(a.may_subscribe("gridshare/v1/elm/meters/home-01/status"));
        assert!(a.may_subscribe("gridshare/v1/elm/meters/home-01/resend"));
        for denied in [
            "gridshare/v1/elm/meters/home-02/resend",
            "gridshare/v1/elm/meters/+/resend",
            "gridshare/v1/elm/meters/+/reading",
            "gridshare/v1/elm/meters/#",
            "#",
            "gridshare/v1/+/meters/home-01/reading",
            "gridshare/v1/elm/meters/home-012/reading",
            "$SYS/#",
        ] {
            assert!(!a.may_subscribe(denied), "{denied}");
        }
        assert!(Identity::Engine.may_subscribe("gridshare/v1/elm/meters/+/reading"));
    }
}
