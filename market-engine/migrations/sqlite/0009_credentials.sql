-- When each session or API token was issued (listed with the account's tokens), and an index
-- for listing and revoking one account's credentials. Credentials issued before this have no
-- issue time; the engine gives any credential without an expiry one when it starts.
ALTER TABLE credentials ADD COLUMN created_ms BIGINT;
CREATE INDEX credentials_account ON credentials (account_id);
