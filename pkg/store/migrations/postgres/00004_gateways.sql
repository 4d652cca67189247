-- The PostgreSQL twin of sqlite/00004_gateways.sql: gateways as records
-- (instance id, WireGuard public key, endpoint, start and last heartbeat).

-- +goose Up
CREATE TABLE gateways (
	instance_id  TEXT   NOT NULL PRIMARY KEY CHECK (instance_id <> ''),
	public_key   BYTEA  NOT NULL CHECK (length(public_key) = 32),
	endpoint     TEXT   NOT NULL DEFAULT '',
	started_at   BIGINT NOT NULL,
	heartbeat_at BIGINT NOT NULL
);
