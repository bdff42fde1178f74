-- Signed readings waiting for the broker's acknowledgement, oldest first.
CREATE TABLE outbox (
    seq        INTEGER PRIMARY KEY NOT NULL,
    payload    TEXT    NOT NULL,
    created_ms INTEGER NOT NULL
);

-- One row: the meter this file belongs to, the next sequence number, and the last good
-- lifetime counters (so a counter that went backwards is caught across restarts too).
CREATE TABLE agent_state (
    id                  INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    meter_id            TEXT    NOT NULL,
    next_seq            INTEGER NOT NULL,
    last_import_wh      INTEGER,
    last_export_wh      INTEGER,
    last_charge_wh      INTEGER,
    last_discharge_wh   INTEGER
);
