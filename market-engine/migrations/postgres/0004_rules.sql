-- A household's automatic trading rule for one of its meters: each slot the engine forecasts the
-- meter's net energy from its own recent signed readings and places the order the rule allows.
CREATE TABLE trading_rules (
    meter_id            TEXT   PRIMARY KEY NOT NULL REFERENCES meters (meter_id),
    account_id          BIGINT NOT NULL,
    sell_at_least       BIGINT,
    buy_at_most         BIGINT,
    keep_battery_above  BIGINT,
    updated_ms          BIGINT NOT NULL
);
