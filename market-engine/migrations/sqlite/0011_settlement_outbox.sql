-- Issue 11. The settlement outbox, in the engine's own database: a settled slot's batch is written in the
-- same transaction as its ledger rows, so a slot is never settled without its batch nor queued
-- twice. Batches are sent strictly in slot order; each row follows
-- pending → sent → included → confirmed (a receipt `confirmations` blocks deep), falls back when
-- its transaction is dropped or reorganised away, and is `rejected` (retried later, or re-sent
-- by the operator) when the contract refuses it. Replaces the separate SQLite outbox file and
-- `chain_batches`: slots settled before this migration are queued from the ledger by the engine.
CREATE TABLE settlement_batches (
    slot BIGINT PRIMARY KEY,
    -- 0x-hex Merkle root of the slot's trades and readings.
    root TEXT NOT NULL,
    -- 0x-hex of the packed 32-byte words exactly as `Settlement.settle` receives them.
    deltas TEXT NOT NULL,
    -- JSON: local sales credited to staked seller meters (`settleWithSales`).
    sales TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'included', 'confirmed', 'rejected')),
    attempts BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    -- Whether a rejected batch is tried again by itself (a balance may be topped up) or waits
    -- for the operator (the batch itself is wrong).
    retry BIGINT NOT NULL DEFAULT 1,
    next_attempt_ms BIGINT NOT NULL DEFAULT 0,
    tx_hash TEXT,
    block_number BIGINT,
    block_hash TEXT,
    gas_used BIGINT,
    queued_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE INDEX settlement_batches_open ON settlement_batches (status, slot);
DROP TABLE chain_batches;

-- Where each meter's settlement stands: the signed reading the last settled slot ended on. The
-- next slot starts from it, so a reading that arrives after its slot was settled is carried
-- into the next settlement and, over any period, the energy settled for a meter equals the
-- difference of its counters.
CREATE TABLE meter_positions (
    meter_id TEXT PRIMARY KEY,
    import_wh BIGINT NOT NULL,
    export_wh BIGINT NOT NULL,
    timestamp_ms BIGINT NOT NULL,
    digest TEXT NOT NULL,
    slot BIGINT NOT NULL
);

-- What each meter was settled for in each slot: the counters' movement between the readings
-- used (before any capacity cap), and the readings' times.
CREATE TABLE slot_deliveries (
    slot BIGINT NOT NULL,
    meter_id TEXT NOT NULL,
    account_id BIGINT NOT NULL,
    import_wh BIGINT NOT NULL,
    export_wh BIGINT NOT NULL,
    from_ms BIGINT NOT NULL,
    to_ms BIGINT NOT NULL,
    PRIMARY KEY (slot, meter_id)
);
