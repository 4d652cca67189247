package postgres_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/planetxlabs/dasset-gateway/internal/poll"
	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
	"github.com/planetxlabs/dasset-gateway/pkg/store/postgres"
	"github.com/planetxlabs/dasset-gateway/pkg/store/postgres/pgtest"
)

const changeWait = 15 * time.Second

func nextChange(t *testing.T, ch <-chan store.Change) store.Change {
	t.Helper()
	select {
	case c, ok := <-ch:
		if !ok {
			t.Fatal("Changes channel closed")
		}
		return c
	case <-time.After(changeWait):
		t.Fatalf("no change within %v", changeWait)
	}
	return store.Change{}
}

// admitted enrolls and admits one device at gateway gw.
func admitted(t *testing.T, s store.Store, gw string) store.Device {
	t.Helper()
	ctx := context.Background()
	idx := privacy.BlindIndex{}
	copy(idx[:], randomBytes(t, 32))
	if _, err := s.EnrollDevices(ctx, []store.Enrollment{{Index: idx, SealedSerial: []byte("sealed"), Verifier: privacy.Verifier{1}}}); err != nil {
		t.Fatal(err)
	}
	d, err := s.DeviceByIndex(ctx, idx)
	if err != nil {
		t.Fatal(err)
	}
	return admit(t, s, d.ID, gw)
}

func admit(t *testing.T, s store.Store, id int64, gw string) store.Device {
	t.Helper()
	var key store.Key
	var tok [32]byte
	copy(key[:], randomBytes(t, 32))
	copy(tok[:], randomBytes(t, 32))
	d, err := s.Admit(context.Background(), store.Admission{DeviceID: id, Key: key, First: 1, Last: 1000, Day: "2030-01-02",
		TokenHash: tok, TokenExpires: time.Now().Add(time.Hour), Gateway: gw})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestChangesAcrossStores: two stores on one database (two gateways, two
// pools): a write through one reaches the other's Changes (and its own)
// after the commit.
func TestChangesAcrossStores(t *testing.T) {
	ctx := context.Background()
	dsn := cluster.NewSchema(t, conformanceDB)
	a, b := open(t, dsn), open(t, dsn)
	defer a.Close()
	defer b.Close()
	chA, err := a.Changes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	chB, err := b.Changes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d := admitted(t, a, "gw-a")
	want := store.Change{Kind: store.ChangeDevice, DeviceID: d.ID, Gateway: "gw-a"}
	for name, ch := range map[string]<-chan store.Change{"writer": chA, "other store": chB} {
		if got := nextChange(t, ch); got != want {
			t.Fatalf("%s: %+v, want %+v", name, got, want)
		}
	}
	if err := b.SetHome(ctx, d.ID, "gw-b"); err != nil {
		t.Fatal(err)
	}
	want = store.Change{Kind: store.ChangeDevice, DeviceID: d.ID, Gateway: "gw-b"}
	if got := nextChange(t, chA); got != want {
		t.Fatalf("the other way: %+v, want %+v", got, want)
	}
	// A store on another schema of the same database sees none of it.
	c := open(t, cluster.NewSchema(t, conformanceDB))
	defer c.Close()
	chC, err := c.Changes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.SetHome(ctx, d.ID, "gw-c"); err != nil {
		t.Fatal(err)
	}
	own := admitted(t, c, "gw-own")
	if got := nextChange(t, chC); got.DeviceID != own.ID || got.Gateway != "gw-own" {
		t.Fatalf("store on another schema got %+v first, want its own admission of device %d", got, own.ID)
	}
}

// TestChangesResyncAfterListenerKilled: when the listening connection is
// killed (pg_terminate_backend), the store reconnects and its consumers get
// one ChangeResync, then changes again.
func TestChangesResyncAfterListenerKilled(t *testing.T) {
	ctx := context.Background()
	dsn := cluster.NewDatabase(t)
	s := open(t, dsn)
	defer s.Close()
	ch, err := s.Changes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d := admitted(t, s, "gw-a")
	if got := nextChange(t, ch); got.DeviceID != d.ID {
		t.Fatalf("before the kill: %+v", got)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var killed int
	if err := conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE application_name = $1 AND datname = current_database()`, postgres.ListenerApplicationName).Scan(&killed); err != nil {
		t.Fatal(err)
	}
	if killed != 1 {
		t.Fatalf("terminated %d listening connections, want 1", killed)
	}
	if got := nextChange(t, ch); got.Kind != store.ChangeResync {
		t.Fatalf("after the listener was killed: %+v, want a resync", got)
	}
	// Listening again: a new listener backend exists and changes flow.
	poll.Must(t, changeWait, "a listening connection again", func() error {
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()`,
			postgres.ListenerApplicationName).Scan(&n); err != nil {
			return err
		}
		if n != 1 {
			return fmt.Errorf("%d listening connections", n)
		}
		return nil
	})
	if err := s.SetHome(ctx, d.ID, "gw-b"); err != nil {
		t.Fatal(err)
	}
	if got, want := nextChange(t, ch), (store.Change{Kind: store.ChangeDevice, DeviceID: d.ID, Gateway: "gw-b"}); got != want {
		t.Fatalf("after reconnecting: %+v, want %+v", got, want)
	}
}

// TestChangesRolledBackNotDelivered: a notification sent in a transaction
// that rolls back is never delivered; one sent in the next, committed
// transaction is.
func TestChangesRolledBackNotDelivered(t *testing.T) {
	ctx := context.Background()
	dsn := cluster.NewSchema(t, conformanceDB)
	s := open(t, dsn)
	defer s.Close()
	ch, err := s.Changes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rolledBack := store.Change{Kind: store.ChangeDevice, DeviceID: 41, Gateway: "gw-rolled-back"}
	committed := store.Change{Kind: store.ChangeDevice, DeviceID: 42, Gateway: "gw-committed"}
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := postgres.Notify(ctx, tx, rolledBack); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error { return postgres.Notify(ctx, tx, committed) })
	if err != nil {
		t.Fatal(err)
	}
	if got := nextChange(t, ch); got != committed {
		t.Fatalf("first change %+v, want the committed %+v (the rolled-back one must never come)", got, committed)
	}
}

// TestChangePayloadsCarryIDsOnly: every notification the store's writes
// send holds only the payload's fields (schema, kind, device id, session
// id, gateway id), and none holds a device's sealed serial, blind index,
// key or token, or an account's sealed name, in any encoding. The scanner
// first proves itself on a planted payload.
func TestChangePayloadsCarryIDsOnly(t *testing.T) {
	ctx := context.Background()
	dsn := cluster.NewSchema(t, conformanceDB)
	s := open(t, dsn)
	defer s.Close()
	raw, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close(ctx)
	if _, err := raw.Exec(ctx, `LISTEN `+postgres.Channel); err != nil {
		t.Fatal(err)
	}

	serialCanary := []byte("SN-CANARY-7f3a9c")
	nameCanary := []byte("ACCOUNT-CANARY-51d2")
	var (
		idx   privacy.BlindIndex
		key   store.Key
		tok   [32]byte
		name  privacy.BlindIndex
		canon [][]byte
	)
	copy(idx[:], "blind-index-canary-0123456789abc")
	copy(key[:], "wireguard-key-canary-0123456789a")
	copy(tok[:], "token-hash-canary-0123456789abcd")
	copy(name[:], "name-index-canary-0123456789abcd")
	canon = [][]byte{serialCanary, nameCanary, idx[:], key[:], tok[:], name[:]}
	var needles []string
	for _, c := range canon {
		needles = append(needles, string(c), hex.EncodeToString(c), base64.StdEncoding.EncodeToString(c), base64.RawURLEncoding.EncodeToString(c), fmt.Sprint(c))
	}
	leaks := func(payload string) []string {
		var out []string
		for _, n := range needles {
			if strings.Contains(payload, n) {
				out = append(out, n)
			}
		}
		return out
	}

	// The planted payload first: the scanner must find it on this channel.
	if _, err := raw.Exec(ctx, `SELECT pg_notify($1, $2)`, postgres.Channel, "planted "+string(serialCanary)); err != nil {
		t.Fatal(err)
	}
	// The writes: every kind that notifies, on a device and an account
	// carrying the canaries.
	if _, err := s.EnrollDevices(ctx, []store.Enrollment{{Index: idx, SealedSerial: append([]byte("sealed:"), serialCanary...), Verifier: privacy.Verifier{7}}}); err != nil {
		t.Fatal(err)
	}
	d, err := s.DeviceByIndex(ctx, idx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Admit(ctx, store.Admission{DeviceID: d.ID, Key: key, First: 1, Last: 10, Day: "2030-01-02", TokenHash: tok,
		TokenExpires: time.Now().Add(time.Hour), Gateway: "gw-a"}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetHome(ctx, d.ID, "gw-b"); err != nil {
		t.Fatal(err)
	}
	acct, err := s.CreateAccount(ctx, store.Account{NameIndex: name, SealedName: nameCanary, PasswordHash: "h"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CreateBindingCode(ctx, [32]byte{11}, d.ID, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RedeemBindingCode(ctx, [32]byte{11}, acct.ID, time.Now()); err != nil {
		t.Fatal(err)
	}
	sess, err := s.OpenSession(ctx, store.Session{ID: "session-1", AccountID: acct.ID, DeviceID: d.ID, ClientKey: store.Key{9}, ExpiresAt: time.Now().Add(time.Hour)}, 1, 10)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CloseSession(ctx, sess.ID, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.OpenSession(ctx, store.Session{ID: "session-2", AccountID: acct.ID, DeviceID: d.ID, ClientKey: store.Key{10}, ExpiresAt: time.Now().Add(time.Hour)}, 1, 10); err != nil {
		t.Fatal(err)
	}
	if err := s.ResetDeviceKey(ctx, d.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.EraseAccount(ctx, acct.ID, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeDevice(ctx, d.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.EraseDevice(ctx, d.ID, nil); err != nil {
		t.Fatal(err)
	}
	const writes = 9 // notifications of the writes above: 5 of the device, 4 of sessions
	var payloads []string
	wctx, cancel := context.WithTimeout(ctx, changeWait)
	defer cancel()
	for len(payloads) < writes+1 {
		n, err := raw.WaitForNotification(wctx)
		if err != nil {
			t.Fatalf("after %d notifications %q: %v", len(payloads), payloads, err)
		}
		payloads = append(payloads, n.Payload)
	}
	if got := leaks(payloads[0]); len(got) == 0 {
		t.Fatalf("the scanner missed the planted canary in %q", payloads[0])
	}
	kinds := map[string]int{}
	for _, p := range payloads[1:] {
		if got := leaks(p); len(got) != 0 {
			t.Fatalf("payload %q leaks %q", p, got)
		}
		var fields map[string]any
		if err := json.Unmarshal([]byte(p), &fields); err != nil {
			t.Fatalf("payload %q: %v", p, err)
		}
		for k := range fields {
			if !slices.Contains([]string{"n", "k", "d", "s", "g"}, k) {
				t.Fatalf("payload %q has field %q beyond the ids", p, k)
			}
		}
		kinds[fields["k"].(string)]++
	}
	if kinds["device"] != 5 || kinds["session"] != 4 {
		t.Fatalf("payload kinds %v (from %q), want 5 device and 4 session changes", kinds, payloads[1:])
	}
}

// TestChangesAcrossServerRestart: while the server is down the listener
// retries with backoff; a Changes first called during the outage returns
// all the same; once the server is back every subscriber gets one
// ChangeResync, then changes again. It runs its own cluster (a few seconds).
func TestChangesAcrossServerRestart(t *testing.T) {
	ctx := context.Background()
	c := pgtest.Start(t)
	dsn, err := c.CreateDatabase(ctx, "restart")
	if err != nil {
		t.Fatal(err)
	}
	listening, late := open(t, dsn), open(t, dsn)
	defer listening.Close()
	defer late.Close()
	ch, err := listening.Changes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	// The first Changes of this store: its first connection attempt fails.
	lateCh, err := late.Changes(ctx)
	if err != nil {
		t.Fatalf("Changes during the outage: %v", err)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for name, ch := range map[string]<-chan store.Change{"listening before": ch, "subscribed during the outage": lateCh} {
		if got := nextChange(t, ch); got.Kind != store.ChangeResync {
			t.Fatalf("%s: %+v after the server came back, want a resync", name, got)
		}
	}
	var d store.Device
	poll.Must(t, changeWait, "a write once the pool reconnects", func() error {
		var err error
		idx := privacy.BlindIndex{}
		copy(idx[:], "restart-device-0123456789abcdefg")
		if _, err = late.EnrollDevices(ctx, []store.Enrollment{{Index: idx, SealedSerial: []byte("s"), Verifier: privacy.Verifier{1}}}); err != nil {
			return err
		}
		d, err = late.DeviceByIndex(ctx, idx)
		return err
	})
	admit(t, late, d.ID, "gw-back")
	want := store.Change{Kind: store.ChangeDevice, DeviceID: d.ID, Gateway: "gw-back"}
	for name, ch := range map[string]<-chan store.Change{"listening before": ch, "subscribed during the outage": lateCh} {
		if got := nextChange(t, ch); got != want {
			t.Fatalf("%s: %+v after the restart, want %+v", name, got, want)
		}
	}
}
