-- Store metadata, e.g. the id of the keystore the data was written with
-- (was migration 2 of PRAGMA user_version before goose).

-- +goose Up
CREATE TABLE meta (
	key   TEXT NOT NULL PRIMARY KEY,
	value TEXT NOT NULL
) WITHOUT ROWID;
