// Package promtest holds the operations tests: the Prometheus alert rules
// (promtool), the Grafana dashboard's and the rules' PromQL against a real
// Prometheus scraping a real gateway, and the systemd units. It has no code
// of its own; see its _test.go files.
package promtest
