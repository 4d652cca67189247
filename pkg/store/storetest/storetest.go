// Package storetest is the conformance suite every store.Store backend must
// pass: call Run from the backend's tests with a function that opens a
// fresh, empty store.
package storetest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
)

// t0 is the suite's reference time (minute-aligned, UTC).
var t0 = time.Date(2030, 1, 2, 3, 4, 0, 0, time.UTC)

// Run runs the conformance suite. open must return a fresh, empty store; Run
// closes it when the subtest ends.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	for _, tc := range []struct {
		name string
		fn   func(*h)
	}{
		{"Enroll/NewAndUnchanged", testEnrollNewAndUnchanged},
		{"Enroll/ConflictIsAllOrNothing", testEnrollConflictAllOrNothing},
		{"Enroll/DuplicateInBatch", testEnrollDuplicateInBatch},
		{"Enroll/InvalidInput", testEnrollInvalid},
		{"Devices/NotFound", testDevicesNotFound},
		{"Devices/Pages", testDevicesPages},
		{"Admit/FirstAndRepeat", testAdmitFirstAndRepeat},
		{"Admit/KeyPinnedAndReplace", testAdmitKeyPinned},
		{"Admit/Revoked", testAdmitRevoked},
		{"Admit/ResetDeviceKey", testResetDeviceKey},
		{"Admit/UnknownDevice", testAdmitUnknown},
		{"Admit/InvalidInput", testAdmitInvalid},
		{"Admit/ExhaustedPool", testAdmitExhausted},
		{"Admit/FillsGaps", testAdmitGaps},
		{"Admit/Concurrent", testAdmitConcurrent},
		{"Admit/ConcurrentWithFailures", testAdmitStorm},
		{"Admit/ConcurrentOverflowExhausted", testAdmitOverflow},
		{"Keys/UniqueAcrossOwners", testKeysUnique},
		{"Keys/ReserveIdempotent", testReserveKey},
		{"DeviceTokens/Expiry", testDeviceTokens},
		{"AuthFailures", testAuthFailures},
		{"Accounts", testAccounts},
		{"AccessTokens", testAccessTokens},
		{"Bindings/Redeem", testBindingRedeem},
		{"Bindings/ExpiredCodeIsDeleted", testBindingExpired},
		{"Bindings/Unbind", testUnbind},
		{"Bindings/OwnersNotified", testBindingNotices},
		{"Sessions/OpenClose", testSessions},
		{"Sessions/Exhausted", testSessionsExhausted},
		{"Sessions/NeedBinding", testSessionsNeedBinding},
		{"Sessions/RevokeCloses", testRevokeClosesSessions},
		{"Sessions/Invalid", testSessionsInvalid},
		{"Sessions/AccountLimit", testSessionsLimit},
		{"Sessions/AccountLimitConcurrent", testSessionsLimitConcurrent},
		{"DeleteAccount/Receipt", testDeleteAccount},
		{"Erase/DeviceReceipt", testEraseDevice},
		{"Erase/AccountReceipt", testEraseAccount},
		{"Meta", testMeta},
		{"Gateways", testGateways},
		{"Homes/AdmitSetsHome", testAdmitSetsHome},
		{"Homes/SetHome", testSetHome},
		{"Homes/HomePeers", testHomePeers},
		{"Homes/GatewayLoads", testGatewayLoads},
		{"Changes/Writes", testChangesOfWrites},
		{"Changes/FailedWrites", testChangesFailedWrites},
		{"Changes/SlowConsumer", testChangesSlowConsumer},
		{"Changes/BigWrite", testChangesBigWrite},
		{"Changes/End", testChangesEnd},
		{"Meta/ClaimConcurrent", testClaimMeta},
		{"Checkpoint", testCheckpoint},
		{"Erasures", testErasures},
		{"Meta/UpgradeVerifiers", testUpgradeVerifiers},
		{"ConnLog", testConnLog},
		{"Prune/Bounds", testPruneBounds},
		{"Prune/OpenSessionsStay", testPruneOpenSessions},
		{"Prune/UnknownTable", testPruneUnknown},
		{"DayKeys", testDayKeys},
		{"DayKeys/Concurrent", testDayKeysConcurrent},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			s := open(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tc.fn(&h{T: t, s: s, ctx: ctx})
		})
	}
}

// h is one subtest's harness.
type h struct {
	*testing.T
	s   store.Store
	ctx context.Context
}

func random[T ~[32]byte]() T {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return T(b)
}

func pseudonym() privacy.Pseudonym {
	var p privacy.Pseudonym
	_, _ = rand.Read(p[:])
	return p
}

func enrollment() store.Enrollment {
	sealed := make([]byte, 40)
	_, _ = rand.Read(sealed)
	return store.Enrollment{Index: random[privacy.BlindIndex](), SealedSerial: sealed, Verifier: random[privacy.Verifier]()}
}

func (t *h) must(err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func (t *h) wantErr(err, target error, what string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: error %v, want %v", what, err, target)
	}
}

// enroll enrolls n new devices and returns them.
func (t *h) enroll(n int) []store.Device {
	t.Helper()
	batch := make([]store.Enrollment, n)
	for i := range batch {
		batch[i] = enrollment()
	}
	res, err := t.s.EnrollDevices(t.ctx, batch)
	t.must(err, "EnrollDevices")
	if res.Enrolled != n || res.Unchanged != 0 {
		t.Fatalf("EnrollDevices = %+v, want %d enrolled", res, n)
	}
	out := make([]store.Device, n)
	for i, e := range batch {
		d, err := t.s.DeviceByIndex(t.ctx, e.Index)
		t.must(err, "DeviceByIndex")
		out[i] = d
	}
	return out
}

// Gateway instance ids of the suite.
const (
	gwA = "gw-a"
	gwB = "gw-b"
	gwC = "gw-c"
)

func admission(id int64, first, last uint32) store.Admission {
	return store.Admission{
		DeviceID: id, Key: random[store.Key](), First: first, Last: last, Day: "2030-01-02",
		TokenHash: random[[32]byte](), TokenExpires: t0.Add(time.Hour), Gateway: gwA,
	}
}

func (t *h) account() store.Account {
	t.Helper()
	a, err := t.s.CreateAccount(t.ctx, store.Account{
		NameIndex: random[privacy.BlindIndex](), SealedName: []byte("sealed-name"), PasswordHash: "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA", CreatedAt: t0,
	})
	t.must(err, "CreateAccount")
	return a
}

func (t *h) bind(accountID, deviceID int64) {
	t.Helper()
	code := random[[32]byte]()
	t.must(t.s.CreateBindingCode(t.ctx, code, deviceID, t0.Add(10*time.Minute)), "CreateBindingCode")
	_, err := t.s.RedeemBindingCode(t.ctx, code, accountID, t0)
	t.must(err, "RedeemBindingCode")
}

// openSession opens a session to the device, binding the device to the
// account first when it is not.
func (t *h) openSession(accountID, deviceID int64, first, last uint32) (store.Session, error) {
	t.Helper()
	bound, err := t.s.IsBound(t.ctx, accountID, deviceID)
	t.must(err, "IsBound")
	if !bound {
		t.bind(accountID, deviceID)
	}
	return t.s.OpenSession(t.ctx, store.Session{
		ID: rand.Text(), AccountID: accountID, DeviceID: deviceID, ClientKey: random[store.Key](),
		OpenedAt: t0, ExpiresAt: t0.Add(time.Hour),
	}, first, last)
}

func sameDevice(a, b store.Device) bool {
	return a.ID == b.ID && a.Index == b.Index && string(a.SealedSerial) == string(b.SealedSerial) &&
		a.Verifier == b.Verifier && a.KeyPinned == b.KeyPinned && (!a.KeyPinned || a.Key == b.Key) &&
		a.Offset == b.Offset && a.LastLoginDay == b.LastLoginDay && a.Revoked == b.Revoked && a.EnrolledAt.Equal(b.EnrolledAt) &&
		a.Home == b.Home
}

func (t *h) device(id int64) store.Device {
	t.Helper()
	d, err := t.s.DeviceByID(t.ctx, id)
	t.must(err, "DeviceByID")
	return d
}

// --- enrolment ---

func testEnrollNewAndUnchanged(t *h) {
	batch := []store.Enrollment{enrollment(), enrollment(), enrollment()}
	res, err := t.s.EnrollDevices(t.ctx, batch)
	t.must(err, "EnrollDevices")
	if res != (store.EnrollResult{Enrolled: 3}) {
		t.Fatalf("first batch: %+v, want 3 enrolled", res)
	}
	res, err = t.s.EnrollDevices(t.ctx, append(batch, enrollment()))
	t.must(err, "EnrollDevices again")
	if res != (store.EnrollResult{Enrolled: 1, Unchanged: 3}) {
		t.Fatalf("second batch: %+v, want 1 enrolled 3 unchanged", res)
	}
	res, err = t.s.EnrollDevices(t.ctx, nil)
	t.must(err, "EnrollDevices(nil)")
	if res != (store.EnrollResult{}) {
		t.Fatalf("empty batch: %+v", res)
	}
	ids := map[int64]bool{}
	for _, e := range batch {
		d, err := t.s.DeviceByIndex(t.ctx, e.Index)
		t.must(err, "DeviceByIndex")
		if d.Index != e.Index || d.Verifier != e.Verifier || string(d.SealedSerial) != string(e.SealedSerial) {
			t.Fatalf("device %d does not hold what was enrolled", d.ID)
		}
		if d.KeyPinned || d.Offset != 0 || d.LastLoginDay != "" || d.Revoked || d.EnrolledAt.IsZero() {
			t.Fatalf("new device %+v: want unpinned, no offset, never logged in, not revoked, enrolment time set", d)
		}
		if ids[d.ID] || d.ID == 0 {
			t.Fatalf("device id %d repeated or zero", d.ID)
		}
		ids[d.ID] = true
		if byID := t.device(d.ID); !sameDevice(byID, d) {
			t.Fatalf("DeviceByID = %+v, DeviceByIndex = %+v", byID, d)
		}
	}
	all, err := t.s.ListDevices(t.ctx)
	t.must(err, "ListDevices")
	if len(all) != 4 {
		t.Fatalf("ListDevices: %d devices, want 4", len(all))
	}
	for _, d := range all[:3] {
		if !ids[d.ID] {
			t.Fatalf("ListDevices is not in enrolment (id) order: %d", d.ID)
		}
	}
}

func (t *h) wantNoDevices(es []store.Enrollment) {
	t.Helper()
	for i, e := range es {
		if _, err := t.s.DeviceByIndex(t.ctx, e.Index); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("device %d of a failed batch: DeviceByIndex error %v, want ErrNotFound", i, err)
		}
	}
}

func testEnrollConflictAllOrNothing(t *h) {
	old := enrollment()
	_, err := t.s.EnrollDevices(t.ctx, []store.Enrollment{old})
	t.must(err, "EnrollDevices")
	again := old
	again.Verifier = random[privacy.Verifier]()
	batch := []store.Enrollment{enrollment(), enrollment(), enrollment(), again}
	res, err := t.s.EnrollDevices(t.ctx, batch)
	t.wantErr(err, store.ErrConflict, "enrolling an index with another verifier")
	if !strings.Contains(err.Error(), "device 3") {
		t.Fatalf("error %q does not name the batch position (device 3)", err)
	}
	if res != (store.EnrollResult{}) {
		t.Fatalf("failed batch reported %+v", res)
	}
	t.wantNoDevices(batch[:3])
	d, err := t.s.DeviceByIndex(t.ctx, old.Index)
	t.must(err, "DeviceByIndex")
	if d.Verifier != old.Verifier {
		t.Fatal("conflicting enrolment changed the stored verifier")
	}
	all, err := t.s.ListDevices(t.ctx)
	t.must(err, "ListDevices")
	if len(all) != 1 {
		t.Fatalf("%d devices after a failed batch, want 1", len(all))
	}
}

func testEnrollDuplicateInBatch(t *h) {
	x := enrollment()
	x2 := x
	x2.Verifier = random[privacy.Verifier]()
	batch := []store.Enrollment{x, enrollment(), x2}
	_, err := t.s.EnrollDevices(t.ctx, batch)
	t.wantErr(err, store.ErrConflict, "duplicate index with another verifier in one batch")
	if !strings.Contains(err.Error(), "device 2") {
		t.Fatalf("error %q does not name the batch position (device 2)", err)
	}
	t.wantNoDevices(batch)

	res, err := t.s.EnrollDevices(t.ctx, []store.Enrollment{x, x})
	t.must(err, "same device twice in one batch with the same verifier")
	if res != (store.EnrollResult{Enrolled: 1, Unchanged: 1}) {
		t.Fatalf("same device twice: %+v, want 1 enrolled 1 unchanged", res)
	}
}

func testEnrollInvalid(t *h) {
	good := enrollment()
	for name, bad := range map[string]func(*store.Enrollment){
		"zero index":    func(e *store.Enrollment) { e.Index = privacy.BlindIndex{} },
		"zero verifier": func(e *store.Enrollment) { e.Verifier = privacy.Verifier{} },
		"empty sealed":  func(e *store.Enrollment) { e.SealedSerial = nil },
	} {
		e := enrollment()
		bad(&e)
		_, err := t.s.EnrollDevices(t.ctx, []store.Enrollment{good, e})
		if !errors.Is(err, privacy.ErrInvalid) || !strings.Contains(err.Error(), "device 1") {
			t.Fatalf("%s: error %v, want ErrInvalid naming device 1", name, err)
		}
		t.wantNoDevices([]store.Enrollment{good})
	}
}

// testDevicesPages walks the devices in pages: every device once, by id,
// whatever the page size; an empty page after the last. CountDevices counts
// them and the revoked.
func testDevicesPages(t *h) {
	ds := t.enroll(10)
	for _, size := range []int{1, 3, 10, 11} {
		var got []store.Device
		after := int64(0)
		for range 20 {
			page, err := t.s.DevicesAfter(t.ctx, after, size)
			t.must(err, "DevicesAfter")
			if len(page) > size {
				t.Fatalf("page of %d devices, limit %d", len(page), size)
			}
			if len(page) == 0 {
				break
			}
			got = append(got, page...)
			after = page[len(page)-1].ID
		}
		if len(got) != len(ds) {
			t.Fatalf("page size %d: %d devices, want %d", size, len(got), len(ds))
		}
		for i := range got {
			if !sameDevice(got[i], ds[i]) {
				t.Fatalf("page size %d: device %d = %+v, want %+v", size, i, got[i], ds[i])
			}
		}
	}
	_, err := t.s.DevicesAfter(t.ctx, 0, 0)
	t.wantErr(err, privacy.ErrInvalid, "DevicesAfter with limit 0")
	t.must(t.s.RevokeDevice(t.ctx, ds[2].ID), "RevokeDevice")
	t.must(t.s.RevokeDevice(t.ctx, ds[7].ID), "RevokeDevice")
	total, revoked, err := t.s.CountDevices(t.ctx)
	t.must(err, "CountDevices")
	if total != 10 || revoked != 2 {
		t.Fatalf("CountDevices = %d, %d revoked; want 10, 2", total, revoked)
	}
}

func testDevicesNotFound(t *h) {
	_, err := t.s.DeviceByIndex(t.ctx, random[privacy.BlindIndex]())
	t.wantErr(err, store.ErrNotFound, "DeviceByIndex unknown")
	_, err = t.s.DeviceByID(t.ctx, 424242)
	t.wantErr(err, store.ErrNotFound, "DeviceByID unknown")
	_, err = t.s.DeviceByKey(t.ctx, random[store.Key]())
	t.wantErr(err, store.ErrNotFound, "DeviceByKey unknown")
	_, err = t.s.DeviceByToken(t.ctx, random[[32]byte](), t0)
	t.wantErr(err, store.ErrNotFound, "DeviceByToken unknown")
	ds, err := t.s.ListDevices(t.ctx)
	t.must(err, "ListDevices")
	ad, err := t.s.AdmittedDevices(t.ctx)
	t.must(err, "AdmittedDevices")
	if len(ds) != 0 || len(ad) != 0 {
		t.Fatalf("empty store lists %d devices, %d admitted", len(ds), len(ad))
	}
}

// --- admission ---

func testAdmitFirstAndRepeat(t *h) {
	devs := t.enroll(2)
	a := admission(devs[0].ID, 10, 20)
	d, err := t.s.Admit(t.ctx, a)
	t.must(err, "Admit")
	if !d.KeyPinned || d.Key != a.Key || d.Offset != 10 || d.LastLoginDay != a.Day || d.Revoked || d.Home != a.Gateway {
		t.Fatalf("admitted device %+v: want key pinned, offset 10, day %s, home %s", d, a.Day, a.Gateway)
	}
	if got := t.device(d.ID); !sameDevice(got, d) {
		t.Fatalf("Admit returned %+v, stored %+v", d, got)
	}
	byKey, err := t.s.DeviceByKey(t.ctx, a.Key)
	t.must(err, "DeviceByKey")
	byTok, err := t.s.DeviceByToken(t.ctx, a.TokenHash, t0)
	t.must(err, "DeviceByToken")
	if byKey.ID != d.ID || byTok.ID != d.ID {
		t.Fatal("DeviceByKey/DeviceByToken found another device")
	}
	ad, err := t.s.AdmittedDevices(t.ctx)
	t.must(err, "AdmittedDevices")
	if len(ad) != 1 || ad[0].ID != d.ID {
		t.Fatalf("AdmittedDevices = %v, want only device %d", ad, d.ID)
	}

	// Second login: same key, another day, new token; the offset stays.
	b := a
	b.Day, b.TokenHash, b.First, b.Last = "2030-01-03", random[[32]byte](), 100, 200
	d2, err := t.s.Admit(t.ctx, b)
	t.must(err, "Admit again")
	if d2.Offset != 10 || d2.LastLoginDay != b.Day || d2.Key != a.Key {
		t.Fatalf("second admission %+v: offset must stay 10, day %s", d2, b.Day)
	}
	_, err = t.s.DeviceByToken(t.ctx, a.TokenHash, t0)
	t.wantErr(err, store.ErrNotFound, "previous token after a new admission")
	_, err = t.s.DeviceByToken(t.ctx, b.TokenHash, t0)
	t.must(err, "new token")

	// The other device gets the next offset.
	o, err := t.s.Admit(t.ctx, admission(devs[1].ID, 10, 20))
	t.must(err, "Admit other")
	if o.Offset != 11 {
		t.Fatalf("second device offset %d, want 11", o.Offset)
	}
}

func testAdmitKeyPinned(t *h) {
	devs := t.enroll(2)
	a := admission(devs[0].ID, 1, 100)
	d, err := t.s.Admit(t.ctx, a)
	t.must(err, "Admit")
	b := admission(devs[0].ID, 1, 100)
	_, err = t.s.Admit(t.ctx, b)
	t.wantErr(err, store.ErrKeyPinned, "another key without ReplaceKey")
	if got := t.device(d.ID); !sameDevice(got, d) {
		t.Fatalf("refused admission changed the device: %+v -> %+v", d, got)
	}
	_, err = t.s.DeviceByToken(t.ctx, a.TokenHash, t0)
	t.must(err, "token of the refused admission's predecessor must survive")
	_, err = t.s.DeviceByToken(t.ctx, b.TokenHash, t0)
	t.wantErr(err, store.ErrNotFound, "token of a refused admission")

	b.ReplaceKey = true
	d2, err := t.s.Admit(t.ctx, b)
	t.must(err, "Admit with ReplaceKey")
	if d2.Key != b.Key || d2.Offset != d.Offset {
		t.Fatalf("after replace: %+v, want key replaced and offset kept", d2)
	}
	_, err = t.s.DeviceByKey(t.ctx, a.Key)
	t.wantErr(err, store.ErrNotFound, "DeviceByKey(old key)")
	// The old key is released: another device may pin it.
	c := admission(devs[1].ID, 1, 100)
	c.Key = a.Key
	_, err = t.s.Admit(t.ctx, c)
	t.must(err, "pinning a released key on another device")
}

func testAdmitRevoked(t *h) {
	devs := t.enroll(2)
	a := admission(devs[0].ID, 1, 100)
	d, err := t.s.Admit(t.ctx, a)
	t.must(err, "Admit")
	code := random[[32]byte]()
	t.must(t.s.CreateBindingCode(t.ctx, code, d.ID, t0.Add(time.Hour)), "CreateBindingCode")
	t.must(t.s.RevokeDevice(t.ctx, d.ID), "RevokeDevice")
	t.must(t.s.RevokeDevice(t.ctx, d.ID), "RevokeDevice twice")
	r := t.device(d.ID)
	if !r.Revoked || r.KeyPinned || r.Offset != d.Offset {
		t.Fatalf("revoked device %+v: want revoked, unpinned, offset %d kept", r, d.Offset)
	}
	_, err = t.s.DeviceByToken(t.ctx, a.TokenHash, t0)
	t.wantErr(err, store.ErrNotFound, "token of a revoked device")
	_, err = t.s.DeviceByKey(t.ctx, a.Key)
	t.wantErr(err, store.ErrNotFound, "DeviceByKey of a revoked device's key")
	ad, err := t.s.AdmittedDevices(t.ctx)
	t.must(err, "AdmittedDevices")
	if len(ad) != 0 {
		t.Fatalf("AdmittedDevices lists a revoked device: %v", ad)
	}
	_, err = t.s.Admit(t.ctx, admission(d.ID, 1, 100))
	t.wantErr(err, store.ErrRevoked, "Admit of a revoked device")
	// The revoked device's key is free again.
	b := admission(devs[1].ID, 1, 100)
	b.Key = a.Key
	o, err := t.s.Admit(t.ctx, b)
	t.must(err, "pinning a revoked device's key elsewhere")
	if o.Offset == d.Offset {
		t.Fatal("a revoked device's offset was given to another device")
	}
	t.wantErr(t.s.RevokeDevice(t.ctx, 424242), store.ErrNotFound, "RevokeDevice unknown")
}

func testResetDeviceKey(t *h) {
	devs := t.enroll(2)
	a := admission(devs[0].ID, 1, 100)
	d, err := t.s.Admit(t.ctx, a)
	t.must(err, "Admit")
	t.must(t.s.ResetDeviceKey(t.ctx, d.ID), "ResetDeviceKey")
	r := t.device(d.ID)
	if r.KeyPinned || r.Revoked || r.Offset != d.Offset {
		t.Fatalf("after reset %+v: want unpinned, not revoked, offset kept", r)
	}
	// Old key free for someone else, new key pinned without ReplaceKey.
	b := admission(devs[1].ID, 1, 100)
	b.Key = a.Key
	_, err = t.s.Admit(t.ctx, b)
	t.must(err, "old key on another device after reset")
	c := admission(d.ID, 1, 100)
	d2, err := t.s.Admit(t.ctx, c)
	t.must(err, "new key after reset")
	if d2.Key != c.Key || d2.Offset != d.Offset {
		t.Fatalf("after reset and login: %+v", d2)
	}
	t.wantErr(t.s.ResetDeviceKey(t.ctx, 424242), store.ErrNotFound, "ResetDeviceKey unknown")
}

func testAdmitUnknown(t *h) {
	_, err := t.s.Admit(t.ctx, admission(424242, 1, 10))
	t.wantErr(err, store.ErrNotFound, "Admit unknown device")
}

func testAdmitInvalid(t *h) {
	d := t.enroll(1)[0]
	for name, bad := range map[string]func(*store.Admission){
		"zero key":     func(a *store.Admission) { a.Key = store.Key{} },
		"zero first":   func(a *store.Admission) { a.First = 0 },
		"first>last":   func(a *store.Admission) { a.First, a.Last = 5, 4 },
		"bad day":      func(a *store.Admission) { a.Day = "yesterday" },
		"no expiry":    func(a *store.Admission) { a.TokenExpires = time.Time{} },
		"zero token":   func(a *store.Admission) { a.TokenHash = [32]byte{} },
		"no gateway":   func(a *store.Admission) { a.Gateway = "" },
		"long gateway": func(a *store.Admission) { a.Gateway = strings.Repeat("g", 65) },
	} {
		a := admission(d.ID, 1, 10)
		bad(&a)
		_, err := t.s.Admit(t.ctx, a)
		t.wantErr(err, privacy.ErrInvalid, name)
	}
	if got := t.device(d.ID); !sameDevice(got, d) {
		t.Fatalf("invalid admissions changed the device: %+v", got)
	}
}

func testAdmitExhausted(t *h) {
	devs := t.enroll(4)
	for i, d := range devs[:3] {
		got, err := t.s.Admit(t.ctx, admission(d.ID, 5, 7))
		t.must(err, "Admit")
		if got.Offset != uint32(5+i) {
			t.Fatalf("device %d offset %d, want %d", i, got.Offset, 5+i)
		}
	}
	a := admission(devs[3].ID, 5, 7)
	_, err := t.s.Admit(t.ctx, a)
	t.wantErr(err, store.ErrExhausted, "Admit into a full pool")
	if got := t.device(devs[3].ID); !sameDevice(got, devs[3]) {
		t.Fatalf("failed admission wrote something: %+v", got)
	}
	_, err = t.s.DeviceByToken(t.ctx, a.TokenHash, t0)
	t.wantErr(err, store.ErrNotFound, "token of a failed admission")
	// Its key was not kept either: the gateway may reserve it.
	t.must(t.s.ReserveKey(t.ctx, a.Key, store.OwnerGateway), "key of a failed admission is free")
	// A larger pool admits it.
	got, err := t.s.Admit(t.ctx, admission(devs[3].ID, 5, 8))
	t.must(err, "Admit with a larger pool")
	if got.Offset != 8 {
		t.Fatalf("offset %d, want 8", got.Offset)
	}
}

func testAdmitGaps(t *h) {
	devs := t.enroll(4)
	got, err := t.s.Admit(t.ctx, admission(devs[0].ID, 3, 3))
	t.must(err, "Admit into [3,3]")
	want := []uint32{3, 1, 2}
	for i, d := range devs[1:3] {
		got, err = t.s.Admit(t.ctx, admission(d.ID, 1, 3))
		t.must(err, "Admit into [1,3]")
		if got.Offset != want[i+1] {
			t.Fatalf("offset %d, want %d (lowest free below the top)", got.Offset, want[i+1])
		}
	}
	_, err = t.s.Admit(t.ctx, admission(devs[3].ID, 1, 3))
	t.wantErr(err, store.ErrExhausted, "Admit into a full [1,3]")
}

func testAdmitConcurrent(t *h) {
	const n, workers = 200, 32
	devs := t.enroll(n)
	jobs := make(chan store.Device, n)
	for _, d := range devs {
		jobs <- d
	}
	close(jobs)
	var (
		mu      sync.Mutex
		offsets = map[uint32]int64{}
		errs    []error
		wg      sync.WaitGroup
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range jobs {
				got, err := t.s.Admit(t.ctx, admission(d.ID, 1, 1000))
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else if other, dup := offsets[got.Offset]; dup {
					errs = append(errs, fmt.Errorf("offset %d given to devices %d and %d", got.Offset, other, d.ID))
				} else {
					offsets[got.Offset] = d.ID
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d concurrent admissions failed, first: %v", len(errs), errs[0])
	}
	if len(offsets) != n {
		t.Fatalf("%d distinct offsets, want %d", len(offsets), n)
	}
	for off := range offsets {
		if off < 1 || off > 1000 {
			t.Fatalf("offset %d outside [1,1000]", off)
		}
	}
	ad, err := t.s.AdmittedDevices(t.ctx)
	t.must(err, "AdmittedDevices")
	if len(ad) != n {
		t.Fatalf("AdmittedDevices: %d, want %d", len(ad), n)
	}
	for _, d := range ad {
		if offsets[d.Offset] != d.ID {
			t.Fatalf("stored offset %d of device %d differs from the one Admit returned", d.Offset, d.ID)
		}
	}
}

// --- keys ---

func testKeysUnique(t *h) {
	devs := t.enroll(3)
	acct := t.account()
	gw := random[store.Key]()
	t.must(t.s.ReserveKey(t.ctx, gw, store.OwnerGateway), "ReserveKey gateway")

	// Gateway key: no device, no client.
	a := admission(devs[0].ID, 1, 100)
	a.Key = gw
	_, err := t.s.Admit(t.ctx, a)
	t.wantErr(err, store.ErrKeyInUse, "device pinning the gateway key")
	t.bind(acct.ID, devs[0].ID)
	sess := store.Session{ID: "s-gw", AccountID: acct.ID, DeviceID: devs[0].ID, ClientKey: gw, OpenedAt: t0, ExpiresAt: t0.Add(time.Hour)}
	_, err = t.s.OpenSession(t.ctx, sess, 1, 10)
	t.wantErr(err, store.ErrKeyInUse, "client using the gateway key")

	// Device key: no other device, no client, not the gateway.
	dk := admission(devs[0].ID, 1, 100)
	_, err = t.s.Admit(t.ctx, dk)
	t.must(err, "Admit")
	b := admission(devs[1].ID, 1, 100)
	b.Key = dk.Key
	_, err = t.s.Admit(t.ctx, b)
	t.wantErr(err, store.ErrKeyInUse, "second device pinning a pinned key")
	b.ReplaceKey = true
	_, err = t.s.Admit(t.ctx, b)
	t.wantErr(err, store.ErrKeyInUse, "second device pinning a pinned key with ReplaceKey")
	sess.ID, sess.ClientKey = "s-dev", dk.Key
	_, err = t.s.OpenSession(t.ctx, sess, 1, 10)
	t.wantErr(err, store.ErrKeyInUse, "client using a device key")
	t.wantErr(t.s.ReserveKey(t.ctx, dk.Key, store.OwnerGateway), store.ErrKeyInUse, "gateway reserving a device key")

	// Client key: no device, no second session, not the gateway; free once closed.
	ck := random[store.Key]()
	sess.ID, sess.ClientKey = "s-client", ck
	_, err = t.s.OpenSession(t.ctx, sess, 1, 10)
	t.must(err, "OpenSession")
	c := admission(devs[2].ID, 1, 100)
	c.Key = ck
	_, err = t.s.Admit(t.ctx, c)
	t.wantErr(err, store.ErrKeyInUse, "device pinning an open session's client key")
	sess.ID = "s-client-2"
	_, err = t.s.OpenSession(t.ctx, sess, 1, 10)
	t.wantErr(err, store.ErrKeyInUse, "second session with the same client key")
	t.wantErr(t.s.ReserveKey(t.ctx, ck, store.OwnerGateway), store.ErrKeyInUse, "gateway reserving a client key")
	_, err = t.s.CloseSession(t.ctx, "s-client", t0.Add(time.Minute))
	t.must(err, "CloseSession")
	_, err = t.s.Admit(t.ctx, c)
	t.must(err, "device pinning a closed session's client key")
}

func testReserveKey(t *h) {
	k := random[store.Key]()
	t.must(t.s.ReserveKey(t.ctx, k, store.OwnerGateway), "ReserveKey")
	t.must(t.s.ReserveKey(t.ctx, k, store.OwnerGateway), "ReserveKey again (idempotent)")
	t.wantErr(t.s.ReserveKey(t.ctx, k, store.OwnerClient), store.ErrKeyInUse, "ReserveKey for another owner kind")
	t.wantErr(t.s.ReserveKey(t.ctx, store.Key{}, store.OwnerGateway), privacy.ErrInvalid, "ReserveKey zero key")
}

// --- device tokens ---

func testDeviceTokens(t *h) {
	d := t.enroll(1)[0]
	a := admission(d.ID, 1, 10)
	a.TokenExpires = t0.Add(time.Hour)
	_, err := t.s.Admit(t.ctx, a)
	t.must(err, "Admit")
	got, err := t.s.DeviceByToken(t.ctx, a.TokenHash, t0.Add(time.Hour-time.Nanosecond))
	t.must(err, "DeviceByToken before expiry")
	if got.ID != d.ID {
		t.Fatalf("DeviceByToken found device %d, want %d", got.ID, d.ID)
	}
	_, err = t.s.DeviceByToken(t.ctx, a.TokenHash, t0.Add(time.Hour))
	t.wantErr(err, store.ErrNotFound, "DeviceByToken at expiry")
	_, err = t.s.DeviceByToken(t.ctx, a.TokenHash, t0.Add(2*time.Hour))
	t.wantErr(err, store.ErrNotFound, "DeviceByToken after expiry")
	t.must(t.s.DeleteDeviceTokens(t.ctx, d.ID), "DeleteDeviceTokens")
	_, err = t.s.DeviceByToken(t.ctx, a.TokenHash, t0)
	t.wantErr(err, store.ErrNotFound, "DeviceByToken after DeleteDeviceTokens")
	if got := t.device(d.ID); !got.KeyPinned {
		t.Fatal("DeleteDeviceTokens unpinned the key")
	}
}

// --- auth failures ---

func testAuthFailures(t *h) {
	idx, other := random[privacy.BlindIndex](), random[privacy.BlindIndex]()
	for i := range 3 {
		t.must(t.s.RecordAuthFailure(t.ctx, idx, t0.Add(time.Duration(i)*time.Minute)), "RecordAuthFailure")
	}
	t.must(t.s.RecordAuthFailure(t.ctx, other, t0), "RecordAuthFailure other")
	count := func(i privacy.BlindIndex, since time.Time) int {
		n, err := t.s.CountAuthFailures(t.ctx, i, since)
		t.must(err, "CountAuthFailures")
		return n
	}
	if n := count(idx, t0); n != 3 {
		t.Fatalf("CountAuthFailures since t0 = %d, want 3", n)
	}
	if n := count(idx, t0.Add(time.Minute)); n != 2 {
		t.Fatalf("CountAuthFailures since t0+1m = %d, want 2 (inclusive)", n)
	}
	if n := count(idx, t0.Add(time.Hour)); n != 0 {
		t.Fatalf("CountAuthFailures since t0+1h = %d, want 0", n)
	}
	t.must(t.s.ClearAuthFailures(t.ctx, idx), "ClearAuthFailures")
	if n := count(idx, t0); n != 0 {
		t.Fatalf("after clear: %d, want 0", n)
	}
	if n := count(other, t0); n != 1 {
		t.Fatalf("clear of one index touched another: %d, want 1", n)
	}
}

// --- accounts ---

func testAccounts(t *h) {
	a := t.account()
	if a.ID == 0 || !a.CreatedAt.Equal(t0) {
		t.Fatalf("CreateAccount = %+v", a)
	}
	byName, err := t.s.AccountByName(t.ctx, a.NameIndex)
	t.must(err, "AccountByName")
	byID, err := t.s.AccountByID(t.ctx, a.ID)
	t.must(err, "AccountByID")
	for _, got := range []store.Account{byName, byID} {
		if got.ID != a.ID || got.NameIndex != a.NameIndex || string(got.SealedName) != string(a.SealedName) ||
			got.PasswordHash != a.PasswordHash || !got.CreatedAt.Equal(a.CreatedAt) {
			t.Fatalf("stored account %+v, created %+v", got, a)
		}
	}
	dup := a
	dup.ID, dup.SealedName = 0, []byte("other")
	_, err = t.s.CreateAccount(t.ctx, dup)
	t.wantErr(err, store.ErrConflict, "CreateAccount with an existing name")
	_, err = t.s.CreateAccount(t.ctx, store.Account{NameIndex: random[privacy.BlindIndex](), SealedName: []byte("x")})
	t.wantErr(err, privacy.ErrInvalid, "CreateAccount without a password hash")

	t.must(t.s.SetPasswordHash(t.ctx, a.ID, "$argon2id$new"), "SetPasswordHash")
	got, err := t.s.AccountByID(t.ctx, a.ID)
	t.must(err, "AccountByID")
	if got.PasswordHash != "$argon2id$new" {
		t.Fatalf("password hash %q after SetPasswordHash", got.PasswordHash)
	}
	_, err = t.s.AccountByName(t.ctx, random[privacy.BlindIndex]())
	t.wantErr(err, store.ErrNotFound, "AccountByName unknown")
	_, err = t.s.AccountByID(t.ctx, 424242)
	t.wantErr(err, store.ErrNotFound, "AccountByID unknown")
	t.wantErr(t.s.SetPasswordHash(t.ctx, 424242, "x"), store.ErrNotFound, "SetPasswordHash unknown")
	_, err = t.s.DeleteAccount(t.ctx, 424242)
	t.wantErr(err, store.ErrNotFound, "DeleteAccount unknown")
}

func testAccessTokens(t *h) {
	a, b := t.account(), t.account()
	ta, tb := random[[32]byte](), random[[32]byte]()
	t.must(t.s.CreateAccessToken(t.ctx, ta, a.ID, t0.Add(time.Hour)), "CreateAccessToken")
	t.must(t.s.CreateAccessToken(t.ctx, tb, b.ID, t0.Add(time.Hour)), "CreateAccessToken b")
	t.wantErr(t.s.CreateAccessToken(t.ctx, ta, b.ID, t0.Add(time.Hour)), store.ErrConflict, "CreateAccessToken duplicate hash")
	t.wantErr(t.s.CreateAccessToken(t.ctx, random[[32]byte](), 424242, t0.Add(time.Hour)), store.ErrNotFound, "CreateAccessToken unknown account")
	got, err := t.s.AccountByToken(t.ctx, ta, t0)
	t.must(err, "AccountByToken")
	if got.ID != a.ID {
		t.Fatalf("AccountByToken found %d, want %d", got.ID, a.ID)
	}
	_, err = t.s.AccountByToken(t.ctx, ta, t0.Add(time.Hour))
	t.wantErr(err, store.ErrNotFound, "AccountByToken at expiry")
	_, err = t.s.AccountByToken(t.ctx, random[[32]byte](), t0)
	t.wantErr(err, store.ErrNotFound, "AccountByToken unknown")
	t.must(t.s.DeleteAccessTokens(t.ctx, a.ID), "DeleteAccessTokens")
	_, err = t.s.AccountByToken(t.ctx, ta, t0)
	t.wantErr(err, store.ErrNotFound, "AccountByToken after DeleteAccessTokens")
	_, err = t.s.AccountByToken(t.ctx, tb, t0)
	t.must(err, "other account's token survives DeleteAccessTokens")
}

// --- bindings ---

func testBindingRedeem(t *h) {
	devs := t.enroll(3)
	acct := t.account()
	code := random[[32]byte]()
	t.must(t.s.CreateBindingCode(t.ctx, code, devs[0].ID, t0.Add(5*time.Minute)), "CreateBindingCode")
	t.wantErr(t.s.CreateBindingCode(t.ctx, code, devs[1].ID, t0.Add(5*time.Minute)), store.ErrConflict, "CreateBindingCode duplicate")
	t.wantErr(t.s.CreateBindingCode(t.ctx, random[[32]byte](), 424242, t0.Add(5*time.Minute)), store.ErrNotFound, "CreateBindingCode unknown device")
	bound, err := t.s.IsBound(t.ctx, acct.ID, devs[0].ID)
	t.must(err, "IsBound")
	if bound {
		t.Fatal("bound before redeeming")
	}
	d, err := t.s.RedeemBindingCode(t.ctx, code, acct.ID, t0)
	t.must(err, "RedeemBindingCode")
	if d.ID != devs[0].ID {
		t.Fatalf("redeemed device %d, want %d", d.ID, devs[0].ID)
	}
	_, err = t.s.RedeemBindingCode(t.ctx, code, acct.ID, t0)
	t.wantErr(err, store.ErrNotFound, "redeeming a used code")
	_, err = t.s.RedeemBindingCode(t.ctx, random[[32]byte](), acct.ID, t0)
	t.wantErr(err, store.ErrNotFound, "redeeming an unknown code")
	t.bind(acct.ID, devs[2].ID)
	bound, err = t.s.IsBound(t.ctx, acct.ID, devs[0].ID)
	t.must(err, "IsBound")
	if !bound {
		t.Fatal("not bound after redeeming")
	}
	bd, err := t.s.BoundDevices(t.ctx, acct.ID)
	t.must(err, "BoundDevices")
	if len(bd) != 2 || bd[0].ID != devs[0].ID || bd[1].ID != devs[2].ID {
		t.Fatalf("BoundDevices = %v, want devices %d and %d", bd, devs[0].ID, devs[2].ID)
	}
	other := t.account()
	bd, err = t.s.BoundDevices(t.ctx, other.ID)
	t.must(err, "BoundDevices other")
	if len(bd) != 0 {
		t.Fatalf("another account sees %d bound devices", len(bd))
	}
	// A revoked device cannot be bound.
	rc := random[[32]byte]()
	t.must(t.s.CreateBindingCode(t.ctx, rc, devs[1].ID, t0.Add(5*time.Minute)), "CreateBindingCode")
	t.must(t.s.RevokeDevice(t.ctx, devs[1].ID), "RevokeDevice")
	_, err = t.s.RedeemBindingCode(t.ctx, rc, acct.ID, t0)
	if !errors.Is(err, store.ErrRevoked) && !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("redeeming a revoked device's code: %v, want ErrRevoked or ErrNotFound", err)
	}
	if ok, _ := t.s.IsBound(t.ctx, acct.ID, devs[1].ID); ok {
		t.Fatal("revoked device was bound")
	}
}

// A new owner marks the device's other owners' bindings; each owner takes
// its notices once; re-binding by an owner marks nothing.
func testBindingNotices(t *h) {
	devs := t.enroll(2)
	alice, bob, carol := t.account(), t.account(), t.account()
	t.bind(alice.ID, devs[0].ID)
	t.bind(alice.ID, devs[1].ID)
	take := func(a store.Account) map[int64]time.Time {
		t.Helper()
		n, err := t.s.TakeBindingNotices(t.ctx, a.ID)
		t.must(err, "TakeBindingNotices")
		return n
	}
	if n := take(alice); len(n) != 0 {
		t.Fatalf("notices before anyone else bound: %v", n)
	}
	t.bind(bob.ID, devs[0].ID)
	if n := take(bob); len(n) != 0 {
		t.Fatalf("the new owner got notices: %v", n)
	}
	n := take(alice)
	if len(n) != 1 || !n[devs[0].ID].Equal(t0) {
		t.Fatalf("alice's notices %v, want device %d at %v", n, devs[0].ID, t0)
	}
	if n := take(alice); len(n) != 0 {
		t.Fatalf("notices taken twice: %v", n)
	}
	t.bind(alice.ID, devs[0].ID) // already an owner: nothing new
	if n := take(bob); len(n) != 0 {
		t.Fatalf("a re-bind by an owner notified: %v", n)
	}
	t.bind(carol.ID, devs[0].ID)
	if a, b := take(alice), take(bob); len(a) != 1 || len(b) != 1 {
		t.Fatalf("third owner: alice %v, bob %v; want one notice each", a, b)
	}
}

func testBindingExpired(t *h) {
	d := t.enroll(1)[0]
	acct := t.account()
	code := random[[32]byte]()
	t.must(t.s.CreateBindingCode(t.ctx, code, d.ID, t0), "CreateBindingCode")
	_, err := t.s.RedeemBindingCode(t.ctx, code, acct.ID, t0)
	t.wantErr(err, store.ErrNotFound, "redeeming at expiry")
	// The expired code was deleted: even an earlier clock cannot use it now.
	_, err = t.s.RedeemBindingCode(t.ctx, code, acct.ID, t0.Add(-time.Minute))
	t.wantErr(err, store.ErrNotFound, "redeeming an expired (deleted) code")
	if ok, _ := t.s.IsBound(t.ctx, acct.ID, d.ID); ok {
		t.Fatal("expired code bound the device")
	}
}

// receiptEqual compares receipts, a missing table counting as zero.
func receiptEqual(got, want map[string]int64) bool {
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	for k, v := range got {
		if want[k] != v {
			return false
		}
	}
	return true
}

func testUnbind(t *h) {
	devs := t.enroll(2)
	acct, other := t.account(), t.account()
	t.bind(acct.ID, devs[0].ID)
	t.bind(acct.ID, devs[1].ID)
	t.bind(other.ID, devs[0].ID)
	s1, err := t.openSession(acct.ID, devs[0].ID, 1, 10)
	t.must(err, "OpenSession")
	s2, err := t.openSession(acct.ID, devs[1].ID, 1, 10)
	t.must(err, "OpenSession")
	s3, err := t.openSession(other.ID, devs[0].ID, 1, 10)
	t.must(err, "OpenSession")
	receipt, err := t.s.Unbind(t.ctx, acct.ID, devs[0].ID)
	t.must(err, "Unbind")
	if want := map[string]int64{store.TableBindings: 1, store.TableSessions: 1}; !receiptEqual(receipt, want) {
		t.Fatalf("Unbind receipt %v, want %v", receipt, want)
	}
	if ok, _ := t.s.IsBound(t.ctx, acct.ID, devs[0].ID); ok {
		t.Fatal("still bound after Unbind")
	}
	for _, c := range []struct {
		s      store.Session
		closed bool
	}{{s1, true}, {s2, false}, {s3, false}} {
		got, err := t.s.SessionByID(t.ctx, c.s.ID)
		t.must(err, "SessionByID")
		if got.ClosedAt.IsZero() == c.closed {
			t.Fatalf("session %s closed=%v after Unbind, want %v", c.s.ID, !got.ClosedAt.IsZero(), c.closed)
		}
	}
	for _, p := range [][2]int64{{acct.ID, devs[1].ID}, {other.ID, devs[0].ID}} {
		if ok, _ := t.s.IsBound(t.ctx, p[0], p[1]); !ok {
			t.Fatalf("Unbind removed binding %v", p)
		}
	}
	_, err = t.s.Unbind(t.ctx, acct.ID, devs[0].ID)
	t.wantErr(err, store.ErrNotFound, "Unbind twice")
}

// --- sessions ---

func testSessions(t *h) {
	d := t.enroll(1)[0]
	acct := t.account()
	t.bind(acct.ID, d.ID)
	in := store.Session{ID: "sess-1", AccountID: acct.ID, DeviceID: d.ID, ClientKey: random[store.Key](), OpenedAt: t0, ExpiresAt: t0.Add(time.Hour)}
	s1, err := t.s.OpenSession(t.ctx, in, 20, 30)
	t.must(err, "OpenSession")
	if s1.ClientOffset != 20 || s1.ID != in.ID || !s1.ClosedAt.IsZero() {
		t.Fatalf("OpenSession = %+v, want offset 20, open", s1)
	}
	got, err := t.s.SessionByID(t.ctx, in.ID)
	t.must(err, "SessionByID")
	if got.ID != in.ID || got.AccountID != acct.ID || got.DeviceID != d.ID || got.ClientKey != in.ClientKey ||
		got.ClientOffset != 20 || !got.OpenedAt.Equal(in.OpenedAt) || !got.ExpiresAt.Equal(in.ExpiresAt) || !got.ClosedAt.IsZero() {
		t.Fatalf("stored session %+v, opened %+v", got, in)
	}
	dup := in
	dup.ClientKey = random[store.Key]()
	_, err = t.s.OpenSession(t.ctx, dup, 20, 30)
	t.wantErr(err, store.ErrConflict, "OpenSession with an existing id")
	unknown := dup
	unknown.ID, unknown.DeviceID = "sess-unknown-device", 424242
	_, err = t.s.OpenSession(t.ctx, unknown, 20, 30)
	t.wantErr(err, store.ErrNotFound, "OpenSession to an unknown device")

	s2, err := t.openSession(acct.ID, d.ID, 20, 30)
	t.must(err, "OpenSession 2")
	s3, err := t.openSession(acct.ID, d.ID, 20, 30)
	t.must(err, "OpenSession 3")
	if s2.ClientOffset != 21 || s3.ClientOffset != 22 {
		t.Fatalf("offsets %d, %d, want 21, 22", s2.ClientOffset, s3.ClientOffset)
	}
	open, err := t.s.OpenSessions(t.ctx)
	t.must(err, "OpenSessions")
	if len(open) != 3 {
		t.Fatalf("OpenSessions: %d, want 3", len(open))
	}

	closedAt := t0.Add(10 * time.Minute)
	c, err := t.s.CloseSession(t.ctx, s2.ID, closedAt)
	t.must(err, "CloseSession")
	if !c.ClosedAt.Equal(closedAt) || c.ClientOffset != 21 {
		t.Fatalf("CloseSession = %+v", c)
	}
	again, err := t.s.CloseSession(t.ctx, s2.ID, closedAt.Add(time.Hour))
	t.must(err, "CloseSession twice")
	if !again.ClosedAt.Equal(closedAt) {
		t.Fatalf("closing a closed session changed ClosedAt to %v", again.ClosedAt)
	}
	_, err = t.s.CloseSession(t.ctx, "no-such-session", closedAt)
	t.wantErr(err, store.ErrNotFound, "CloseSession unknown")
	_, err = t.s.SessionByID(t.ctx, "no-such-session")
	t.wantErr(err, store.ErrNotFound, "SessionByID unknown")

	open, err = t.s.OpenSessions(t.ctx)
	t.must(err, "OpenSessions")
	if len(open) != 2 {
		t.Fatalf("OpenSessions after close: %d, want 2", len(open))
	}
	for _, o := range open {
		if o.ID == s2.ID {
			t.Fatal("OpenSessions lists a closed session")
		}
	}
	// The closed session's offset and key are free again.
	reuse := store.Session{ID: "sess-reuse", AccountID: acct.ID, DeviceID: d.ID, ClientKey: s2.ClientKey, OpenedAt: t0, ExpiresAt: t0.Add(time.Hour)}
	s4, err := t.s.OpenSession(t.ctx, reuse, 20, 30)
	t.must(err, "OpenSession reusing a closed session's key")
	if s4.ClientOffset != 21 {
		t.Fatalf("offset %d, want the freed 21", s4.ClientOffset)
	}
	s5, err := t.openSession(acct.ID, d.ID, 20, 30)
	t.must(err, "OpenSession 5")
	if s5.ClientOffset != 23 {
		t.Fatalf("offset %d, want 23", s5.ClientOffset)
	}
}

// testSessionsNeedBinding: OpenSession itself refuses an account the
// device is not bound to (never bound, or unbound since the caller
// checked) with ErrNotFound and a revoked device with ErrRevoked, writing
// nothing; the same session opens once the device is bound (the control).
func testSessionsNeedBinding(t *h) {
	devs := t.enroll(2)
	acct := t.account()
	sess := func(id string, deviceID int64) store.Session {
		return store.Session{ID: id, AccountID: acct.ID, DeviceID: deviceID, ClientKey: random[store.Key](), OpenedAt: t0, ExpiresAt: t0.Add(time.Hour)}
	}
	refused := func(s store.Session, want error, what string) {
		t.Helper()
		_, err := t.s.OpenSession(t.ctx, s, 1, 10)
		t.wantErr(err, want, what)
		_, err = t.s.SessionByID(t.ctx, s.ID)
		t.wantErr(err, store.ErrNotFound, "SessionByID after a refused "+what)
		t.must(t.s.ReserveKey(t.ctx, s.ClientKey, store.OwnerGateway), "the refused session's client key is free")
	}
	refused(sess("never-bound", devs[0].ID), store.ErrNotFound, "OpenSession without a binding")
	t.bind(acct.ID, devs[0].ID)
	s1, err := t.s.OpenSession(t.ctx, sess("bound", devs[0].ID), 1, 10)
	t.must(err, "OpenSession once bound")
	_, err = t.s.Unbind(t.ctx, acct.ID, devs[0].ID)
	t.must(err, "Unbind")
	if got, err := t.s.SessionByID(t.ctx, s1.ID); err != nil || got.ClosedAt.IsZero() {
		t.Fatalf("the session after Unbind: %+v, %v, want closed", got, err)
	}
	refused(sess("unbound", devs[0].ID), store.ErrNotFound, "OpenSession after Unbind")

	t.bind(acct.ID, devs[1].ID)
	t.must(t.s.RevokeDevice(t.ctx, devs[1].ID), "RevokeDevice")
	refused(sess("revoked", devs[1].ID), store.ErrRevoked, "OpenSession to a revoked device")
}

// testRevokeClosesSessions: RevokeDevice closes the device's open sessions
// in its own transaction (their client keys released, a ChangeSession
// each), so a gateway stopped right after the revocation leaves none open;
// another device's session stays open (the control).
func testRevokeClosesSessions(t *h) {
	devs := t.enroll(2)
	d, other := t.admitAt(devs[0].ID, gwA), t.admitAt(devs[1].ID, gwA)
	acct := t.account()
	s1, s2, kept := t.sessionAt(acct.ID, d.ID, 1), t.sessionAt(acct.ID, d.ID, 2), t.sessionAt(acct.ID, other.ID, 3)
	ch := t.changes()
	m := t.newMarker()
	t.must(t.s.RevokeDevice(t.ctx, d.ID), "RevokeDevice")
	for _, s := range []store.Session{s1, s2} {
		got, err := t.s.SessionByID(t.ctx, s.ID)
		t.must(err, "SessionByID")
		if got.ClosedAt.IsZero() {
			t.Fatalf("session %s of the revoked device is still open", s.ID)
		}
		t.must(t.s.ReserveKey(t.ctx, s.ClientKey, store.OwnerGateway), "the closed session's client key is free")
	}
	if got, err := t.s.SessionByID(t.ctx, kept.ID); err != nil || !got.ClosedAt.IsZero() {
		t.Fatalf("another device's session after the revocation: %+v, %v, want open", got, err)
	}
	t.wantPeers(gwA, []store.Device{other}, []store.Session{kept})
	t.expectSet(ch, "RevokeDevice closing two sessions", devChange(d.ID, gwA), sessChange(s1), sessChange(s2))
	t.expectNothingBefore(ch, m, "the revocation (nothing more)")
}

func testSessionsExhausted(t *h) {
	d := t.enroll(1)[0]
	acct := t.account()
	t.bind(acct.ID, d.ID)
	s1, err := t.openSession(acct.ID, d.ID, 1, 2)
	t.must(err, "OpenSession")
	_, err = t.openSession(acct.ID, d.ID, 1, 2)
	t.must(err, "OpenSession")
	in := store.Session{ID: "third", AccountID: acct.ID, DeviceID: d.ID, ClientKey: random[store.Key](), OpenedAt: t0, ExpiresAt: t0.Add(time.Hour)}
	_, err = t.s.OpenSession(t.ctx, in, 1, 2)
	t.wantErr(err, store.ErrExhausted, "OpenSession into a full pool")
	_, err = t.s.SessionByID(t.ctx, in.ID)
	t.wantErr(err, store.ErrNotFound, "session of a failed OpenSession")
	// Its key was not kept.
	t.must(t.s.ReserveKey(t.ctx, in.ClientKey, store.OwnerGateway), "key of a failed OpenSession is free")
	_, err = t.s.CloseSession(t.ctx, s1.ID, t0.Add(time.Minute))
	t.must(err, "CloseSession")
	in.ClientKey = random[store.Key]()
	s3, err := t.s.OpenSession(t.ctx, in, 1, 2)
	t.must(err, "OpenSession after a close")
	if s3.ClientOffset != s1.ClientOffset {
		t.Fatalf("offset %d, want the freed %d", s3.ClientOffset, s1.ClientOffset)
	}
}

func testSessionsInvalid(t *h) {
	d := t.enroll(1)[0]
	acct := t.account()
	for name, bad := range map[string]func(*store.Session, *uint32, *uint32){
		"empty id":   func(s *store.Session, _, _ *uint32) { s.ID = "" },
		"zero key":   func(s *store.Session, _, _ *uint32) { s.ClientKey = store.Key{} },
		"zero first": func(_ *store.Session, f, _ *uint32) { *f = 0 },
		"first>last": func(_ *store.Session, f, l *uint32) { *f, *l = 9, 8 },
		"no expiry":  func(s *store.Session, _, _ *uint32) { s.ExpiresAt = time.Time{} },
	} {
		s := store.Session{ID: "x", AccountID: acct.ID, DeviceID: d.ID, ClientKey: random[store.Key](), OpenedAt: t0, ExpiresAt: t0.Add(time.Hour)}
		first, last := uint32(1), uint32(10)
		bad(&s, &first, &last)
		_, err := t.s.OpenSession(t.ctx, s, first, last)
		t.wantErr(err, privacy.ErrInvalid, name)
	}
	open, err := t.s.OpenSessions(t.ctx)
	t.must(err, "OpenSessions")
	if len(open) != 0 {
		t.Fatalf("invalid OpenSession calls left %d sessions", len(open))
	}
}

func testSessionsLimit(t *h) {
	d := t.enroll(1)[0]
	a, b := t.account(), t.account()
	t.bind(a.ID, d.ID)
	t.bind(b.ID, d.ID)
	open := func(acct int64, limit int) (store.Session, error) {
		return t.s.OpenSession(t.ctx, store.Session{
			ID: rand.Text(), AccountID: acct, DeviceID: d.ID, ClientKey: random[store.Key](),
			OpenedAt: t0, ExpiresAt: t0.Add(time.Hour), MaxPerAccount: limit,
		}, 1, 100)
	}
	s1, err := open(a.ID, 2)
	t.must(err, "OpenSession 1 of 2")
	_, err = open(a.ID, 2)
	t.must(err, "OpenSession 2 of 2")
	in := store.Session{ID: "over", AccountID: a.ID, DeviceID: d.ID, ClientKey: random[store.Key](), OpenedAt: t0, ExpiresAt: t0.Add(time.Hour), MaxPerAccount: 2}
	_, err = t.s.OpenSession(t.ctx, in, 1, 100)
	t.wantErr(err, store.ErrLimit, "OpenSession 3 of 2")
	_, err = t.s.SessionByID(t.ctx, in.ID)
	t.wantErr(err, store.ErrNotFound, "session of a refused OpenSession")
	t.must(t.s.ReserveKey(t.ctx, in.ClientKey, store.OwnerGateway), "key of a refused OpenSession is free")
	// Another account has its own count; no limit means none.
	_, err = open(b.ID, 1)
	t.must(err, "other account's first session")
	_, err = open(a.ID, 0)
	t.must(err, "OpenSession without a limit")
	// Closed sessions do not count: 3 open, one closed.
	_, err = t.s.CloseSession(t.ctx, s1.ID, t0.Add(time.Minute))
	t.must(err, "CloseSession")
	_, err = open(a.ID, 2)
	t.wantErr(err, store.ErrLimit, "2 open against a limit of 2")
	_, err = open(a.ID, 3)
	t.must(err, "OpenSession under a limit of 3")
	_, err = open(a.ID, -1)
	t.wantErr(err, privacy.ErrInvalid, "negative limit")
}

// testSessionsLimitConcurrent opens many sessions of one account at once:
// exactly the limit succeed, the others get ErrLimit.
func testSessionsLimitConcurrent(t *h) {
	d := t.enroll(1)[0]
	a := t.account()
	t.bind(a.ID, d.ID)
	const calls, limit = 20, 4
	var wg sync.WaitGroup
	errs := make([]error, calls)
	start := make(chan struct{})
	for i := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, errs[i] = t.s.OpenSession(t.ctx, store.Session{
				ID: rand.Text(), AccountID: a.ID, DeviceID: d.ID, ClientKey: random[store.Key](),
				OpenedAt: t0, ExpiresAt: t0.Add(time.Hour), MaxPerAccount: limit,
			}, 1, 100)
		}()
	}
	close(start)
	wg.Wait()
	ok := 0
	for i, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, store.ErrLimit):
			t.Fatalf("call %d: %v, want nil or ErrLimit", i, err)
		}
	}
	open, err := t.s.OpenSessions(t.ctx)
	t.must(err, "OpenSessions")
	if ok != limit || len(open) != limit {
		t.Fatalf("%d calls succeeded and %d sessions are open, want exactly %d", ok, len(open), limit)
	}
}

// --- erasure ---

func testDeleteAccount(t *h) {
	devs := t.enroll(2)
	acct, other := t.account(), t.account()
	tokens := [][32]byte{random[[32]byte](), random[[32]byte](), random[[32]byte]()}
	for _, tok := range tokens {
		t.must(t.s.CreateAccessToken(t.ctx, tok, acct.ID, t0.Add(time.Hour)), "CreateAccessToken")
	}
	otherTok := random[[32]byte]()
	t.must(t.s.CreateAccessToken(t.ctx, otherTok, other.ID, t0.Add(time.Hour)), "CreateAccessToken other")
	t.bind(acct.ID, devs[0].ID)
	t.bind(acct.ID, devs[1].ID)
	t.bind(other.ID, devs[0].ID)
	s1, err := t.openSession(acct.ID, devs[0].ID, 1, 10)
	t.must(err, "OpenSession")
	s2, err := t.openSession(acct.ID, devs[1].ID, 1, 10)
	t.must(err, "OpenSession")
	s3, err := t.openSession(acct.ID, devs[1].ID, 1, 10)
	t.must(err, "OpenSession")
	_, err = t.s.CloseSession(t.ctx, s3.ID, t0.Add(time.Minute))
	t.must(err, "CloseSession")
	so, err := t.openSession(other.ID, devs[0].ID, 1, 10)
	t.must(err, "OpenSession other")

	receipt, err := t.s.DeleteAccount(t.ctx, acct.ID)
	t.must(err, "DeleteAccount")
	want := map[string]int64{store.TableAccounts: 1, store.TableAccessTokens: 3, store.TableBindings: 2, store.TableSessions: 2}
	if !receiptEqual(receipt, want) {
		t.Fatalf("DeleteAccount receipt %v, want %v", receipt, want)
	}
	_, err = t.s.AccountByID(t.ctx, acct.ID)
	t.wantErr(err, store.ErrNotFound, "AccountByID after delete")
	_, err = t.s.AccountByName(t.ctx, acct.NameIndex)
	t.wantErr(err, store.ErrNotFound, "AccountByName after delete")
	for _, tok := range tokens {
		_, err = t.s.AccountByToken(t.ctx, tok, t0)
		t.wantErr(err, store.ErrNotFound, "AccountByToken after delete")
	}
	bd, err := t.s.BoundDevices(t.ctx, acct.ID)
	t.must(err, "BoundDevices")
	if len(bd) != 0 {
		t.Fatalf("%d devices still bound to a deleted account", len(bd))
	}
	for _, s := range []store.Session{s1, s2} {
		got, err := t.s.SessionByID(t.ctx, s.ID)
		if err == nil && got.ClosedAt.IsZero() {
			t.Fatalf("session %s still open after DeleteAccount", s.ID)
		}
		// Its client key is free again.
		t.must(t.s.ReserveKey(t.ctx, s.ClientKey, store.OwnerGateway), "reserving a deleted account's session key")
	}
	// The other account is untouched.
	if _, err := t.s.AccountByToken(t.ctx, otherTok, t0); err != nil {
		t.Fatalf("other account's token: %v", err)
	}
	if ok, _ := t.s.IsBound(t.ctx, other.ID, devs[0].ID); !ok {
		t.Fatal("other account's binding removed")
	}
	if got, err := t.s.SessionByID(t.ctx, so.ID); err != nil || !got.ClosedAt.IsZero() {
		t.Fatalf("other account's session: %+v, %v", got, err)
	}
	// The name may be used again.
	_, err = t.s.CreateAccount(t.ctx, store.Account{NameIndex: acct.NameIndex, SealedName: []byte("new"), PasswordHash: "h"})
	t.must(err, "re-creating a deleted account's name")
}

// --- connection log ---

func testConnLog(t *h) {
	p1, p2, p3 := pseudonym(), pseudonym(), pseudonym()
	entries := []store.ConnLogEntry{
		{Time: t0.Add(2 * time.Minute), Event: "logout", Outcome: "ok", Pseudonym: p1},
		{Time: t0, Event: "login", Outcome: "ok", Pseudonym: p1, SourcePrefix: "198.51.100.0/24"},
		{Time: t0.Add(time.Minute), Event: "login", Outcome: "bad_credentials", Pseudonym: p2, SourcePrefix: "2001:db8:1::/48"},
		{Time: t0.Add(90 * time.Second), Event: "session_open", Outcome: "ok", Pseudonym: p3},
	}
	t.must(t.s.AppendConnLog(t.ctx, entries), "AppendConnLog")
	t.must(t.s.AppendConnLog(t.ctx, nil), "AppendConnLog(nil)")
	t.wantErr(t.s.AppendConnLog(t.ctx, []store.ConnLogEntry{{Time: t0, Outcome: "ok", Pseudonym: p1}}), privacy.ErrInvalid, "entry without event")
	// A full source address never reaches the log: only truncated prefixes.
	for _, raw := range []string{"198.51.100.7", "198.51.100.7/32", "198.51.100.7/24", "2001:db8::1/128", "2001:db8:1::/64"} {
		bad := []store.ConnLogEntry{{Time: t0, Event: "login", Outcome: "ok", Pseudonym: pseudonym()}, {Time: t0, Event: "login", Outcome: "ok", Pseudonym: p2, SourcePrefix: raw}}
		t.wantErr(t.s.AppendConnLog(t.ctx, bad), privacy.ErrInvalid, "source prefix "+raw)
		if got, err := t.s.ConnLogByPseudonyms(t.ctx, []privacy.Pseudonym{bad[0].Pseudonym}); err != nil || len(got) != 0 {
			t.Fatalf("a refused batch wrote %d entries (%v)", len(got), err)
		}
	}
	got, err := t.s.ConnLogByPseudonyms(t.ctx, []privacy.Pseudonym{p1, p3})
	t.must(err, "ConnLogByPseudonyms")
	want := []store.ConnLogEntry{entries[1], entries[3], entries[0]}
	want[1].Time = t0.Add(time.Minute) // stored truncated to the minute
	if len(got) != len(want) {
		t.Fatalf("ConnLogByPseudonyms: %d entries, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if !g.Time.Equal(w.Time) || g.Event != w.Event || g.Outcome != w.Outcome || g.Pseudonym != w.Pseudonym || g.SourcePrefix != w.SourcePrefix {
			t.Fatalf("entry %d = %+v, want %+v", i, g, w)
		}
	}
	got, err = t.s.ConnLogByPseudonyms(t.ctx, []privacy.Pseudonym{pseudonym()})
	t.must(err, "ConnLogByPseudonyms unknown")
	if len(got) != 0 {
		t.Fatalf("unknown pseudonym: %d entries", len(got))
	}
	got, err = t.s.ConnLogByPseudonyms(t.ctx, nil)
	t.must(err, "ConnLogByPseudonyms(nil)")
	if len(got) != 0 {
		t.Fatalf("no pseudonyms: %d entries", len(got))
	}
}

// --- retention ---

// pruneFixture fills one table with rows aged at the given times and says
// which of them are still there.
type pruneFixture struct {
	add   func(t *h, at time.Time) (alive func() bool)
	setup func(t *h)
}

func pruneFixtures() map[string]*pruneFixture {
	var (
		acct store.Account
		dev  store.Device
	)
	setup := func(t *h) { acct, dev = t.account(), t.enroll(1)[0] }
	return map[string]*pruneFixture{
		store.TableConnLog: {add: func(t *h, at time.Time) func() bool {
			p := pseudonym()
			t.must(t.s.AppendConnLog(t.ctx, []store.ConnLogEntry{{Time: at, Event: "login", Outcome: "ok", Pseudonym: p}}), "AppendConnLog")
			return func() bool {
				got, err := t.s.ConnLogByPseudonyms(t.ctx, []privacy.Pseudonym{p})
				t.must(err, "ConnLogByPseudonyms")
				return len(got) == 1
			}
		}},
		store.TableAuthFailures: {add: func(t *h, at time.Time) func() bool {
			idx := random[privacy.BlindIndex]()
			t.must(t.s.RecordAuthFailure(t.ctx, idx, at), "RecordAuthFailure")
			return func() bool {
				n, err := t.s.CountAuthFailures(t.ctx, idx, at.Add(-time.Hour))
				t.must(err, "CountAuthFailures")
				return n == 1
			}
		}},
		store.TableAccessTokens: {setup: setup, add: func(t *h, at time.Time) func() bool {
			tok := random[[32]byte]()
			t.must(t.s.CreateAccessToken(t.ctx, tok, acct.ID, at), "CreateAccessToken")
			return func() bool {
				_, err := t.s.AccountByToken(t.ctx, tok, at.Add(-time.Hour))
				return err == nil
			}
		}},
		store.TableBindingCodes: {setup: setup, add: func(t *h, at time.Time) func() bool {
			code := random[[32]byte]()
			t.must(t.s.CreateBindingCode(t.ctx, code, dev.ID, at), "CreateBindingCode")
			return func() bool {
				// Creating the same code again conflicts only while it exists.
				// (Checked last: a pruned code is re-created here.)
				err := t.s.CreateBindingCode(t.ctx, code, dev.ID, at)
				if err != nil && !errors.Is(err, store.ErrConflict) {
					t.Fatalf("CreateBindingCode: %v", err)
				}
				return err != nil
			}
		}},
		store.TableDeviceTokens: {add: func(t *h, at time.Time) func() bool {
			d := t.enroll(1)[0]
			a := admission(d.ID, 1, 1000)
			a.TokenExpires = at
			_, err := t.s.Admit(t.ctx, a)
			t.must(err, "Admit")
			return func() bool {
				_, err := t.s.DeviceByToken(t.ctx, a.TokenHash, at.Add(-time.Hour))
				return err == nil
			}
		}},
		store.TableSessions: {setup: func(t *h) { setup(t); t.bind(acct.ID, dev.ID) }, add: func(t *h, at time.Time) func() bool {
			s, err := t.openSession(acct.ID, dev.ID, 1, 1000)
			t.must(err, "OpenSession")
			_, err = t.s.CloseSession(t.ctx, s.ID, at)
			t.must(err, "CloseSession")
			return func() bool {
				_, err := t.s.SessionByID(t.ctx, s.ID)
				return err == nil
			}
		}},
	}
}

func testPruneBounds(t *h) {
	before := t0
	for table, fx := range pruneFixtures() {
		t.Run(table, func(tt *testing.T) {
			t := &h{T: tt, s: t.s, ctx: t.ctx}
			if fx.setup != nil {
				fx.setup(t)
			}
			oldest, err := t.s.OldestRecord(t.ctx, table)
			t.must(err, "OldestRecord")
			if !oldest.IsZero() {
				t.Fatalf("OldestRecord of an empty %s = %v, want zero", table, oldest)
			}
			// 25 rows older than before (t0-25m … t0-1m) and 5 not (t0 … t0+4m).
			var expired, fresh []func() bool
			for i := range 25 {
				expired = append(expired, fx.add(t, before.Add(-time.Duration(25-i)*time.Minute)))
			}
			for i := range 5 {
				fresh = append(fresh, fx.add(t, before.Add(time.Duration(i)*time.Minute)))
			}
			oldest, err = t.s.OldestRecord(t.ctx, table)
			t.must(err, "OldestRecord")
			if !oldest.Equal(before.Add(-25 * time.Minute)) {
				t.Fatalf("OldestRecord = %v, want %v", oldest, before.Add(-25*time.Minute))
			}
			n, err := t.s.Prune(t.ctx, table, before, 10)
			t.must(err, "Prune")
			if n != 10 {
				t.Fatalf("Prune(limit 10) of 25 expired rows deleted %d", n)
			}
			// Exactly 10 gone and the oldest left is the 11th: the oldest go first.
			oldest, err = t.s.OldestRecord(t.ctx, table)
			t.must(err, "OldestRecord")
			if !oldest.Equal(before.Add(-15 * time.Minute)) {
				t.Fatalf("OldestRecord after prune = %v, want %v", oldest, before.Add(-15*time.Minute))
			}
			for _, want := range []int{10, 5, 0} {
				n, err := t.s.Prune(t.ctx, table, before, 10)
				t.must(err, "Prune")
				if n != want {
					t.Fatalf("Prune deleted %d, want %d", n, want)
				}
			}
			oldest, err = t.s.OldestRecord(t.ctx, table)
			t.must(err, "OldestRecord")
			if !oldest.Equal(before) {
				t.Fatalf("OldestRecord with only unexpired rows = %v, want %v", oldest, before)
			}
			for i, alive := range fresh {
				if !alive() {
					t.Fatalf("unexpired row %d was pruned", i)
				}
			}
			for i, alive := range expired {
				if alive() {
					t.Fatalf("expired row %d survived pruning", i)
				}
			}
		})
	}
}

func testPruneOpenSessions(t *h) {
	d := t.enroll(1)[0]
	acct := t.account()
	t.bind(acct.ID, d.ID)
	old := store.Session{ID: "old-open", AccountID: acct.ID, DeviceID: d.ID, ClientKey: random[store.Key](),
		OpenedAt: t0.Add(-48 * time.Hour), ExpiresAt: t0.Add(-47 * time.Hour)}
	_, err := t.s.OpenSession(t.ctx, old, 1, 10)
	t.must(err, "OpenSession")
	oldest, err := t.s.OldestRecord(t.ctx, store.TableSessions)
	t.must(err, "OldestRecord")
	if !oldest.IsZero() {
		t.Fatalf("OldestRecord(sessions) counts an open session: %v", oldest)
	}
	n, err := t.s.Prune(t.ctx, store.TableSessions, t0.Add(time.Hour), 100)
	t.must(err, "Prune")
	if n != 0 {
		t.Fatalf("Prune deleted %d open sessions", n)
	}
	if _, err := t.s.SessionByID(t.ctx, old.ID); err != nil {
		t.Fatalf("open session pruned: %v", err)
	}
}

func testPruneUnknown(t *h) {
	for _, table := range []string{store.TableDevices, store.TableAccounts, store.TableBindings, "no_such_table"} {
		_, err := t.s.Prune(t.ctx, table, t0, 10)
		if err == nil || !strings.Contains(err.Error(), table) {
			t.Fatalf("Prune(%q): error %v, want one naming the table", table, err)
		}
		_, err = t.s.OldestRecord(t.ctx, table)
		if err == nil || !strings.Contains(err.Error(), table) {
			t.Fatalf("OldestRecord(%q): error %v, want one naming the table", table, err)
		}
	}
	_, err := t.s.Prune(t.ctx, store.TableConnLog, t0, 0)
	t.wantErr(err, privacy.ErrInvalid, "Prune with limit 0")
}

// --- subject rights ---

func (t *h) connLog(ps ...privacy.Pseudonym) {
	t.Helper()
	var rows []store.ConnLogEntry
	for _, p := range ps {
		rows = append(rows, store.ConnLogEntry{Time: t0, Event: "login", Outcome: "ok", Pseudonym: p, SourcePrefix: "198.51.100.0/24"})
	}
	t.must(t.s.AppendConnLog(t.ctx, rows), "AppendConnLog")
}

func testEraseDevice(t *h) {
	devs := t.enroll(2)
	d, other := devs[0], devs[1]
	_, err := t.s.Admit(t.ctx, admission(d.ID, 1, 10))
	t.must(err, "Admit")
	_, err = t.s.Admit(t.ctx, admission(other.ID, 1, 10))
	t.must(err, "Admit other")
	acct := t.account()
	t.bind(acct.ID, d.ID)
	t.bind(acct.ID, other.ID)
	s1, err := t.openSession(acct.ID, d.ID, 1, 10)
	t.must(err, "OpenSession")
	_, err = t.s.CloseSession(t.ctx, s1.ID, t0)
	t.must(err, "CloseSession")
	_, err = t.openSession(acct.ID, d.ID, 1, 10)
	t.must(err, "OpenSession 2")
	_, err = t.openSession(acct.ID, other.ID, 1, 10)
	t.must(err, "OpenSession other")
	t.must(t.s.CreateBindingCode(t.ctx, random[[32]byte](), d.ID, t0.Add(time.Hour)), "CreateBindingCode")
	t.must(t.s.RecordAuthFailure(t.ctx, d.Index, t0), "RecordAuthFailure")
	t.must(t.s.RecordAuthFailure(t.ctx, other.Index, t0), "RecordAuthFailure other")
	mine, theirs := pseudonym(), pseudonym()
	t.connLog(mine, mine, mine, theirs)

	sess, err := t.s.SessionsOf(t.ctx, d.ID, 0)
	t.must(err, "SessionsOf")
	if len(sess) != 2 {
		t.Fatalf("SessionsOf = %d sessions, want 2", len(sess))
	}
	if n, err := t.s.BindingCount(t.ctx, d.ID); err != nil || n != 1 {
		t.Fatalf("BindingCount = %d, %v; want 1", n, err)
	}
	receipt, err := t.s.EraseDevice(t.ctx, d.ID, []privacy.Pseudonym{mine})
	t.must(err, "EraseDevice")
	want := map[string]int64{store.TableDevices: 1, store.TableSessions: 2, store.TableBindings: 1, store.TableBindingCodes: 1,
		store.TableDeviceTokens: 1, store.TableAuthFailures: 1, store.TableConnLog: 3}
	if !receiptEqual(receipt, want) {
		t.Fatalf("EraseDevice receipt %v, want %v", receipt, want)
	}
	_, err = t.s.DeviceByID(t.ctx, d.ID)
	t.wantErr(err, store.ErrNotFound, "device after erasure")
	// The other device is untouched; its key is still reserved, the erased one's is free.
	if got, err := t.s.ConnLogByPseudonyms(t.ctx, []privacy.Pseudonym{theirs}); err != nil || len(got) != 1 {
		t.Fatalf("other subject's log rows: %d, %v", len(got), err)
	}
	if n, err := t.s.CountAuthFailures(t.ctx, other.Index, t0.Add(-time.Hour)); err != nil || n != 1 {
		t.Fatalf("other subject's auth failures: %d, %v", n, err)
	}
	if other2, err := t.s.DeviceByID(t.ctx, other.ID); err != nil || !other2.KeyPinned {
		t.Fatalf("other device after erasure: %+v, %v", other2, err)
	}
	_, err = t.s.EraseDevice(t.ctx, d.ID, nil)
	t.wantErr(err, store.ErrNotFound, "EraseDevice twice")
}

func testEraseAccount(t *h) {
	d := t.enroll(1)[0]
	acct, other := t.account(), t.account()
	t.bind(acct.ID, d.ID)
	t.bind(other.ID, d.ID)
	t.must(t.s.CreateAccessToken(t.ctx, random[[32]byte](), acct.ID, t0.Add(time.Hour)), "CreateAccessToken")
	_, err := t.openSession(acct.ID, d.ID, 1, 10)
	t.must(err, "OpenSession")
	_, err = t.openSession(other.ID, d.ID, 1, 10)
	t.must(err, "OpenSession other")
	t.must(t.s.RecordAuthFailure(t.ctx, acct.NameIndex, t0), "RecordAuthFailure")
	mine := pseudonym()
	t.connLog(mine, mine, pseudonym())
	receipt, err := t.s.EraseAccount(t.ctx, acct.ID, []privacy.Pseudonym{mine})
	t.must(err, "EraseAccount")
	want := map[string]int64{store.TableAccounts: 1, store.TableSessions: 1, store.TableBindings: 1, store.TableAccessTokens: 1,
		store.TableAuthFailures: 1, store.TableConnLog: 2}
	if !receiptEqual(receipt, want) {
		t.Fatalf("EraseAccount receipt %v, want %v", receipt, want)
	}
	if ok, _ := t.s.IsBound(t.ctx, other.ID, d.ID); !ok {
		t.Fatal("EraseAccount removed another account's binding")
	}
	_, err = t.s.EraseAccount(t.ctx, acct.ID, nil)
	t.wantErr(err, store.ErrNotFound, "EraseAccount twice")
}

func testMeta(t *h) {
	v, err := t.s.Meta(t.ctx, "keystore_id")
	t.must(err, "Meta")
	if v != "" {
		t.Fatalf("Meta of an unset key = %q", v)
	}
	t.must(t.s.SetMeta(t.ctx, "keystore_id", "a"), "SetMeta")
	t.must(t.s.SetMeta(t.ctx, "keystore_id", "b"), "SetMeta again")
	if v, _ := t.s.Meta(t.ctx, "keystore_id"); v != "b" {
		t.Fatalf("Meta = %q, want b", v)
	}
	t.must(t.s.Ping(t.ctx), "Ping")
}

// testUpgradeVerifiers: nothing is rewritten unless the store says it holds
// version-1 verifiers; then every row is rewritten exactly once.
func testUpgradeVerifiers(t *h) {
	batch := []store.Enrollment{enrollment(), enrollment(), enrollment()}
	_, err := t.s.EnrollDevices(t.ctx, batch)
	t.must(err, "EnrollDevices")
	var mu sync.Mutex // the store may call upgrade from several goroutines
	calls := 0
	upgrade := func(v privacy.Verifier) privacy.Verifier {
		mu.Lock()
		defer mu.Unlock()
		calls++
		return privacy.Verifier(sha256.Sum256(v[:]))
	}
	n, err := t.s.UpgradeVerifiers(t.ctx, upgrade)
	t.must(err, "UpgradeVerifiers on a current store")
	if n != 0 {
		t.Fatalf("UpgradeVerifiers rewrote %d rows of a store without version-1 verifiers", n)
	}
	for _, e := range batch {
		d, err := t.s.DeviceByIndex(t.ctx, e.Index)
		t.must(err, "DeviceByIndex")
		if d.Verifier != e.Verifier {
			t.Fatal("a current verifier was rewritten")
		}
	}

	t.must(t.s.SetMeta(t.ctx, "verifier_version", "1"), "SetMeta")
	n, err = t.s.UpgradeVerifiers(t.ctx, upgrade)
	t.must(err, "UpgradeVerifiers")
	if n != len(batch) || calls != len(batch) {
		t.Fatalf("UpgradeVerifiers rewrote %d rows with %d calls, want %d", n, calls, len(batch))
	}
	for i, e := range batch {
		d, err := t.s.DeviceByIndex(t.ctx, e.Index)
		t.must(err, "DeviceByIndex")
		if want := privacy.Verifier(sha256.Sum256(e.Verifier[:])); d.Verifier != want {
			t.Fatalf("device %d: verifier not upgraded", i)
		}
	}
	if v, _ := t.s.Meta(t.ctx, "verifier_version"); v != "2" {
		t.Fatalf("verifier_version = %q after the upgrade, want 2", v)
	}
	n, err = t.s.UpgradeVerifiers(t.ctx, upgrade)
	t.must(err, "UpgradeVerifiers again")
	if n != 0 || calls != len(batch) {
		t.Fatalf("a second UpgradeVerifiers rewrote %d rows", n)
	}
}

// --- admission storms ---

// Sizes of AdmitStorm.
const (
	stormDevices = 500
	stormWorkers = 64
	stormFirst   = 1
	stormLast    = 4000
)

// stormKind is what one storm admission is made to do.
type stormKind int

const (
	stormFresh        stormKind = iota // first login with a fresh key: succeeds
	stormRepeat                        // already admitted, same key: succeeds, offset kept
	stormRekey                         // already admitted, ReplaceKey with a fresh key: succeeds, offset kept
	stormOthersKey                     // key pinned by another device: ErrKeyInUse
	stormRevoked                       // revoked device: ErrRevoked
	stormPinned                        // already admitted, another key without ReplaceKey: ErrKeyPinned
	stormRekeyToTaken                  // already admitted, ReplaceKey with another device's key: ErrKeyInUse, old key kept
	stormPair                          // two storm devices with the same fresh key: exactly one succeeds
)

// stormCase is one device of the storm.
type stormCase struct {
	kind   stormKind
	before store.Device // before the storm
	prev   [32]byte     // token of the admission before the storm, if any
	a      store.Admission
	pair   int // stormPair: index of the other device of the pair
	got    store.Device
	err    error
}

func (c *stormCase) wantErr() error {
	switch c.kind {
	case stormOthersKey, stormRekeyToTaken:
		return store.ErrKeyInUse
	case stormRevoked:
		return store.ErrRevoked
	case stormPinned:
		return store.ErrKeyPinned
	}
	return nil
}

// AdmitStorm admits 500 enrolled devices into s from 64 goroutines at once
// (the first logins of a boot storm, with repeat logins and rekeys among
// them). About a tenth are made to fail: keys pinned by other devices (also
// as the target of a rekey, which must keep the old key), revoked devices,
// another key without ReplaceKey, and pairs of devices racing for one key.
// It checks that exactly those fail, each with its own sentinel, that the
// others succeed with distinct offsets, and that a failed admission wrote
// nothing. It returns a read-only check of everything the storm left in a
// store, to run again on the same database reopened (durability).
func AdmitStorm(t *testing.T, s store.Store) func(*testing.T, store.Store) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return (&h{T: t, s: s, ctx: ctx}).admitStorm()
}

func testAdmitStorm(t *h) { t.admitStorm()(t.T, t.s) }

func (t *h) admitStorm() func(*testing.T, store.Store) {
	t.Helper()
	// Devices outside the storm whose keys the storm tries to take.
	others := t.enroll(15)
	otherAdm := make([]store.Admission, len(others))
	for i, d := range others {
		otherAdm[i] = admission(d.ID, stormFirst, stormLast)
		got, err := t.s.Admit(t.ctx, otherAdm[i])
		t.must(err, "Admit before the storm")
		others[i] = got
	}
	devs := t.enroll(stormDevices)
	cases := make([]*stormCase, len(devs))
	order := mrand.Perm(len(devs)) // kinds spread at random over the devices
	kinds := []struct {
		kind stormKind
		n    int
	}{{stormOthersKey, 15}, {stormRevoked, 15}, {stormPinned, 10}, {stormRekeyToTaken, 5}, {stormPair, 10}, {stormRepeat, 10}, {stormRekey, 10}}
	next := 0
	for _, k := range kinds {
		for range k.n {
			i := order[next]
			next++
			cases[i] = &stormCase{kind: k.kind}
		}
	}
	var pairKey store.Key
	lastPair := -1
	for i, c := range cases {
		if c == nil {
			c = &stormCase{kind: stormFresh}
			cases[i] = c
		}
		d := devs[i]
		switch c.kind {
		case stormRepeat, stormRekey, stormPinned, stormRekeyToTaken:
			pre := admission(d.ID, stormFirst, stormLast)
			got, err := t.s.Admit(t.ctx, pre)
			t.must(err, "Admit before the storm")
			d, c.prev = got, pre.TokenHash
		case stormRevoked:
			t.must(t.s.RevokeDevice(t.ctx, d.ID), "RevokeDevice")
			d = t.device(d.ID)
		}
		c.before = d
		c.a = admission(d.ID, stormFirst, stormLast)
		c.a.Day = "2030-01-03"
		switch c.kind {
		case stormRepeat:
			c.a.Key = d.Key
		case stormRekey:
			c.a.ReplaceKey = true
		case stormOthersKey:
			c.a.Key = otherAdm[i%len(otherAdm)].Key
		case stormRekeyToTaken:
			c.a.Key, c.a.ReplaceKey = otherAdm[i%len(otherAdm)].Key, true
		case stormPair:
			if lastPair < 0 {
				pairKey, lastPair = random[store.Key](), i
			} else {
				c.pair, cases[lastPair].pair, lastPair = lastPair, i, -1
			}
			c.a.Key = pairKey
		}
	}

	// The storm.
	jobs := make(chan int, len(cases))
	for _, i := range mrand.Perm(len(cases)) {
		jobs <- i
	}
	close(jobs)
	var wg sync.WaitGroup
	for range stormWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				cases[i].got, cases[i].err = t.s.Admit(t.ctx, cases[i].a)
			}
		}()
	}
	wg.Wait()

	// Every outcome.
	failed := 0
	for i, c := range cases {
		switch want := c.wantErr(); {
		case c.kind == stormPair:
			o := cases[c.pair]
			if (c.err == nil) == (o.err == nil) {
				t.Fatalf("devices %d and %d raced for one key: errors %v and %v, want exactly one to succeed", c.before.ID, o.before.ID, c.err, o.err)
			}
			if c.err != nil && !errors.Is(c.err, store.ErrKeyInUse) {
				t.Fatalf("device %d lost the race for a key: error %v, want %v", c.before.ID, c.err, store.ErrKeyInUse)
			}
		case want != nil:
			if !errors.Is(c.err, want) {
				t.Fatalf("storm device %d (kind %d): error %v, want %v", i, c.kind, c.err, want)
			}
		case c.err != nil:
			t.Fatalf("storm device %d (kind %d): %v", i, c.kind, c.err)
		}
		if c.err != nil {
			failed++
			continue
		}
		if !c.got.KeyPinned || c.got.Key != c.a.Key || c.got.LastLoginDay != c.a.Day || c.got.ID != c.a.DeviceID {
			t.Fatalf("storm device %d: admitted as %+v for %+v", i, c.got, c.a)
		}
		if c.before.Offset != 0 && c.got.Offset != c.before.Offset {
			t.Fatalf("storm device %d: offset %d changed to %d", i, c.before.Offset, c.got.Offset)
		}
	}
	if want := 15 + 15 + 10 + 5 + 5; failed != want {
		t.Fatalf("%d admissions failed, want %d", failed, want)
	}
	// A failed admission left its key free, or (rekey to a taken key) kept
	// the device's old key claimed.
	for _, c := range cases {
		switch c.kind {
		case stormRevoked, stormPinned:
			t.must(t.s.ReserveKey(t.ctx, c.a.Key, store.OwnerGateway), "ReserveKey of a failed admission's fresh key")
		case stormRekeyToTaken:
			t.wantErr(t.s.ReserveKey(t.ctx, c.before.Key, store.OwnerGateway), store.ErrKeyInUse, "ReserveKey of the key kept by a failed rekey")
		}
	}

	return func(tt *testing.T, s store.Store) {
		tt.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		t := &h{T: tt, s: s, ctx: ctx}
		want := map[int64]store.Device{} // the admitted devices
		for _, d := range others {
			want[d.ID] = d
		}
		for i, c := range cases {
			d := t.device(c.before.ID)
			switch {
			case c.err == nil:
				if !sameDevice(d, c.got) {
					t.Fatalf("storm device %d: stored %+v, Admit returned %+v", i, d, c.got)
				}
				tok, err := t.s.DeviceByToken(t.ctx, c.a.TokenHash, t0)
				t.must(err, "token of a storm admission")
				if tok.ID != d.ID {
					t.Fatalf("storm device %d: its token finds device %d", i, tok.ID)
				}
			default:
				if !sameDevice(d, c.before) {
					t.Fatalf("storm device %d: failed admission (%v) changed it: %+v -> %+v", i, c.err, c.before, d)
				}
				_, err := t.s.DeviceByToken(t.ctx, c.a.TokenHash, t0)
				t.wantErr(err, store.ErrNotFound, "token of a failed storm admission")
				if c.prev != ([32]byte{}) {
					_, err := t.s.DeviceByToken(t.ctx, c.prev, t0)
					t.must(err, "token from before a failed storm admission")
				}
			}
			if d.KeyPinned && !d.Revoked && d.Offset != 0 {
				want[d.ID] = d
			}
			if c.before.KeyPinned && c.kind == stormRekey {
				_, err := t.s.DeviceByKey(t.ctx, c.before.Key)
				t.wantErr(err, store.ErrNotFound, "DeviceByKey of a key replaced in the storm")
			}
		}
		ad, err := t.s.AdmittedDevices(t.ctx)
		t.must(err, "AdmittedDevices")
		if len(ad) != len(want) {
			t.Fatalf("AdmittedDevices: %d, want %d", len(ad), len(want))
		}
		offsets := map[uint32]int64{}
		keys := map[store.Key]int64{}
		for _, d := range ad {
			if w, ok := want[d.ID]; !ok || !sameDevice(d, w) {
				t.Fatalf("AdmittedDevices lists %+v, want %+v", d, w)
			}
			if d.Offset < stormFirst || d.Offset > stormLast {
				t.Fatalf("device %d: offset %d outside [%d, %d]", d.ID, d.Offset, stormFirst, stormLast)
			}
			if o, dup := offsets[d.Offset]; dup {
				t.Fatalf("offset %d held by devices %d and %d", d.Offset, o, d.ID)
			}
			if o, dup := keys[d.Key]; dup {
				t.Fatalf("key pinned by devices %d and %d", o, d.ID)
			}
			offsets[d.Offset], keys[d.Key] = d.ID, d.ID
		}
	}
}

// testAdmitOverflow admits, all at once, more devices than the pool has free
// offsets (the free ones partly in gaps): exactly as many as fit succeed,
// taking exactly the free offsets; the others get ErrExhausted and nothing
// of theirs is written, their keys included.
func testAdmitOverflow(t *h) {
	const first, last, n = 1, 30, 40
	devs := t.enroll(10 + n)
	used := map[uint32]bool{}
	for i, d := range devs[:10] {
		off := uint32(2 * (i + 1)) // 2, 4, ..., 20: gaps below the top
		_, err := t.s.Admit(t.ctx, admission(d.ID, off, off))
		t.must(err, "Admit at a fixed offset")
		used[off] = true
	}
	free := map[uint32]bool{}
	for off := uint32(first); off <= last; off++ {
		if !used[off] {
			free[off] = true
		}
	}
	storm := devs[10:]
	adm := make([]store.Admission, n)
	got := make([]store.Device, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, d := range storm {
		adm[i] = admission(d.ID, first, last)
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			got[i], errs[i] = t.s.Admit(t.ctx, adm[i])
		}()
	}
	close(start)
	wg.Wait()
	taken := map[uint32]int64{}
	for i, d := range storm {
		if errs[i] != nil {
			t.wantErr(errs[i], store.ErrExhausted, "admission beyond the pool")
			if now := t.device(d.ID); !sameDevice(now, d) {
				t.Fatalf("exhausted admission wrote something: %+v -> %+v", d, now)
			}
			_, err := t.s.DeviceByToken(t.ctx, adm[i].TokenHash, t0)
			t.wantErr(err, store.ErrNotFound, "token of an exhausted admission")
			t.must(t.s.ReserveKey(t.ctx, adm[i].Key, store.OwnerGateway), "key of an exhausted admission is free")
			continue
		}
		if !free[got[i].Offset] {
			t.Fatalf("device %d got offset %d, not a free one", d.ID, got[i].Offset)
		}
		if o, dup := taken[got[i].Offset]; dup {
			t.Fatalf("offset %d given to devices %d and %d", got[i].Offset, o, d.ID)
		}
		taken[got[i].Offset] = d.ID
		if now := t.device(d.ID); !sameDevice(now, got[i]) {
			t.Fatalf("stored %+v, Admit returned %+v", now, got[i])
		}
	}
	if len(taken) != len(free) {
		t.Fatalf("%d admissions succeeded, want %d (the free offsets)", len(taken), len(free))
	}
}

// testCheckpoint: Checkpoint succeeds after writes and deletions (and is a
// no-op where the backend keeps no log file) and the data stays readable.
func testCheckpoint(t *h) {
	devs := t.enroll(2)
	_, err := t.s.EraseDevice(t.ctx, devs[0].ID, nil)
	t.must(err, "EraseDevice")
	t.must(t.s.Checkpoint(t.ctx), "Checkpoint")
	t.must(t.s.Checkpoint(t.ctx), "Checkpoint again")
	_, err = t.s.DeviceByID(t.ctx, devs[1].ID)
	t.must(err, "DeviceByID after Checkpoint")
	_, err = t.s.DeviceByID(t.ctx, devs[0].ID)
	t.wantErr(err, store.ErrNotFound, "erased device after Checkpoint")
}

// testGateways: a heartbeat inserts a gateway's record, the next replaces
// it (same instance, new key, endpoint and times); bad records are refused
// with the field named and write nothing.
func testGateways(t *h) {
	gs, err := t.s.Gateways(t.ctx)
	t.must(err, "Gateways")
	if len(gs) != 0 {
		t.Fatalf("Gateways of an empty store: %+v", gs)
	}
	a := store.Gateway{InstanceID: "gw-b", PublicKey: random[store.Key](), Endpoint: "198.51.100.7:51820",
		StartedAt: t0, HeartbeatAt: t0.Add(time.Second)}
	b := store.Gateway{InstanceID: "gw-a", PublicKey: random[store.Key](), StartedAt: t0, HeartbeatAt: t0}
	t.must(t.s.Heartbeat(t.ctx, a), "Heartbeat a")
	t.must(t.s.Heartbeat(t.ctx, b), "Heartbeat b")
	a2 := a
	a2.PublicKey, a2.Endpoint, a2.StartedAt, a2.HeartbeatAt = random[store.Key](), "gw.example.net:51999", t0.Add(time.Hour), t0.Add(time.Hour+time.Second)
	t.must(t.s.Heartbeat(t.ctx, a2), "Heartbeat a again")
	gs, err = t.s.Gateways(t.ctx)
	t.must(err, "Gateways")
	same := func(x, y store.Gateway) bool {
		return x.InstanceID == y.InstanceID && x.PublicKey == y.PublicKey && x.Endpoint == y.Endpoint &&
			x.StartedAt.Equal(y.StartedAt) && x.HeartbeatAt.Equal(y.HeartbeatAt)
	}
	if len(gs) != 2 || !same(gs[0], b) || !same(gs[1], a2) {
		t.Fatalf("Gateways = %+v, want [%+v %+v]", gs, b, a2)
	}
	for name, mut := range map[string]func(*store.Gateway){
		"instance_id":  func(g *store.Gateway) { g.InstanceID = "" },
		"public_key":   func(g *store.Gateway) { g.PublicKey = store.Key{} },
		"heartbeat_at": func(g *store.Gateway) { g.HeartbeatAt = time.Time{} },
	} {
		bad := store.Gateway{InstanceID: "gw-bad", PublicKey: random[store.Key](), StartedAt: t0, HeartbeatAt: t0}
		mut(&bad)
		err := t.s.Heartbeat(t.ctx, bad)
		t.wantErr(err, privacy.ErrInvalid, "Heartbeat with a bad "+name)
		if !strings.Contains(err.Error(), name) {
			t.Fatalf("Heartbeat with a bad %s: %v does not name it", name, err)
		}
	}
	gs, err = t.s.Gateways(t.ctx)
	t.must(err, "Gateways")
	if len(gs) != 2 {
		t.Fatalf("refused heartbeats wrote something: %+v", gs)
	}
}

// testClaimMeta: of many concurrent claims of one key exactly one value
// wins, every claimer is told that value, and a later claim keeps it.
func testClaimMeta(t *h) {
	const n = 8
	got := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { got[i], errs[i] = t.s.ClaimMeta(t.ctx, "keystore_id", fmt.Sprintf("ks-%d", i)) })
	}
	wg.Wait()
	for i := range n {
		t.must(errs[i], "ClaimMeta")
		if got[i] != got[0] || !strings.HasPrefix(got[0], "ks-") {
			t.Fatalf("claims saw %q: want one winner for all", got)
		}
	}
	v, err := t.s.ClaimMeta(t.ctx, "keystore_id", "late")
	t.must(err, "ClaimMeta")
	stored, err := t.s.Meta(t.ctx, "keystore_id")
	t.must(err, "Meta")
	if v != got[0] || stored != got[0] {
		t.Fatalf("after a late claim: %q, stored %q; want the winner %q", v, stored, got[0])
	}
}

// testErasures: recorded erasures are listed by tombstone; a tombstone
// recorded again (by another gateway) keeps its row unless erased later,
// which moves its time; bad rows are refused, naming the field, and
// nothing of their batch is written.
func testErasures(t *h) {
	es, err := t.s.Erasures(t.ctx)
	t.must(err, "Erasures empty")
	if len(es) != 0 {
		t.Fatalf("new store has erasures %v", es)
	}
	a := store.Erasure{Tombstone: [32]byte{2}, Kind: store.ErasedDevice, SealedIndex: []byte("sealed-a"), ErasedAt: t0}
	b := store.Erasure{Tombstone: [32]byte{1}, Kind: store.ErasedAccount, SealedIndex: []byte("sealed-b"), ErasedAt: t0.Add(time.Hour)}
	t.must(t.s.RecordErasures(t.ctx, []store.Erasure{a, b}), "RecordErasures")
	older := a
	older.SealedIndex, older.ErasedAt = []byte("older"), t0.Add(-time.Hour)
	t.must(t.s.RecordErasures(t.ctx, []store.Erasure{older}), "RecordErasures older")
	es, err = t.s.Erasures(t.ctx)
	t.must(err, "Erasures")
	if len(es) != 2 || es[0].Tombstone != b.Tombstone || es[1].Tombstone != a.Tombstone ||
		string(es[1].SealedIndex) != "sealed-a" || !es[1].ErasedAt.Equal(t0) || es[0].Kind != store.ErasedAccount || !es[0].ErasedAt.Equal(b.ErasedAt) {
		t.Fatalf("Erasures = %+v", es)
	}
	later := a
	later.SealedIndex, later.ErasedAt = []byte("later"), t0.Add(2*time.Hour)
	t.must(t.s.RecordErasures(t.ctx, []store.Erasure{later}), "RecordErasures later")
	es, err = t.s.Erasures(t.ctx)
	t.must(err, "Erasures")
	if len(es) != 2 || string(es[1].SealedIndex) != "later" || !es[1].ErasedAt.Equal(later.ErasedAt) {
		t.Fatalf("Erasures after a later erasure = %+v", es)
	}
	bad := store.Erasure{Tombstone: [32]byte{3}, Kind: "robot", SealedIndex: []byte("x"), ErasedAt: t0}
	ok := store.Erasure{Tombstone: [32]byte{4}, Kind: store.ErasedDevice, SealedIndex: []byte("x"), ErasedAt: t0}
	if err := t.s.RecordErasures(t.ctx, []store.Erasure{ok, bad}); err == nil || !strings.Contains(err.Error(), "kind") {
		t.Fatalf("RecordErasures with a bad kind: %v", err)
	}
	if es, _ := t.s.Erasures(t.ctx); len(es) != 2 {
		t.Fatalf("a refused batch wrote %d rows", len(es)-2)
	}
}
