-- A household's own wallet as its chain address (issue 14): linked with the wallet's EIP-712
-- `LinkWallet` signature over (wallet, account, nonce) under the Settlement contract's domain,
-- so a wallet cannot be named by an account it did not consent to. From then on the account's
-- batches, leaves and proofs use this address, and the engine holds no key for it.
CREATE TABLE linked_wallets (
    account_id BIGINT PRIMARY KEY,
    address    TEXT   NOT NULL UNIQUE,
    linked_ms  BIGINT NOT NULL
);
