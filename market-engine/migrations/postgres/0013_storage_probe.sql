-- One row the engine writes to learn whether storage takes writes (start-up and /healthz):
-- a read-only database or a full disk fails here instead of in the middle of an order.
CREATE TABLE storage_probe (
    id        BIGINT PRIMARY KEY,
    probed_ms BIGINT NOT NULL
);
