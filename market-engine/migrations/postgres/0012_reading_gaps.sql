-- Sequence numbers missing between a meter's stored readings (issue 11, item 6), as inclusive
-- ranges, kept in the transaction that stores readings. The engine asks the meter's agent to
-- send them again until they arrive, or marks them unfillable once the agent can no longer
-- have them.
CREATE TABLE reading_gaps (
    meter_id        TEXT   NOT NULL,
    first_seq       BIGINT NOT NULL,
    last_seq        BIGINT NOT NULL,
    -- When the engine found the gap (received time of the reading above it), ms.
    detected_ms     BIGINT NOT NULL,
    -- Requests sent to the agent for it, the latest, and when it is due again, ms.
    requests        BIGINT NOT NULL DEFAULT 0,
    last_request_ms BIGINT,
    next_request_ms BIGINT NOT NULL,
    -- Set when the gap was given up: the readings are lost.
    unfillable_ms   BIGINT,
    PRIMARY KEY (meter_id, first_seq),
    CHECK (first_seq <= last_seq)
);

CREATE INDEX reading_gaps_due ON reading_gaps (next_request_ms) WHERE unfillable_ms IS NULL;
