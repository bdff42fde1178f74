-- The engine's money step looks, every few seconds, for deposits the operator recorded that
-- are not yet in a block on chain: a partial index keeps that a seek however long the funding
-- history grows.
CREATE INDEX funding_unmirrored ON funding (id) WHERE source = 'operator' AND chain_block IS NULL;
