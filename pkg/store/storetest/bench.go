package storetest

import (
	"context"
	"crypto/rand"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/store"
)

// BenchHomePeers fills s (fresh, empty) with devices admitted devices
// spread over three gateways, with one open session per 100 devices, and
// benchmarks, beside the reference AdmittedDevices (every admitted device,
// what each gateway re-added at start before homes), HomePeers of one of
// the gateways and GatewayLoads. Each reports devices/op and ns/device.
//
// What it showed (2 shared cores, min of 5 runs of 20, 10,000 devices, 100
// open sessions): SQLite AdmittedDevices 59 ms, HomePeers of one gateway
// (3,334 devices, 34 sessions) 29 ms, GatewayLoads 19 ms; PostgreSQL 62,
// 27 and 10 ms. HomePeers allocates a third of what AdmittedDevices does
// (5.6 against 20.2 MB on SQLite): its cost follows the gateway's own
// devices (index devices_home, then each device's open sessions by
// sessions_device), not the fleet's.
func BenchHomePeers(b *testing.B, s store.Store, devices int) {
	ctx := context.Background()
	gws := []string{"gw-0", "gw-1", "gw-2"}
	const batch = 1000
	for n := 0; n < devices; n += batch {
		es := make([]store.Enrollment, min(batch, devices-n))
		for i := range es {
			es[i] = enrollment()
		}
		if _, err := s.EnrollDevices(ctx, es); err != nil {
			b.Fatal(err)
		}
	}
	var ids []int64
	for after := int64(0); ; {
		page, err := s.DevicesAfter(ctx, after, batch)
		if err != nil {
			b.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		for _, d := range page {
			ids = append(ids, d.ID)
		}
		after = page[len(page)-1].ID
	}
	// Admissions from 32 callers at once (SQLite group-commits them).
	work := make(chan int)
	errs := make(chan error, 32)
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for i := range work {
				a := admission(ids[i], 1, uint32(2*devices))
				a.Gateway = gws[i%len(gws)]
				if _, err := s.Admit(ctx, a); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for i := range ids {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	acct, err := s.CreateAccount(ctx, store.Account{NameIndex: random[[32]byte](), SealedName: []byte("n"), PasswordHash: "h", CreatedAt: t0})
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < len(ids); i += 100 {
		code := random[[32]byte]()
		if err := s.CreateBindingCode(ctx, code, ids[i], t0.Add(time.Hour)); err != nil {
			b.Fatal(err)
		}
		if _, err := s.RedeemBindingCode(ctx, code, acct.ID, t0); err != nil {
			b.Fatal(err)
		}
		_, err := s.OpenSession(ctx, store.Session{ID: rand.Text(), AccountID: acct.ID, DeviceID: ids[i], ClientKey: random[store.Key](),
			OpenedAt: t0, ExpiresAt: t0.Add(time.Hour)}, 1, uint32(devices))
		if err != nil {
			b.Fatal(err)
		}
	}

	report := func(b *testing.B, n int) {
		b.ReportMetric(float64(n), "devices/op")
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(max(n, 1)), "ns/device")
	}
	b.Run("AdmittedDevices", func(b *testing.B) {
		var n int
		for b.Loop() {
			ds, err := s.AdmittedDevices(ctx)
			if err != nil {
				b.Fatal(err)
			}
			n = len(ds)
		}
		report(b, n)
	})
	b.Run(fmt.Sprintf("HomePeers(1of%d)", len(gws)), func(b *testing.B) {
		var n int
		for b.Loop() {
			hp, err := s.HomePeers(ctx, gws[0])
			if err != nil {
				b.Fatal(err)
			}
			n = len(hp.Devices)
		}
		report(b, n)
	})
	b.Run("GatewayLoads", func(b *testing.B) {
		var n int
		for b.Loop() {
			loads, err := s.GatewayLoads(ctx)
			if err != nil {
				b.Fatal(err)
			}
			n = 0
			for _, l := range loads {
				n += l.Devices
			}
		}
		report(b, n)
	})
}
