package metrics

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// gather scrapes reg once and returns each series' value by family and
// label value ("" when unlabelled).
func gather(t *testing.T, reg *prometheus.Registry) map[string]map[string]float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]float64{}
	for _, f := range fams {
		vals := map[string]float64{}
		for _, m := range f.GetMetric() {
			lv := ""
			if len(m.GetLabel()) > 0 {
				lv = m.GetLabel()[0].GetValue()
			}
			vals[lv] = value(m)
		}
		out[f.GetName()] = vals
	}
	return out
}

func value(m *dto.Metric) float64 {
	if m.GetCounter() != nil {
		return m.GetCounter().GetValue()
	}
	return m.GetGauge().GetValue()
}

// TestStateIsReadAtEveryScrape: a drop the hub counted shows in the very
// next scrape, with no cache in between.
func TestStateIsReadAtEveryScrape(t *testing.T) {
	var drops, reads atomic.Uint64
	reg := prometheus.NewRegistry()
	RegisterState(reg, func(context.Context) Snapshot {
		reads.Add(1)
		return Snapshot{
			RouterDropped: map[string]uint64{"no_session": drops.Load()},
			WireGuard:     &WireGuardStats{Peers: 3, HandshakeAges: map[string]int{"le_2m": 2, "older": 1}},
		}
	}, []string{"no_session", "client_to_client"})
	const drop = Namespace + "_router_dropped_packets_total"
	if got := gather(t, reg)[drop]; got["no_session"] != 0 || got["client_to_client"] != 0 || len(got) != 2 {
		t.Fatalf("first scrape: drops %v, want both reasons at 0", got)
	}
	drops.Add(1)
	if got := gather(t, reg)[drop]["no_session"]; got != 1 {
		t.Fatalf("scrape right after a drop: no_session = %v, want 1", got)
	}
	if n := reads.Load(); n != 2 {
		t.Fatalf("state read %d times for 2 scrapes", n)
	}
	got := gather(t, reg)
	if got[Namespace+"_wireguard_peers"][""] != 3 || got[Namespace+"_wireguard_peers_by_handshake_age"]["le_2m"] != 2 {
		t.Fatalf("WireGuard series: %v", got)
	}
}

// TestStateWithoutWireGuard: when the device's status cannot be read, the
// WireGuard series are left out and the rest is still exported.
func TestStateWithoutWireGuard(t *testing.T) {
	reg := prometheus.NewRegistry()
	RegisterState(reg, func(context.Context) Snapshot {
		return Snapshot{AdmittedDevices: 7, RouterDropped: map[string]uint64{"no_session": 4}}
	}, []string{"no_session"})
	got := gather(t, reg)
	if _, ok := got[Namespace+"_wireguard_peers"]; ok {
		t.Fatalf("wireguard_peers exported without a WireGuard status: %v", got)
	}
	if got[Namespace+"_admitted_devices"][""] != 7 || got[Namespace+"_router_dropped_packets_total"]["no_session"] != 4 {
		t.Fatalf("live series: %v", got)
	}
}
