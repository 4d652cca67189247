package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// sample is the outcome of one device's login: how long it took (dial, TLS
// handshake and the Login call) and the gRPC code name of its error ("" when
// it succeeded).
type sample struct {
	latency time.Duration
	code    string
	msg     string
	gateway string // the gateway it logged in to (of several)
}

// Latencies are login latencies in milliseconds, over successful logins.
type Latencies struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// Summary is what one run prints, as JSON, on standard output. bootstorm and
// baseline print the same shape so that they can be compared.
type Summary struct {
	Mode string `json:"mode"`
	// Label names the run in compare's header instead of Mode (e.g.
	// "sqlite" and "fleet" for two boot storms side by side).
	Label       string `json:"label,omitempty"`
	Target      string `json:"target"`
	Devices     int    `json:"devices"`
	Concurrency int    `json:"concurrency"`
	OK          int    `json:"ok"`
	// PerGateway counts successful logins by gateway when the storm went
	// to several (a fleet); the figures below are over all of them.
	PerGateway map[string]int `json:"per_gateway,omitempty"`
	// Errors counts failed logins by gRPC code name.
	Errors map[string]int `json:"errors"`
	// ErrorSamples holds the first message seen for each code in Errors.
	ErrorSamples    map[string]string `json:"error_samples,omitempty"`
	WallSeconds     float64           `json:"wall_seconds"`
	LoginsPerSecond float64           `json:"logins_per_second"`
	LatencyMS       Latencies         `json:"latency_ms"`
	// Gateway memory (from /proc/PID/status) when --pid is given, in KiB:
	// resident before and after the run, and the process's peak (VmHWM);
	// with several gateway processes, the sums over them.
	GatewayRSSBeforeKiB int64 `json:"gateway_rss_before_kib,omitempty"`
	GatewayRSSKiB       int64 `json:"gateway_rss_kib,omitempty"`
	GatewayPeakRSSKiB   int64 `json:"gateway_peak_rss_kib,omitempty"`
	// CPU time (user+system, seconds) spent during the storm by this process
	// (the clients, and in baseline also the reference server) and, with
	// --pid, by the gateway (by all of them, with several).
	BenchCPUSeconds   float64 `json:"bench_cpu_seconds"`
	GatewayCPUSeconds float64 `json:"gateway_cpu_seconds,omitempty"`
	Time              string  `json:"time"`
}

// name is the run's label, or its mode.
func (s Summary) name() string {
	if s.Label != "" {
		return s.Label
	}
	return s.Mode
}

// percentile returns the nearest-rank p-th percentile (0 < p <= 100) of
// sorted, or 0 when sorted is empty.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }

// summarize builds the summary of samples taken over wall. Latency
// percentiles are over the successful logins only (a refused or failed
// connection can be much faster or slower than a login and says little).
func summarize(mode, target string, concurrency int, samples []sample, wall time.Duration) Summary {
	s := Summary{
		Mode: mode, Target: target, Devices: len(samples), Concurrency: concurrency,
		Errors: map[string]int{}, WallSeconds: math.Round(wall.Seconds()*1e3) / 1e3,
	}
	lat := make([]time.Duration, 0, len(samples))
	targets := map[string]int{}
	for _, x := range samples {
		if x.gateway != "" {
			targets[x.gateway] += 0
		}
		if x.code == "" {
			s.OK++
			lat = append(lat, x.latency)
			if x.gateway != "" {
				targets[x.gateway]++
			}
			continue
		}
		s.Errors[x.code]++
		if _, seen := s.ErrorSamples[x.code]; !seen {
			if s.ErrorSamples == nil {
				s.ErrorSamples = map[string]string{}
			}
			s.ErrorSamples[x.code] = x.msg
		}
	}
	if len(targets) > 1 {
		s.PerGateway = targets
	}
	slices.Sort(lat)
	if wall > 0 {
		s.LoginsPerSecond = math.Round(float64(s.OK)/wall.Seconds()*10) / 10
	}
	if len(lat) > 0 {
		s.LatencyMS = Latencies{
			P50: ms(percentile(lat, 50)), P90: ms(percentile(lat, 90)),
			P99: ms(percentile(lat, 99)), Max: ms(lat[len(lat)-1]),
		}
	}
	return s
}

// compare writes ref and got side by side, with got/ref for the figures
// where a ratio means something.
func compare(w io.Writer, ref, got Summary) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	ratio := func(a, b float64) string {
		if b == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", a/b)
	}
	num := func(v float64) string { return fmt.Sprintf("%.1f", v) }
	kib := func(v int64) string {
		if v == 0 {
			return "-"
		}
		return fmt.Sprintf("%d", v)
	}
	errs := func(m map[string]int) string {
		if len(m) == 0 {
			return "0"
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, 0, len(keys))
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
		}
		return strings.Join(parts, ",")
	}
	rows := [][]string{
		{"", ref.name(), got.name(), got.name() + "/" + ref.name()},
		{"devices", fmt.Sprint(ref.Devices), fmt.Sprint(got.Devices), ""},
		{"concurrency", fmt.Sprint(ref.Concurrency), fmt.Sprint(got.Concurrency), ""},
		{"ok", fmt.Sprint(ref.OK), fmt.Sprint(got.OK), ""},
		{"errors", errs(ref.Errors), errs(got.Errors), ""},
		{"wall s", num(ref.WallSeconds), num(got.WallSeconds), ratio(got.WallSeconds, ref.WallSeconds)},
		{"logins/s", num(ref.LoginsPerSecond), num(got.LoginsPerSecond), ratio(got.LoginsPerSecond, ref.LoginsPerSecond)},
		{"p50 ms", num(ref.LatencyMS.P50), num(got.LatencyMS.P50), ratio(got.LatencyMS.P50, ref.LatencyMS.P50)},
		{"p90 ms", num(ref.LatencyMS.P90), num(got.LatencyMS.P90), ratio(got.LatencyMS.P90, ref.LatencyMS.P90)},
		{"p99 ms", num(ref.LatencyMS.P99), num(got.LatencyMS.P99), ratio(got.LatencyMS.P99, ref.LatencyMS.P99)},
		{"max ms", num(ref.LatencyMS.Max), num(got.LatencyMS.Max), ratio(got.LatencyMS.Max, ref.LatencyMS.Max)},
		{"gateway RSS before KiB", kib(ref.GatewayRSSBeforeKiB), kib(got.GatewayRSSBeforeKiB), ""},
		{"gateway RSS after KiB", kib(ref.GatewayRSSKiB), kib(got.GatewayRSSKiB), ""},
		{"gateway peak RSS KiB", kib(ref.GatewayPeakRSSKiB), kib(got.GatewayPeakRSSKiB), ""},
	}
	// A baseline's server shares its process with the clients; the client
	// side's cost is what the bootstorm process spent, so the bare server's
	// share is estimated as the difference. A reference that is itself a
	// measured gateway (a single gateway beside a fleet) has its own figure.
	if got.GatewayCPUSeconds > 0 && got.OK > 0 && ref.OK > 0 {
		refServer := (ref.BenchCPUSeconds/float64(ref.OK) - got.BenchCPUSeconds/float64(got.OK)) * 1e3
		refText, refClient := fmt.Sprintf("~%.2f", refServer), "-"
		if ref.GatewayCPUSeconds > 0 {
			refServer = ref.GatewayCPUSeconds / float64(ref.OK) * 1e3
			refText = fmt.Sprintf("%.2f", refServer)
			refClient = fmt.Sprintf("%.2f", ref.BenchCPUSeconds/float64(ref.OK)*1e3)
		}
		gwServer := got.GatewayCPUSeconds / float64(got.OK) * 1e3
		rows = append(rows,
			[]string{"client CPU ms/login", refClient, fmt.Sprintf("%.2f", got.BenchCPUSeconds/float64(got.OK)*1e3), ""},
			[]string{"server CPU ms/login", refText, fmt.Sprintf("%.2f", gwServer), ratio(gwServer, refServer)})
	}
	growth := func(s Summary) string {
		if s.GatewayRSSKiB == 0 || s.GatewayRSSBeforeKiB == 0 || s.OK == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f", float64(s.GatewayRSSKiB-s.GatewayRSSBeforeKiB)/float64(s.OK))
	}
	if g := growth(got); g != "-" {
		rows = append(rows, []string{"RSS growth KiB/device", growth(ref), g, ""})
	}
	for _, r := range rows {
		if _, err := fmt.Fprintln(tw, strings.Join(r, "\t")+"\t"); err != nil {
			return err
		}
	}
	return tw.Flush()
}
