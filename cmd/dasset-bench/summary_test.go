package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestPercentileNearestRank(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{50, 50 * time.Millisecond}, {90, 90 * time.Millisecond}, {99, 99 * time.Millisecond}, {100, 100 * time.Millisecond}, {0.1, time.Millisecond}} {
		if got := percentile(d, c.p); got != c.want {
			t.Errorf("percentile(1..100ms, %v) = %v, want %v", c.p, got, c.want)
		}
	}
	three := []time.Duration{10, 20, 30}
	if got := percentile(three, 50); got != 20 {
		t.Errorf("p50 of 10,20,30 = %v, want 20", got)
	}
	if got := percentile(three, 99); got != 30 {
		t.Errorf("p99 of 10,20,30 = %v, want 30", got)
	}
	if got := percentile(nil, 99); got != 0 {
		t.Errorf("p99 of nothing = %v, want 0", got)
	}
}

func TestSummarize(t *testing.T) {
	// 10 logins: 8 succeed in 1..8 ms (given out of order), 2 fail.
	samples := []sample{
		{latency: 8 * time.Millisecond}, {latency: 3 * time.Millisecond},
		{latency: 500 * time.Millisecond, code: "Unavailable", msg: "connection refused"},
		{latency: 1 * time.Millisecond}, {latency: 7 * time.Millisecond},
		{latency: 2 * time.Millisecond}, {latency: 6 * time.Millisecond},
		{latency: 1 * time.Microsecond, code: "Unauthenticated", msg: "first"},
		{latency: 5 * time.Millisecond}, {latency: 4 * time.Millisecond},
	}
	samples = append(samples, sample{code: "Unauthenticated", msg: "second"})
	s := summarize("bootstorm", "127.0.0.1:1", 4, samples, 2*time.Second)
	if s.Devices != 11 || s.OK != 8 || s.Concurrency != 4 {
		t.Fatalf("devices/ok/concurrency = %d/%d/%d, want 11/8/4", s.Devices, s.OK, s.Concurrency)
	}
	if s.Errors["Unavailable"] != 1 || s.Errors["Unauthenticated"] != 2 || len(s.Errors) != 2 {
		t.Errorf("errors = %v", s.Errors)
	}
	if s.ErrorSamples["Unauthenticated"] != "first" {
		t.Errorf("error sample = %q, want the first message", s.ErrorSamples["Unauthenticated"])
	}
	if s.LoginsPerSecond != 4 || s.WallSeconds != 2 {
		t.Errorf("rate %v/s over %v s, want 4/s over 2 s (successes only)", s.LoginsPerSecond, s.WallSeconds)
	}
	// Latencies are over the 8 successes only: the failures' 500ms and 1µs are not in them.
	want := Latencies{P50: 4, P90: 8, P99: 8, Max: 8}
	if s.LatencyMS != want {
		t.Errorf("latency = %+v, want %+v", s.LatencyMS, want)
	}

	empty := summarize("baseline", "x", 1, nil, 0)
	if empty.OK != 0 || empty.LoginsPerSecond != 0 || empty.LatencyMS != (Latencies{}) {
		t.Errorf("empty summary = %+v", empty)
	}
}

func TestCompareRatios(t *testing.T) {
	ref := Summary{Mode: "baseline", Devices: 100, OK: 100, Errors: map[string]int{}, LoginsPerSecond: 1000, LatencyMS: Latencies{P99: 50}}
	got := Summary{Mode: "bootstorm", Devices: 100, OK: 98, Errors: map[string]int{"Unavailable": 2}, LoginsPerSecond: 900,
		LatencyMS: Latencies{P99: 100}, GatewayRSSBeforeKiB: 1000, GatewayRSSKiB: 1980}
	var b bytes.Buffer
	if err := compare(&b, ref, got); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, line := range []string{"logins/s 1000.0 900.0 0.90", "p99 ms 50.0 100.0 2.00", "errors 0 Unavailable=2", "RSS growth KiB/device - 10.0"} {
		if !strings.Contains(strings.Join(strings.Fields(out), " "), line) {
			t.Errorf("compare output lacks %q:\n%s", line, out)
		}
	}
}

func TestSummaryJSONRoundTrip(t *testing.T) {
	s := summarize("baseline", "127.0.0.1:9", 2, []sample{{latency: time.Millisecond}}, time.Second)
	var b bytes.Buffer
	if err := printJSON(&b, s); err != nil {
		t.Fatal(err)
	}
	var back Summary
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back.OK != 1 || back.LatencyMS.P99 != 1 || back.Mode != "baseline" || back.Time == "" {
		t.Errorf("round trip = %+v", back)
	}
	if strings.Contains(b.String(), "gateway_rss") {
		t.Errorf("baseline JSON carries gateway memory fields:\n%s", b.String())
	}
}

func TestParseStatus(t *testing.T) {
	status := "Name:\tdasset-gateway\nVmPeak:\t  900000 kB\nVmHWM:\t   81234 kB\nVmRSS:\t   80000 kB\nThreads:\t9\n"
	rss, peak, err := parseStatus(strings.NewReader(status))
	if err != nil || rss != 80000 || peak != 81234 {
		t.Fatalf("parseStatus = %d, %d, %v; want 80000, 81234, nil", rss, peak, err)
	}
	if _, _, err := parseStatus(strings.NewReader("Name:\tx\n")); err == nil {
		t.Error("no VmRSS line: no error")
	}
	if _, _, err := parseStatus(strings.NewReader("VmRSS:\t12 MB\n")); err == nil {
		t.Error("VmRSS in MB: no error")
	}
}

func TestParseStat(t *testing.T) {
	// A command name with spaces and parentheses; utime 250, stime 50 ticks.
	line := "4242 (dasset (gw) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 9 0 100 800000 2000\n"
	got, err := parseStat(line)
	if err != nil || got != 3 {
		t.Fatalf("parseStat = %v, %v; want 3 s", got, err)
	}
	if _, err := parseStat("4242 (x) S 1 2"); err == nil {
		t.Error("short stat line: no error")
	}
}

func TestCompareCPU(t *testing.T) {
	ref := Summary{Mode: "baseline", OK: 1000, BenchCPUSeconds: 3}
	got := Summary{Mode: "bootstorm", OK: 1000, BenchCPUSeconds: 2, GatewayCPUSeconds: 1.5}
	var b bytes.Buffer
	if err := compare(&b, ref, got); err != nil {
		t.Fatal(err)
	}
	out := strings.Join(strings.Fields(b.String()), " ")
	// Client 2 ms/login; bare server ~3-2 = 1 ms/login; gateway 1.5 ms/login.
	for _, want := range []string{"client CPU ms/login - 2.00", "server CPU ms/login ~1.00 1.50 1.50"} {
		if !strings.Contains(out, want) {
			t.Errorf("compare output lacks %q:\n%s", want, b.String())
		}
	}
}

// TestCompareTwoGateways: a reference that is a measured gateway (one on
// SQLite beside a fleet) is compared by its own CPU and memory figures.
func TestCompareTwoGateways(t *testing.T) {
	ref := Summary{Mode: "bootstorm", Label: "sqlite", OK: 1000, BenchCPUSeconds: 2, GatewayCPUSeconds: 2, GatewayRSSBeforeKiB: 1000, GatewayRSSKiB: 51000}
	got := Summary{Mode: "bootstorm", Label: "fleet", OK: 1000, BenchCPUSeconds: 2.5, GatewayCPUSeconds: 3, GatewayRSSBeforeKiB: 3000, GatewayRSSKiB: 93000}
	var b bytes.Buffer
	if err := compare(&b, ref, got); err != nil {
		t.Fatal(err)
	}
	out := strings.Join(strings.Fields(b.String()), " ")
	for _, want := range []string{"sqlite fleet fleet/sqlite", "client CPU ms/login 2.00 2.50", "server CPU ms/login 2.00 3.00 1.50", "RSS growth KiB/device 50.0 90.0"} {
		if !strings.Contains(out, want) {
			t.Errorf("compare output lacks %q:\n%s", want, b.String())
		}
	}
}

func TestSerialValidation(t *testing.T) {
	if s, err := serial("DS-BENCH-", 42); err != nil || s != "DS-BENCH-000042" || hardwareID(s) != "HW-DS-BENCH-000042" {
		t.Errorf("serial = %q, %v", s, err)
	}
	for _, bad := range []string{"DS BENCH", "DS/", strings.Repeat("x", 60)} {
		if _, err := serial(bad, 1); err == nil || !strings.Contains(err.Error(), "--prefix") {
			t.Errorf("prefix %q: err = %v, want a --prefix error", bad, err)
		}
	}
	c := stormConfig{Devices: 0, Concurrency: 1, Timeout: time.Second, Prefix: "A"}
	if err := c.validate(); err == nil || !strings.Contains(err.Error(), "--devices") {
		t.Errorf("0 devices: %v", err)
	}
}

func TestBaselineEndToEnd(t *testing.T) {
	addr, pin, stop, err := startBaseline(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	c := stormConfig{Gateway: addr, Pin: pin, Devices: 20, Concurrency: 4, Prefix: "T-", Timeout: 30 * time.Second}
	samples, wall, err := storm(t.Context(), c)
	if err != nil {
		t.Fatal(err)
	}
	s := summarize("baseline", addr, c.Concurrency, samples, wall)
	if s.OK != 20 || len(s.Errors) != 0 {
		t.Fatalf("summary = %+v", s)
	}

	// A wrong pin fails every handshake: counted, not fatal.
	c.Pin = strings.Repeat("00", 32)
	c.Devices = 3
	samples, wall, err = storm(t.Context(), c)
	if err != nil {
		t.Fatal(err)
	}
	s = summarize("baseline", addr, c.Concurrency, samples, wall)
	if s.OK != 0 || s.Errors["Unavailable"] != 3 || !strings.Contains(s.ErrorSamples["Unavailable"], "pin") {
		t.Fatalf("wrong pin summary = %+v", s)
	}
}

// TestStormSpreadsOverGateways: with several gateways, device i logs in to
// the (i mod n)-th, and the summary counts the logins per gateway.
func TestStormSpreadsOverGateways(t *testing.T) {
	dir := t.TempDir() // one certificate for both, as a fleet shares one
	addr1, pin1, stop1, err := startBaseline(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer stop1()
	addr2, pin2, stop2, err := startBaseline(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer stop2()
	if pin1 != pin2 {
		t.Fatalf("two baselines in one directory: pins %s and %s", pin1, pin2)
	}
	c := stormConfig{Gateway: addr1 + "," + addr2, Pin: pin1, Devices: 7, Concurrency: 3, Prefix: "T-", Timeout: 30 * time.Second}
	samples, wall, err := storm(t.Context(), c)
	if err != nil {
		t.Fatal(err)
	}
	s := summarize("bootstorm", c.Gateway, c.Concurrency, samples, wall)
	if s.OK != 7 || s.PerGateway[addr1] != 4 || s.PerGateway[addr2] != 3 || len(s.PerGateway) != 2 {
		t.Fatalf("summary = %+v; want 7 logins, 4 on %s and 3 on %s", s, addr1, addr2)
	}
	one := summarize("bootstorm", addr1, 1, samples[:1], wall)
	if one.PerGateway != nil {
		t.Fatalf("a storm on one gateway has per_gateway %v; want none", one.PerGateway)
	}

	c.Gateway = addr1 + ",nonsense"
	if _, _, err := storm(t.Context(), c); err == nil || !strings.Contains(err.Error(), "--gateway") {
		t.Fatalf("a bad gateway in the list: %v; want a --gateway error", err)
	}
}
