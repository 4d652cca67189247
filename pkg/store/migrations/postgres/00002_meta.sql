-- Store metadata, e.g. the id of the keystore the data was written with
-- (the PostgreSQL twin of sqlite/00002_meta.sql).

-- +goose Up
CREATE TABLE meta (
	key   TEXT NOT NULL PRIMARY KEY,
	value TEXT NOT NULL
);
