-- The PostgreSQL twin of sqlite/00003_verifier_version.sql: the HWID
-- verifiers enrolled so far are version 1 (HMAC only); the daemon wraps them
-- into the current, memory-hard version at start (Store.UpgradeVerifiers).
-- A database without devices has nothing to upgrade.

-- +goose Up
INSERT INTO meta (key, value) SELECT 'verifier_version', '1' WHERE EXISTS (SELECT 1 FROM devices);
