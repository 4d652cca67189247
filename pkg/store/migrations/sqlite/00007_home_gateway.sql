-- Fleet homes: the instance id of the gateway each device last logged in
-- to (NULL = none yet), the gateway that keeps it as a WireGuard peer.
-- Checked like gateways.instance_id; no foreign key, a gateway's row comes
-- and goes with its heartbeats. Indexed for Store.HomePeers, the peer list
-- of one gateway. Nothing personal: an instance id names a gateway.

-- +goose Up
ALTER TABLE devices ADD COLUMN home_gateway TEXT CHECK (home_gateway IS NULL OR (home_gateway <> '' AND length(CAST(home_gateway AS BLOB)) <= 64));
CREATE INDEX devices_home ON devices (home_gateway) WHERE home_gateway IS NOT NULL;
