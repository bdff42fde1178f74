-- Solar and battery power of readings that carry them (encoding version 2): PV power now (W),
-- lifetime PV energy (Wh) and battery power (W, positive = charging). NULL where the reading
-- has no value, and for every reading of version 1.
ALTER TABLE readings ADD COLUMN pv_power_w BIGINT;
ALTER TABLE readings ADD COLUMN pv_wh BIGINT;
ALTER TABLE readings ADD COLUMN battery_power_w BIGINT;
