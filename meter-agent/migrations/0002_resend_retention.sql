-- A reading the broker acknowledged is kept until `acked_ms` + resend_retention_s, so that the
-- market engine can ask for it again when the broker lost it (restarted without persistence
-- while the engine was away). Readings not yet acknowledged have no `acked_ms`.
ALTER TABLE outbox ADD COLUMN acked_ms INTEGER;

CREATE INDEX outbox_unacknowledged ON outbox (seq) WHERE acked_ms IS NULL;
CREATE INDEX outbox_acknowledged ON outbox (acked_ms) WHERE acked_ms IS NOT NULL;
