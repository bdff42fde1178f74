-- The signed readings a slot's settlement relied on (SHA-256 of their encoding), committed in
-- the slot's Merkle root next to its trades.
CREATE TABLE slot_readings (
    slot   BIGINT NOT NULL,
    digest TEXT   NOT NULL,
    PRIMARY KEY (slot, digest)
);

-- Settled slots handed to the settlement outbox (which sends, retries and confirms them).
CREATE TABLE chain_batches (
    slot      BIGINT PRIMARY KEY NOT NULL,
    queued_ms BIGINT NOT NULL
);
