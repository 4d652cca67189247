-- The PostgreSQL twin of sqlite/00006_binding_notices.sql: the time another
-- account bound the device, until the owner's next ListDevices takes it.

-- +goose Up
ALTER TABLE bindings ADD COLUMN other_bound_at BIGINT;
