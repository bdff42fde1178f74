-- Money on chain follows the Settlement contract's events (issue 14, step 3).
--
-- `funding.source`: `operator` for money the community operator recorded (it arrived off
-- chain; with a chain backend the engine deposits it for the household with `depositFor`,
-- and `chain_tx`/`chain_block` say where that mirror went), `chain` for a household's own
-- deposit or paid-out withdrawal read from the contract's events (the reference is
-- `chain:<tx hash>:<log index>`).
ALTER TABLE funding ADD COLUMN source TEXT NOT NULL DEFAULT 'operator';
ALTER TABLE funding ADD COLUMN chain_tx TEXT;
ALTER TABLE funding ADD COLUMN chain_block BIGINT;

-- How far the engine has read the contract's events: the last block applied and its hash
-- (a different hash at that height later is a reorganisation deeper than `confirmations`).
-- Written in the same transaction as the events of the blocks up to it: nothing is counted
-- twice or missed across a restart.
CREATE TABLE chain_follow (
    contract   TEXT   PRIMARY KEY,
    block      BIGINT NOT NULL,
    block_hash TEXT   NOT NULL,
    updated_ms BIGINT NOT NULL
);

-- Withdrawals a household requested on chain and that are not paid out yet: held back from
-- what the account may spend (the contract still takes due debits from them).
CREATE TABLE chain_withdrawals (
    account_id BIGINT PRIMARY KEY,
    amount     BIGINT NOT NULL CHECK (amount > 0),
    ready_at   BIGINT NOT NULL
);
