CREATE TABLE accounts (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    role          TEXT    NOT NULL CHECK (role IN ('household', 'operator')),
    created_ms    BIGINT  NOT NULL
);

-- Session cookies and API tokens; only a SHA-256 of the secret is stored.
CREATE TABLE credentials (
    token_hash TEXT   PRIMARY KEY NOT NULL,
    account_id BIGINT NOT NULL REFERENCES accounts (id),
    kind       TEXT   NOT NULL CHECK (kind IN ('session', 'api_token')),
    label      TEXT   NOT NULL,
    expires_ms BIGINT
);

CREATE TABLE meters (
    meter_id   TEXT   PRIMARY KEY NOT NULL,
    account_id BIGINT NOT NULL REFERENCES accounts (id),
    public_key TEXT   NOT NULL,
    key_id     TEXT   NOT NULL,
    created_ms BIGINT NOT NULL
);

-- Accepted readings; NULL where the reading carries no value (see the envelope for status).
CREATE TABLE readings (
    meter_id             TEXT   NOT NULL REFERENCES meters (meter_id),
    seq                  BIGINT NOT NULL,
    timestamp_ms         BIGINT NOT NULL,
    received_ms          BIGINT NOT NULL,
    import_wh            BIGINT,
    export_wh            BIGINT,
    battery_charge_wh    BIGINT,
    battery_discharge_wh BIGINT,
    power_w              BIGINT,
    soc_bp               BIGINT,
    digest               TEXT   NOT NULL,
    envelope             TEXT   NOT NULL,
    PRIMARY KEY (meter_id, seq)
);
CREATE INDEX readings_by_time ON readings (meter_id, timestamp_ms);

CREATE TABLE rejections (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ms BIGINT  NOT NULL,
    meter_id    TEXT,
    reason      TEXT    NOT NULL,
    detail      TEXT    NOT NULL
);
