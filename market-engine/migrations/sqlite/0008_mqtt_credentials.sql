-- MQTT credentials of approved meters for the engine's embedded broker: the user name is the
-- meter id; only the SHA-256 (hex) of the random password is kept, the password itself is
-- shown once when issued. Re-issuing replaces the row; revoking stamps revoked_ms. The gate
-- polls rows changed since its last look (created_ms, revoked_ms) to cut revoked sessions.
CREATE TABLE mqtt_credentials (
    username      TEXT   PRIMARY KEY NOT NULL,
    password_hash TEXT   NOT NULL,
    meter_id      TEXT   NOT NULL,
    created_ms    BIGINT NOT NULL,
    revoked_ms    BIGINT
);
CREATE INDEX mqtt_credentials_created ON mqtt_credentials (created_ms);
CREATE INDEX mqtt_credentials_revoked ON mqtt_credentials (revoked_ms);
