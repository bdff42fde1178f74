-- A meter's readings count only once the community operator approved it, with the rated
-- capacity and the device identity it was installed with: a key anyone can make must not be
-- able to credit itself energy (issue 10). Meters registered before this migration are
-- pending until approved.
ALTER TABLE meters ADD COLUMN approved_ms BIGINT;
ALTER TABLE meters ADD COLUMN approved_by BIGINT;
ALTER TABLE meters ADD COLUMN export_capacity_w BIGINT;
ALTER TABLE meters ADD COLUMN import_capacity_w BIGINT;
ALTER TABLE meters ADD COLUMN manufacturer TEXT;
ALTER TABLE meters ADD COLUMN model TEXT;
ALTER TABLE meters ADD COLUMN serial TEXT;

-- One key, one meter: a key reused for several meters would let one device speak for many.
CREATE UNIQUE INDEX meters_by_public_key ON meters (public_key);
CREATE INDEX meters_by_account ON meters (account_id);
CREATE INDEX rejections_by_time ON rejections (received_ms);
