-- Owners are told when another account binds their device: the binding of
-- every other owner gets the time of the new binding, until that owner's
-- next ListDevices takes it (Store.TakeBindingNotices). Nothing personal:
-- which account bound it is not kept here.

-- +goose Up
ALTER TABLE bindings ADD COLUMN other_bound_at INTEGER;
