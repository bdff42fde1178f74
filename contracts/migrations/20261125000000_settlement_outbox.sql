-- Settlement batches written before they are sent, so a crash or an RPC outage loses none and
-- a restart resumes where it stopped. One row per batch id; the id is also the contract's
-- idempotency key.
CREATE TABLE IF NOT EXISTS settlement_outbox (
    batch_id     INTEGER PRIMARY KEY,
    root         BLOB    NOT NULL,
    -- The packed 32-byte words exactly as `Settlement.settle` receives them.
    deltas       BLOB    NOT NULL,
    status       TEXT    NOT NULL CHECK (status IN ('pending', 'confirmed', 'rejected')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    tx_hash      BLOB,
    block_number INTEGER,
    gas_used     INTEGER,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
