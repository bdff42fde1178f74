-- Market settings set by the community operator, each effective from a slot whose order window
-- had not opened when it was set, so no open order ever changes terms under it.
CREATE TABLE market_settings (
    from_slot  BIGINT PRIMARY KEY NOT NULL,
    settings   TEXT   NOT NULL,
    created_ms BIGINT NOT NULL
);
