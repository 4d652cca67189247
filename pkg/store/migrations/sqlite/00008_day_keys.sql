-- Pseudonym day keys shared by the gateways of a fleet (store.DayKeys):
-- each day's key wrapped (AEAD) under a key-encryption key that lives only
-- in the gateways' keystores, so the database alone reveals no key, and the
-- horizon before which every day key is destroyed (one row, never lowered).
-- A single SQLite gateway keeps its day keys in its keystore instead; the
-- tables exist so that both dialects keep one schema.

-- +goose Up
CREATE TABLE day_keys (
    day     TEXT PRIMARY KEY CHECK (length(day) = 10),
    wrapped BLOB NOT NULL
);
CREATE TABLE day_key_horizon (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    horizon TEXT NOT NULL
);
INSERT INTO day_key_horizon (id, horizon) VALUES (1, '');
