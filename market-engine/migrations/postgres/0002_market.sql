-- The order log: every accepted submit, cancel and amend, in the order it was applied. The
-- in-memory books of open slots are rebuilt from it after a restart, so an acknowledged order
-- is never lost and a continuous trade is never made twice.
CREATE TABLE order_events (
    seq           BIGSERIAL PRIMARY KEY,
    slot          BIGINT  NOT NULL,
    order_id      BIGINT  NOT NULL,
    kind          TEXT    NOT NULL CHECK (kind IN ('submit', 'cancel', 'amend')),
    account_id    BIGINT  NOT NULL,
    meter_id      TEXT    NOT NULL,
    side          TEXT    NOT NULL,
    price_per_kwh BIGINT  NOT NULL,
    energy_wh     BIGINT  NOT NULL,
    at_s          BIGINT  NOT NULL
);
CREATE INDEX order_events_by_slot ON order_events (slot, seq);

CREATE TABLE trades (
    id              BIGSERIAL PRIMARY KEY,
    slot            BIGINT  NOT NULL,
    bid_order       BIGINT  NOT NULL,
    ask_order       BIGINT  NOT NULL,
    buyer           BIGINT  NOT NULL,
    seller          BIGINT  NOT NULL,
    energy_wh       BIGINT  NOT NULL,
    buyer_pays      BIGINT  NOT NULL,
    seller_receives BIGINT  NOT NULL,
    fees            BIGINT  NOT NULL,
    buyer_rate      BIGINT  NOT NULL,
    seller_rate     BIGINT  NOT NULL,
    -- The trade exactly as `core` made it (fee legs, price anchor), for settlement.
    trade_json      TEXT    NOT NULL
);
CREATE INDEX trades_by_slot ON trades (slot);

-- A slot appears here once its gate closed; 'settled' once delivery was settled.
CREATE TABLE slots (
    slot           BIGINT PRIMARY KEY NOT NULL,
    status         TEXT   NOT NULL CHECK (status IN ('closed', 'settled')),
    clearing_price BIGINT
);

-- Net token amounts per account and slot (households, the grid operator, the utility); each
-- slot's entries sum to zero.
CREATE TABLE ledger (
    id         BIGSERIAL PRIMARY KEY,
    slot       BIGINT  NOT NULL,
    account_id BIGINT  NOT NULL,
    amount     BIGINT  NOT NULL
);
CREATE INDEX ledger_by_account ON ledger (account_id);
