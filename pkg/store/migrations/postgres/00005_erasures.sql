-- The PostgreSQL twin of sqlite/00005_erasures.sql: the erasure ledger's
-- copy shared by every gateway of a fleet (tombstone, kind, sealed blind
-- index, erasure time; no blind index in the clear).

-- +goose Up
CREATE TABLE erasures (
	tombstone    BYTEA  NOT NULL PRIMARY KEY CHECK (length(tombstone) = 32),
	kind         TEXT   NOT NULL CHECK (kind IN ('device', 'account')),
	sealed_index BYTEA  NOT NULL,
	erased_at    BIGINT NOT NULL
);
