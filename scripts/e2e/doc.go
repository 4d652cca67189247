// Package e2e is the root-only end-to-end harness: it builds a small network
// of namespaces joined by veth pairs, runs the real dasset-gateway, agents and
// dassetctl binaries in them, and checks logins, pings through the tunnel,
// `wg show`, refusals, a gateway restart and revocation. Run it with
// `make e2e` (as root); elsewhere it skips itself.
package e2e
