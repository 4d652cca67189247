-- The registry of a DASSET fleet (README, "Running a fleet"): one role and
-- one database it owns. Run as a PostgreSQL superuser, e.g.
--   psql -v password="'...'" -f configs/fleet/postgres.sql
-- The gateways create and migrate the schema themselves at start (several
-- starting at once migrate once, under an advisory lock).
CREATE ROLE dasset_gateway LOGIN PASSWORD :password;
CREATE DATABASE dasset OWNER dasset_gateway ENCODING 'UTF8' TEMPLATE template0;
