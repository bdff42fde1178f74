-- Money paid in and out by households: what they may spend on bids, with the settled ledger.
-- Deposits are positive, withdrawals negative. A reference (a bank transfer id, a chain
-- transaction hash) is unique per account, so a retried deposit is never credited twice.
CREATE TABLE funding (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id BIGINT  NOT NULL,
    amount     BIGINT  NOT NULL CHECK (amount <> 0),
    reference  TEXT    NOT NULL,
    created_ms BIGINT  NOT NULL,
    UNIQUE (account_id, reference)
);
