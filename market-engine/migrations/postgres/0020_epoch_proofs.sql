-- The engine's proofs of its meters' epochs to MeterStaking, submitted as the owners' delegate
-- (issue 15): one row per meter and epoch. `sending` is written before the transaction goes
-- out, so a restart finds what it may have sent; the chain's record of the meter's last proven
-- reading decides what is proven, this table only what was tried, when to try again and why
-- it failed (shown in GET /api/v1/meters/{meter_id}/stake).
CREATE TABLE epoch_proofs (
    meter_id        TEXT   NOT NULL,
    epoch           BIGINT NOT NULL,
    status          TEXT   NOT NULL CHECK (status IN ('sending', 'proved', 'failed')),
    attempts        BIGINT NOT NULL,
    end_seq         BIGINT NOT NULL,
    tx_hash         TEXT,
    credited_wh     BIGINT,
    last_error      TEXT,
    next_attempt_ms BIGINT NOT NULL,
    updated_ms      BIGINT NOT NULL,
    PRIMARY KEY (meter_id, epoch)
);
