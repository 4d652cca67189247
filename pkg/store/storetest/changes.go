package storetest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/store"
)

// changeWait bounds how long a test waits for one change (PostgreSQL
// delivers them asynchronously, after the commit).
const changeWait = 15 * time.Second

// changes subscribes to the store's changes for the rest of the subtest.
func (t *h) changes() <-chan store.Change {
	t.Helper()
	ch, err := t.s.Changes(t.ctx)
	t.must(err, "Changes")
	return ch
}

// next is the next change, failing the test if none comes within
// changeWait or the channel is closed.
func (t *h) next(ch <-chan store.Change) store.Change {
	t.Helper()
	timer := time.NewTimer(changeWait)
	defer timer.Stop()
	select {
	case c, ok := <-ch:
		if !ok {
			t.Fatal("Changes channel closed")
		}
		return c
	case <-timer.C:
		t.Fatalf("no change within %v", changeWait)
	}
	return store.Change{}
}

// expect reads len(want) changes and compares them with want, in order.
func (t *h) expect(ch <-chan store.Change, what string, want ...store.Change) {
	t.Helper()
	for i, w := range want {
		if got := t.next(ch); got != w {
			t.Fatalf("%s: change %d = %+v, want %+v", what, i, got, w)
		}
	}
}

// expectSet reads len(want) changes and compares them with want in any
// order (the sessions one statement closes).
func (t *h) expectSet(ch <-chan store.Change, what string, want ...store.Change) {
	t.Helper()
	left := slices.Clone(want)
	for range want {
		got := t.next(ch)
		i := slices.Index(left, got)
		if i < 0 {
			t.Fatalf("%s: change %+v, want one of %+v", what, got, left)
		}
		left = slices.Delete(left, i, i+1)
	}
}

// marker moves the marker device's home to a new gateway and expects that
// change next: the writes before it emitted nothing.
type marker struct {
	dev int64
	n   int
}

func (t *h) newMarker() *marker {
	t.Helper()
	d := t.enroll(1)[0]
	return &marker{dev: d.ID}
}

func (t *h) expectNothingBefore(ch <-chan store.Change, m *marker, what string) {
	t.Helper()
	m.n++
	gw := fmt.Sprintf("marker-%d", m.n)
	t.must(t.s.SetHome(t.ctx, m.dev, gw), "SetHome of the marker")
	if got := t.next(ch); got != (store.Change{Kind: store.ChangeDevice, DeviceID: m.dev, Gateway: gw}) {
		t.Fatalf("%s emitted %+v (the marker's change was expected next)", what, got)
	}
}

func devChange(id int64, gw string) store.Change {
	return store.Change{Kind: store.ChangeDevice, DeviceID: id, Gateway: gw}
}

func sessChange(s store.Session) store.Change {
	return store.Change{Kind: store.ChangeSession, SessionID: s.ID, DeviceID: s.DeviceID}
}

// testChangesOfWrites: each write the contract names emits its change
// once committed, with ids only; writes that change nothing of the data
// plane emit nothing.
func testChangesOfWrites(t *h) {
	ch := t.changes()
	m := t.newMarker()
	devs := t.enroll(3)
	t.expectNothingBefore(ch, m, "EnrollDevices")

	a := admission(devs[0].ID, 1, 100)
	a.Gateway = gwA
	_, err := t.s.Admit(t.ctx, a)
	t.must(err, "Admit")
	t.expect(ch, "first admission", devChange(devs[0].ID, gwA))
	again := a
	again.Day, again.TokenHash = "2030-01-03", random[[32]byte]()
	_, err = t.s.Admit(t.ctx, again)
	t.must(err, "Admit again")
	t.expectNothingBefore(ch, m, "a repeated admission (same key, address and home)")
	again.Gateway, again.TokenHash = gwB, random[[32]byte]()
	_, err = t.s.Admit(t.ctx, again)
	t.must(err, "Admit at another gateway")
	t.expect(ch, "admission at another gateway", devChange(devs[0].ID, gwB))
	rekey := again
	rekey.Key, rekey.ReplaceKey, rekey.TokenHash = random[store.Key](), true, random[[32]byte]()
	_, err = t.s.Admit(t.ctx, rekey)
	t.must(err, "Admit with a new key")
	t.expect(ch, "re-key", devChange(devs[0].ID, gwB))

	t.must(t.s.SetHome(t.ctx, devs[0].ID, gwB), "SetHome to its home")
	t.expectNothingBefore(ch, m, "SetHome to the same gateway")
	t.must(t.s.SetHome(t.ctx, devs[0].ID, gwC), "SetHome")
	t.expect(ch, "SetHome", devChange(devs[0].ID, gwC))

	acct := t.account()
	t.bind(acct.ID, devs[0].ID)
	t.expectNothingBefore(ch, m, "CreateAccount and a binding")
	s1, err := t.openSession(acct.ID, devs[0].ID, 1, 100)
	t.must(err, "OpenSession")
	t.expect(ch, "OpenSession", sessChange(s1))
	_, err = t.s.CloseSession(t.ctx, s1.ID, t0.Add(time.Minute))
	t.must(err, "CloseSession")
	t.expect(ch, "CloseSession", sessChange(s1))
	_, err = t.s.CloseSession(t.ctx, s1.ID, t0.Add(2*time.Minute))
	t.must(err, "CloseSession again")
	t.expectNothingBefore(ch, m, "closing a closed session")

	s2, err := t.openSession(acct.ID, devs[0].ID, 1, 100)
	t.must(err, "OpenSession")
	s3, err := t.openSession(acct.ID, devs[0].ID, 1, 100)
	t.must(err, "OpenSession")
	t.expect(ch, "two OpenSessions", sessChange(s2), sessChange(s3))
	_, err = t.s.Unbind(t.ctx, acct.ID, devs[0].ID)
	t.must(err, "Unbind")
	t.expectSet(ch, "Unbind closing two sessions", sessChange(s2), sessChange(s3))

	t.must(t.s.ResetDeviceKey(t.ctx, devs[0].ID), "ResetDeviceKey")
	t.expect(ch, "ResetDeviceKey", devChange(devs[0].ID, gwC))
	b := admission(devs[1].ID, 1, 100)
	b.Gateway = gwA
	_, err = t.s.Admit(t.ctx, b)
	t.must(err, "Admit")
	t.must(t.s.RevokeDevice(t.ctx, devs[1].ID), "RevokeDevice")
	t.expect(ch, "admission and revocation", devChange(devs[1].ID, gwA), devChange(devs[1].ID, gwA))

	// Side effects: DeleteAccount closes the account's open session;
	// EraseDevice ends the device's sessions and the device; EraseAccount
	// the account's sessions.
	c := admission(devs[2].ID, 1, 100)
	c.Gateway = gwB
	_, err = t.s.Admit(t.ctx, c)
	t.must(err, "Admit")
	t.expect(ch, "admission", devChange(devs[2].ID, gwB))
	gone, other, third := t.account(), t.account(), t.account()
	s4, err := t.openSession(gone.ID, devs[2].ID, 1, 100)
	t.must(err, "OpenSession")
	t.expect(ch, "OpenSession", sessChange(s4))
	_, err = t.s.DeleteAccount(t.ctx, gone.ID)
	t.must(err, "DeleteAccount")
	t.expect(ch, "DeleteAccount", sessChange(s4))
	s5, err := t.openSession(other.ID, devs[2].ID, 1, 100)
	t.must(err, "OpenSession")
	s6, err := t.openSession(third.ID, devs[0].ID, 1, 100)
	t.must(err, "OpenSession")
	t.expect(ch, "OpenSessions", sessChange(s5), sessChange(s6))
	_, err = t.s.EraseDevice(t.ctx, devs[2].ID, nil)
	t.must(err, "EraseDevice")
	t.expect(ch, "EraseDevice", sessChange(s5), devChange(devs[2].ID, gwB))
	_, err = t.s.EraseAccount(t.ctx, third.ID, nil)
	t.must(err, "EraseAccount")
	t.expect(ch, "EraseAccount", sessChange(s6))
	t.expectNothingBefore(ch, m, "the writes above (nothing more)")
}

// testChangesFailedWrites: writes that fail (their transaction rolled
// back, or an admission rolled back to its savepoint in a shared batch)
// emit nothing; the admissions committed beside failed ones in one batch
// emit theirs.
func testChangesFailedWrites(t *h) {
	ch := t.changes()
	m := t.newMarker()
	devs := t.enroll(3)
	acct := t.account()
	pinned := t.admitAt(devs[0].ID, gwA)
	revoked := t.admitAt(devs[1].ID, gwA)
	t.must(t.s.RevokeDevice(t.ctx, revoked.ID), "RevokeDevice")
	s, err := t.openSession(acct.ID, devs[0].ID, 5, 5)
	t.must(err, "OpenSession")
	t.expect(ch, "set-up", devChange(pinned.ID, gwA), devChange(revoked.ID, gwA), devChange(revoked.ID, gwA), sessChange(s))

	other := admission(pinned.ID, 1, 100)
	other.Gateway = gwB
	_, err = t.s.Admit(t.ctx, other)
	t.wantErr(err, store.ErrKeyPinned, "Admit with another key")
	_, err = t.s.Admit(t.ctx, admission(revoked.ID, 1, 100))
	t.wantErr(err, store.ErrRevoked, "Admit of a revoked device")
	t.wantErr(t.s.SetHome(t.ctx, revoked.ID, gwB), store.ErrRevoked, "SetHome of a revoked device")
	t.wantErr(t.s.SetHome(t.ctx, 424242, gwB), store.ErrNotFound, "SetHome of an unknown device")
	_, err = t.openSession(acct.ID, devs[0].ID, 5, 5)
	t.wantErr(err, store.ErrExhausted, "OpenSession in a full pool")
	_, err = t.s.CloseSession(t.ctx, "no-such-session", t0)
	t.wantErr(err, store.ErrNotFound, "CloseSession unknown")
	t.wantErr(t.s.RevokeDevice(t.ctx, 424242), store.ErrNotFound, "RevokeDevice unknown")
	_, err = t.s.Unbind(t.ctx, acct.ID, devs[2].ID)
	t.wantErr(err, store.ErrNotFound, "Unbind of an unbound device")
	_, err = t.s.EraseDevice(t.ctx, 424242, nil)
	t.wantErr(err, store.ErrNotFound, "EraseDevice unknown")
	t.expectNothingBefore(ch, m, "failed writes")

	// Admissions at once, half of them refused (another key pinned): only
	// the committed ones emit.
	fresh := t.enroll(8)
	for _, d := range fresh[:4] {
		t.admitAt(d.ID, gwA)
	}
	t.expectSet(ch, "set-up admissions", devChange(fresh[0].ID, gwA), devChange(fresh[1].ID, gwA), devChange(fresh[2].ID, gwA), devChange(fresh[3].ID, gwA))
	var wg sync.WaitGroup
	errs := make([]error, len(fresh))
	for i, d := range fresh {
		wg.Go(func() {
			a := admission(d.ID, 1, 100)
			a.Gateway = gwC
			_, errs[i] = t.s.Admit(t.ctx, a)
		})
	}
	wg.Wait()
	var want []store.Change
	for i, err := range errs {
		if i < 4 {
			t.wantErr(err, store.ErrKeyPinned, "concurrent admission with another key")
			continue
		}
		t.must(err, "concurrent admission")
		want = append(want, devChange(fresh[i].ID, gwC))
	}
	t.expectSet(ch, "concurrent admissions", want...)
	t.expectNothingBefore(ch, m, "the refused concurrent admissions")
}

// testChangesSlowConsumer: a consumer that reads nothing while many
// writes commit blocks none of them; once every change has been published
// (a second, reading consumer has seen the changes of two marker writes
// after them), it gets a bounded backlog ending in one ChangeResync in
// place of what it missed, and then the next change.
func testChangesSlowConsumer(t *h) {
	slow := t.changes()
	fast := t.changes()
	d := t.admitAt(t.enroll(1)[0].ID, gwA)
	m := t.newMarker()
	marker := func(n int) store.Change { return devChange(m.dev, fmt.Sprintf("marker-%d", n)) }
	seen := make(chan store.Change, 2)
	go func() {
		for c := range fast {
			if c.DeviceID == m.dev {
				seen <- c
			}
		}
	}()
	waitFast := func(want store.Change) {
		t.Helper()
		select {
		case c := <-seen:
			if c != want {
				t.Fatalf("the reading consumer got %+v, want %+v", c, want)
			}
		case <-time.After(changeWait):
			t.Fatalf("the reading consumer did not see %+v within %v", want, changeWait)
		}
	}
	writes := 2*store.ChangeBuffer + 8
	for i := range writes {
		t.must(t.s.SetHome(t.ctx, d.ID, []string{gwB, gwA}[i%2]), "SetHome while nobody reads")
	}
	// marker-1 follows the writes; once the reading consumer has seen
	// marker-2, the publication of marker-1 to every subscriber is over
	// (changes are published one after another).
	for n := 1; n <= 2; n++ {
		t.must(t.s.SetHome(t.ctx, m.dev, marker(n).Gateway), "SetHome of the marker")
		waitFast(marker(n))
	}
	m.n = 2
	// The backlog: what was queued before the overflow, then the resync
	// standing for the rest (marker-1 included; marker-2 may come after it).
	got := 0
	for c := t.next(slow); c.Kind != store.ChangeResync; c = t.next(slow) {
		got++
		if c.Kind != store.ChangeDevice || c.DeviceID != d.ID || got > store.ChangeBuffer+1 {
			t.Fatalf("backlog change %d: %+v (want at most %d changes of device %d, then a resync)", got, c, store.ChangeBuffer+1, d.ID)
		}
	}
	m.n++
	t.must(t.s.SetHome(t.ctx, m.dev, marker(m.n).Gateway), "SetHome of the marker")
	c := t.next(slow)
	if c == marker(2) {
		c = t.next(slow)
	}
	if c != marker(m.n) {
		t.Fatalf("after the resync: %+v, want %+v (nothing it stands for)", c, marker(m.n))
	}
}

// testChangesBigWrite: a write that closes more sessions than
// ChangeBuffer emits one ChangeResync instead of a change per session.
func testChangesBigWrite(t *h) {
	d := t.admitAt(t.enroll(1)[0].ID, gwA)
	acct := t.account()
	for range store.ChangeBuffer + 1 {
		_, err := t.openSession(acct.ID, d.ID, 1, 2*store.ChangeBuffer)
		t.must(err, "OpenSession")
	}
	ch := t.changes()
	m := t.newMarker()
	receipt, err := t.s.DeleteAccount(t.ctx, acct.ID)
	t.must(err, "DeleteAccount")
	if receipt[store.TableSessions] != store.ChangeBuffer+1 {
		t.Fatalf("DeleteAccount closed %d sessions, want %d", receipt[store.TableSessions], store.ChangeBuffer+1)
	}
	t.expect(ch, "DeleteAccount closing more sessions than ChangeBuffer", store.Change{Kind: store.ChangeResync})
	t.expectNothingBefore(ch, m, "after the resync")
}

// testChangesEnd: a subscription's channel is closed when its context
// ends; another subscription goes on.
func testChangesEnd(t *h) {
	ctx, cancel := context.WithCancel(t.ctx)
	ch, err := t.s.Changes(ctx)
	t.must(err, "Changes")
	keep := t.changes()
	d := t.enroll(1)[0]
	t.admitAt(d.ID, gwA)
	t.expect(ch, "first subscription", devChange(d.ID, gwA))
	cancel()
	deadline := time.After(changeWait)
	for open := true; open; {
		select {
		case _, open = <-ch:
		case <-deadline:
			t.Fatalf("the channel of a cancelled subscription is still open after %v", changeWait)
		}
	}
	t.must(t.s.SetHome(t.ctx, d.ID, gwB), "SetHome")
	t.expect(keep, "second subscription", devChange(d.ID, gwA), devChange(d.ID, gwB))
	if _, err := t.s.Changes(ctx); err == nil {
		t.Fatal("Changes with an ended context: no error")
	}
}
