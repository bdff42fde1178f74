-- The last good lifetime PV counter (readings with solar and battery power, encoding
-- version 2), checked across restarts like the grid and battery counters.
ALTER TABLE agent_state ADD COLUMN last_pv_wh INTEGER;
