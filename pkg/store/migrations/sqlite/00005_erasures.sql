-- The erasure ledger's copy in the database, shared by every gateway of a
-- fleet (each keeps its own ledger with its keys): one row per erased
-- device or account. tombstone is HMAC(K_index, "erased" domain ‖ kind ‖
-- blind index), the row's identity; sealed_index the blind index sealed
-- with K_seal, so that only a gateway holding the keys can replay it. No
-- blind index is stored in the clear: an erased subject's index is in no
-- table any more.

-- +goose Up
CREATE TABLE erasures (
	tombstone    BLOB    NOT NULL PRIMARY KEY CHECK (length(tombstone) = 32),
	kind         TEXT    NOT NULL CHECK (kind IN ('device', 'account')),
	sealed_index BLOB    NOT NULL,
	erased_at    INTEGER NOT NULL
) WITHOUT ROWID;
