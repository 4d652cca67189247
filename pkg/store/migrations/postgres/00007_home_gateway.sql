-- The PostgreSQL twin of sqlite/00007_home_gateway.sql: each device's home
-- gateway (instance id; NULL = none yet), indexed for Store.HomePeers.

-- +goose Up
ALTER TABLE devices ADD COLUMN home_gateway TEXT CHECK (home_gateway IS NULL OR (home_gateway <> '' AND octet_length(home_gateway) <= 64));
CREATE INDEX devices_home ON devices (home_gateway) WHERE home_gateway IS NOT NULL;
