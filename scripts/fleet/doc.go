// Package fleet is the root-only end-to-end test of a fleet: three real
// dasset-gateway processes, each in its own network namespace with its own
// data directory, on one throw-away PostgreSQL registry (a unix socket in a
// directory, which the gateways reach through the shared file system), and
// hundreds of devices (in-process netstack agents, each given all three
// gateways) run by a driver process in a fourth namespace. It kills a
// gateway with SIGKILL and checks that its devices and their sessions come
// back through the others with the same addresses and that nothing flaps
// when it returns, restarts PostgreSQL under load, revokes a device across
// gateways, and checks the registry with SQL. Run it with `make e2e` (as root); elsewhere it
// skips itself.
package fleet
