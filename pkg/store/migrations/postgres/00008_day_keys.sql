-- The PostgreSQL twin of sqlite/00008_day_keys.sql: the fleet's pseudonym
-- day keys, wrapped under the keystores' key-encryption key, and the
-- destruction horizon (one row, never lowered).

-- +goose Up
CREATE TABLE day_keys (
    day     TEXT PRIMARY KEY CHECK (length(day) = 10),
    wrapped BYTEA NOT NULL
);
CREATE TABLE day_key_horizon (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    horizon TEXT NOT NULL
);
INSERT INTO day_key_horizon (id, horizon) VALUES (1, '');
