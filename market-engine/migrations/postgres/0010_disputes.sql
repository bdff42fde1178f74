-- Meters whose delivery in a settled slot could not be established (a counter went backwards,
-- or a meter that traded has no reading bracketing the slot). Their accounts were settled at
-- their traded quantities with nothing for imbalance; the operator looks here.
CREATE TABLE disputed_meters (
    slot BIGINT NOT NULL,
    meter_id TEXT NOT NULL,
    account_id BIGINT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (slot, meter_id)
);
