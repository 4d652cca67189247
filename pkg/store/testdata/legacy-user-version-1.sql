-- Fixture: migration 1 of the hand-rolled schema list (PRAGMA user_version)
-- that databases were written with before goose. Never edit it: tests build
-- old databases from it to prove they migrate without loss.
CREATE TABLE devices (
	id             INTEGER PRIMARY KEY,
	blind_index    BLOB    NOT NULL UNIQUE CHECK (length(blind_index) = 32),
	sealed_serial  BLOB    NOT NULL,
	verifier       BLOB    NOT NULL CHECK (length(verifier) = 32),
	pinned_key     BLOB    UNIQUE CHECK (pinned_key IS NULL OR length(pinned_key) = 32),
	address_offset INTEGER UNIQUE CHECK (address_offset IS NULL OR address_offset > 0),
	last_login_day TEXT    NOT NULL DEFAULT '',
	revoked        INTEGER NOT NULL DEFAULT 0 CHECK (revoked IN (0, 1)),
	enrolled_at    INTEGER NOT NULL
);

-- One row per WireGuard public key in use, whoever owns it: a key is unique
-- across devices, open client sessions and the gateway.
CREATE TABLE wg_keys (
	key        BLOB NOT NULL PRIMARY KEY CHECK (length(key) = 32),
	owner_kind TEXT NOT NULL CHECK (owner_kind IN ('gateway', 'device', 'client')),
	owner_id   TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE INDEX wg_keys_owner ON wg_keys (owner_kind, owner_id);

CREATE TABLE device_tokens (
	hash       BLOB    NOT NULL PRIMARY KEY CHECK (length(hash) = 32),
	device_id  INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
	expires_at INTEGER NOT NULL
);
CREATE INDEX device_tokens_device ON device_tokens (device_id);
CREATE INDEX device_tokens_expires ON device_tokens (expires_at);

CREATE TABLE auth_failures (
	id          INTEGER PRIMARY KEY,
	blind_index BLOB    NOT NULL CHECK (length(blind_index) = 32),
	at          INTEGER NOT NULL
);
CREATE INDEX auth_failures_index_at ON auth_failures (blind_index, at);
CREATE INDEX auth_failures_at ON auth_failures (at);

CREATE TABLE accounts (
	id            INTEGER PRIMARY KEY,
	name_index    BLOB    NOT NULL UNIQUE CHECK (length(name_index) = 32),
	sealed_name   BLOB    NOT NULL,
	password_hash TEXT    NOT NULL,
	created_at    INTEGER NOT NULL
);

CREATE TABLE access_tokens (
	hash       BLOB    NOT NULL PRIMARY KEY CHECK (length(hash) = 32),
	account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
	expires_at INTEGER NOT NULL
);
CREATE INDEX access_tokens_account ON access_tokens (account_id);
CREATE INDEX access_tokens_expires ON access_tokens (expires_at);

CREATE TABLE bindings (
	account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
	device_id  INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
	PRIMARY KEY (account_id, device_id)
);
CREATE INDEX bindings_device ON bindings (device_id);

CREATE TABLE binding_codes (
	hash       BLOB    NOT NULL PRIMARY KEY CHECK (length(hash) = 32),
	device_id  INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
	expires_at INTEGER NOT NULL
);
CREATE INDEX binding_codes_device ON binding_codes (device_id);
CREATE INDEX binding_codes_expires ON binding_codes (expires_at);

-- account_id becomes NULL when the account is deleted: closed sessions kept
-- for their retention period no longer link to it.
CREATE TABLE sessions (
	id            TEXT    NOT NULL PRIMARY KEY CHECK (id <> ''),
	account_id    INTEGER REFERENCES accounts (id) ON DELETE SET NULL,
	device_id     INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
	client_key    BLOB    NOT NULL CHECK (length(client_key) = 32),
	client_offset INTEGER NOT NULL CHECK (client_offset > 0),
	opened_at     INTEGER NOT NULL,
	expires_at    INTEGER NOT NULL,
	closed_at     INTEGER
);
-- A client offset is unique among open sessions only: closing frees it.
CREATE UNIQUE INDEX sessions_open_offset ON sessions (client_offset) WHERE closed_at IS NULL;
CREATE INDEX sessions_account ON sessions (account_id);
CREATE INDEX sessions_device ON sessions (device_id);
CREATE INDEX sessions_closed ON sessions (closed_at) WHERE closed_at IS NOT NULL;

CREATE TABLE connection_log (
	id            INTEGER PRIMARY KEY,
	time          INTEGER NOT NULL,
	event         TEXT    NOT NULL,
	outcome       TEXT    NOT NULL,
	pseudonym     BLOB    NOT NULL CHECK (length(pseudonym) = 16),
	source_prefix TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX connection_log_time ON connection_log (time);
CREATE INDEX connection_log_pseudonym ON connection_log (pseudonym, time);
