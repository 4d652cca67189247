-- Gateways as records: each gateway of a fleet (one row for a single
-- gateway) with its instance id, WireGuard public key, the endpoint devices
-- dial, when it started and its last heartbeat. Nothing personal.

-- +goose Up
CREATE TABLE gateways (
	instance_id  TEXT    NOT NULL PRIMARY KEY CHECK (instance_id <> ''),
	public_key   BLOB    NOT NULL CHECK (length(public_key) = 32),
	endpoint     TEXT    NOT NULL DEFAULT '',
	started_at   INTEGER NOT NULL,
	heartbeat_at INTEGER NOT NULL
) WITHOUT ROWID;
