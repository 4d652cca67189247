package daemon_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/planetxlabs/dasset-gateway/internal/poll"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// scrape reads /metrics once.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// scrapeSeries counts the series of every family.
func scrapeSeries(t *testing.T, addr string) (map[string]int, map[string]*dto.MetricFamily) {
	t.Helper()
	fams := scrape(t, addr)
	out := map[string]int{}
	for name, f := range fams {
		out[name] = len(f.GetMetric())
	}
	return out, fams
}

// sample is the value of the series of family name whose labels include
// label=value (any series when label is empty).
func sample(t *testing.T, fams map[string]*dto.MetricFamily, name, label, value string) float64 {
	t.Helper()
	for _, m := range fams[name].GetMetric() {
		match := label == ""
		for _, l := range m.GetLabel() {
			match = match || (l.GetName() == label && l.GetValue() == value)
		}
		if !match {
			continue
		}
		if c := m.GetCounter(); c != nil {
			return c.GetValue()
		}
		return m.GetGauge().GetValue()
	}
	t.Fatalf("no series %s{%s=%q} in the scrape", name, label, value)
	return 0
}

func loginMany(t *testing.T, g *testGateway, from, to int) {
	t.Helper()
	admitMany(t, g.d, g.admin, "DS-CARD", from, to, 32)
	// One refused login per phase, so the same outcome and code series exist.
	dev := deviceClient(t, g)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _ = dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: fleetSerial("DS-CARD", from), HardwareId: "HW-WRONG", PublicKey: make32(3)})
}

// waitConnLogWrite waits until the store has written more connection-log
// batches than after and returns how many it has.
func waitConnLogWrite(t *testing.T, addr string, after uint64) uint64 {
	t.Helper()
	var n uint64
	poll.Must(t, 20*time.Second, "a connection-log batch written", func() error {
		n = 0
		for _, m := range scrape(t, addr)["dasset_gateway_store_transaction_duration_seconds"].GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "op" && l.GetValue() == "AppendConnLog" {
					n = m.GetHistogram().GetSampleCount()
				}
			}
		}
		if n <= after {
			return fmt.Errorf("%d AppendConnLog transactions, want more than %d", n, after)
		}
		return nil
	})
	return n
}

// TestMetricCardinalityIndependentOfFleetSize: no label carries a
// per-device value, so every family has as many series with 1,000 admitted
// devices as with 10.
func TestMetricCardinalityIndependentOfFleetSize(t *testing.T) {
	if testing.Short() {
		t.Skip("admits 1,000 devices")
	}
	dir := t.TempDir()
	cfg := testConfig(t, filepath.Join(dir))
	g := startGateway(t, cfg)
	// The connection log is written in batches: each phase is scraped once
	// its logins' batch is written (the store's AppendConnLog count rose),
	// so both scrapes have seen the same kinds of operations.
	addr := g.d.HTTPAddr().String()
	loginMany(t, g, 0, 10)
	flushed := waitConnLogWrite(t, addr, 0)
	at10, fams10 := scrapeSeries(t, addr)
	loginMany(t, g, 10, 1000)
	waitConnLogWrite(t, addr, flushed)
	at1000, fams1000 := scrapeSeries(t, addr)
	// The live state is read at every scrape: each one saw its fleet.
	if n10, n1000 := sample(t, fams10, "dasset_gateway_admitted_devices", "", ""), sample(t, fams1000, "dasset_gateway_admitted_devices", "", ""); n10 != 10 || n1000 != 1000 {
		t.Fatalf("admitted_devices %v after 10 logins and %v after 1000", n10, n1000)
	}

	if n := at1000["dasset_gateway_admitted_devices"]; n != 1 {
		t.Fatalf("admitted_devices has %d series", n)
	}
	var diffs []string
	for name, n := range at1000 {
		if strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_") {
			continue
		}
		if at10[name] != n {
			diffs = append(diffs, fmt.Sprintf("%s: %d series at 10 devices, %d at 1000", name, at10[name], n))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		t.Fatalf("series counts depend on the fleet size:\n%s", strings.Join(diffs, "\n"))
	}
	if len(at1000) < 15 {
		t.Fatalf("only %d metric families exported", len(at1000))
	}
}
