-- Fixture: migration 2 of the hand-rolled schema list (PRAGMA user_version)
-- that databases were written with before goose. Never edit it: tests build
-- old databases from it to prove they migrate without loss.
CREATE TABLE meta (
	key   TEXT NOT NULL PRIMARY KEY,
	value TEXT NOT NULL
) WITHOUT ROWID;
