package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func key32() (k [32]byte) {
	_, _ = rand.Read(k[:])
	return k
}

func openInternal(t *testing.T, path string) *SQLite {
	t.Helper()
	s, err := OpenSQLite(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func enrollInternal(t *testing.T, s *SQLite, n int) []int64 {
	t.Helper()
	ctx := context.Background()
	batch := make([]Enrollment, n)
	for i := range batch {
		batch[i] = Enrollment{Index: key32(), SealedSerial: []byte("sealed"), Verifier: key32()}
	}
	if _, err := s.EnrollDevices(ctx, batch); err != nil {
		t.Fatal(err)
	}
	ids := make([]int64, n)
	for i, e := range batch {
		d, err := s.DeviceByIndex(ctx, e.Index)
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = d.ID
	}
	return ids
}

func adm(id int64, first, last uint32) Admission {
	return Admission{DeviceID: id, Key: key32(), First: first, Last: last, Day: "2030-01-02", TokenHash: key32(), TokenExpires: time.Now().Add(time.Hour), Gateway: "gw-test"}
}

// TestAdmitBatchSavepoints runs one hand-made batch in one transaction:
// each failing admission (of every kind, including one that fails after
// writing) rolls back only itself and gets its own error, later admissions
// see the earlier ones (a key claimed, offsets taken, a repeat login), the
// requests whose callers left are skipped, and the rest is committed
// (checked after reopening).
func TestAdmitBatchSavepoints(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	path := filepath.Join(t.TempDir(), "registry.db")
	s := openInternal(t, path)
	defer func() { _ = s.Close() }()
	ids := enrollInternal(t, s, 9)
	devA, devB, devC, devD, devE, devP, devR, devX, devY := ids[0], ids[1], ids[2], ids[3], ids[4], ids[5], ids[6], ids[7], ids[8]
	pre := adm(devP, 10, 10)
	if _, err := s.Admit(ctx, pre); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeDevice(ctx, devR); err != nil {
		t.Fatal(err)
	}
	before := map[int64]Device{}
	for _, id := range ids {
		d, err := s.DeviceByID(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		before[id] = d
	}

	a := adm(devA, 1, 3)
	stolen := adm(devB, 1, 3)
	stolen.Key = a.Key
	pinned := adm(devP, 1, 3)
	c, d := adm(devC, 1, 3), adm(devD, 1, 3)
	overflow := adm(devE, 1, 3)
	again := adm(devA, 1, 3)
	again.Key, again.Day = a.Key, "2030-01-03"
	rekeyToTaken := adm(devP, 1, 3)
	rekeyToTaken.Key, rekeyToTaken.ReplaceKey = a.Key, true
	gone, cancelGone := context.WithCancel(ctx)
	cancelGone()
	type step struct {
		a     Admission
		ctx   context.Context
		state int32
		want  error // nil: succeeds
		off   uint32
	}
	steps := []step{
		{a: a, off: 1},
		{a: stolen, want: ErrKeyInUse}, // key claimed earlier in the batch
		{a: adm(devR, 1, 3), want: ErrRevoked},
		{a: pinned, want: ErrKeyPinned},
		{a: adm(424242, 1, 3), want: ErrNotFound},
		{a: c, off: 2},
		{a: adm(devX, 1, 3), state: reqCancelled}, // caller left while queued
		{a: adm(devY, 1, 3), ctx: gone},           // caller leaving: its context has ended
		{a: d, off: 3},
		{a: overflow, want: ErrExhausted},    // fails after claiming its key
		{a: again, off: 1},                   // repeat login of A in the same batch
		{a: rekeyToTaken, want: ErrKeyInUse}, // fails after releasing P's old key
	}
	batch := make([]*admitReq, len(steps))
	for i, st := range steps {
		rctx := st.ctx
		if rctx == nil {
			rctx = ctx
		}
		batch[i] = &admitReq{ctx: rctx, a: st.a, done: make(chan struct{})}
		batch[i].state.Store(st.state)
	}
	var ran []int
	s.aq.onBatch = func(n int) { ran = append(ran, n) }
	s.admitBatch(batch)
	if len(ran) != 1 || ran[0] != len(steps)-2 {
		t.Fatalf("batches ran %v, want one of %d admissions", ran, len(steps)-2)
	}
	for i, st := range steps {
		r := batch[i]
		if st.state == reqCancelled || st.ctx != nil {
			select {
			case <-r.done:
				t.Fatalf("step %d: a request whose caller left was run: %v", i, r.err)
			default:
			}
			continue
		}
		<-r.done
		switch {
		case st.want != nil:
			if !errors.Is(r.err, st.want) {
				t.Fatalf("step %d: error %v, want %v", i, r.err, st.want)
			}
		case r.err != nil:
			t.Fatalf("step %d: %v", i, r.err)
		case r.d.Offset != st.off || r.d.Key != st.a.Key || r.d.LastLoginDay != st.a.Day:
			t.Fatalf("step %d: admitted %+v, want offset %d", i, r.d, st.off)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openInternal(t, path)
	for _, want := range []struct {
		id  int64
		key [32]byte
		off uint32
		tok [32]byte
	}{{devA, a.Key, 1, again.TokenHash}, {devC, c.Key, 2, c.TokenHash}, {devD, d.Key, 3, d.TokenHash}, {devP, pre.Key, 10, pre.TokenHash}} {
		got, err := s.DeviceByID(ctx, want.id)
		if err != nil {
			t.Fatal(err)
		}
		if got.Key != want.key || got.Offset != want.off {
			t.Fatalf("device %d after reopen: %+v, want offset %d", want.id, got, want.off)
		}
		if tok, err := s.DeviceByToken(ctx, want.tok, time.Now()); err != nil || tok.ID != want.id {
			t.Fatalf("token of device %d after reopen: %v, %v", want.id, tok.ID, err)
		}
	}
	for _, id := range []int64{devB, devE, devR, devX, devY} {
		got, err := s.DeviceByID(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if b := before[id]; got.KeyPinned != b.KeyPinned || got.Offset != b.Offset || got.LastLoginDay != b.LastLoginDay {
			t.Fatalf("device %d changed by a failed or skipped admission: %+v -> %+v", id, b, got)
		}
	}
	if _, err := s.DeviceByToken(ctx, a.TokenHash, time.Now()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("A's first token after its repeat login in the batch: %v, want ErrNotFound", err)
	}
	// The exhausted admission's key was claimed, then rolled back.
	if err := s.ReserveKey(ctx, overflow.Key, OwnerGateway); err != nil {
		t.Fatalf("key of the exhausted admission: %v", err)
	}
	// The failed rekey had released P's key, then rolled back.
	if err := s.ReserveKey(ctx, pre.Key, OwnerGateway); !errors.Is(err, ErrKeyInUse) {
		t.Fatalf("P's key after its failed rekey: %v, want ErrKeyInUse", err)
	}
}

// TestAdmitGroupCommit: admissions that queue while the writer is busy run
// together in one transaction.
func TestAdmitGroupCommit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := openInternal(t, filepath.Join(t.TempDir(), "registry.db"))
	defer func() { _ = s.Close() }()
	const n = 64
	ids := enrollInternal(t, s, n)
	var (
		mu      sync.Mutex
		batches []int
	)
	s.aq.onBatch = func(ran int) {
		mu.Lock()
		defer mu.Unlock()
		batches = append(batches, ran)
	}

	// Hold the write lock from another connection: the first batch waits
	// for it and the rest queue up behind.
	other, err := sql.Open("sqlite", s.Path()+"?_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	tx, err := other.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec("UPDATE devices SET last_login_day = '' WHERE 0"); err != nil {
		t.Fatal(err)
	}
	queued := func() int {
		s.aq.mu.Lock()
		defer s.aq.mu.Unlock()
		return len(s.aq.q)
	}
	waitQueued := func(want int) bool {
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if queued() == want {
				return true
			}
		}
		return false
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	admit := func(i int) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.Admit(ctx, adm(ids[i], 1, 1000))
		}()
	}
	// The first admission is taken at once and its batch waits for the
	// lock; the others queue behind it.
	admit(0)
	for deadline := time.Now().Add(10 * time.Second); (queued() != 0 || s.w.Stats().InUse == 0) && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	for i := 1; i < n; i++ {
		admit(i)
	}
	ok := waitQueued(n - 1)
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("admission %d: %v", i, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if !ok || len(batches) != 2 || batches[0] != 1 || batches[1] != n-1 {
		t.Fatalf("%d queued behind the writer (all: %v); batches %v, want [1 %d]", queued(), ok, batches, n-1)
	}
}

func TestAdmitQueueTakesAtMostABatch(t *testing.T) {
	q := newAdmitQueue()
	for range 300 {
		if !q.push(&admitReq{}) {
			t.Fatal("push refused before close")
		}
	}
	var sizes []int
	for range 10 {
		b, closed := q.take(maxAdmitBatch)
		if closed {
			t.Fatal("closed before close")
		}
		if len(b) == 0 {
			break
		}
		sizes = append(sizes, len(b))
	}
	if len(sizes) != 3 || sizes[0] != maxAdmitBatch || sizes[1] != maxAdmitBatch || sizes[2] != 300-2*maxAdmitBatch {
		t.Fatalf("batches of %v", sizes)
	}
	close(q.exited) // no loop runs this queue
	q.close()
	if q.push(&admitReq{}) {
		t.Fatal("push accepted after close")
	}
	if _, closed := q.take(maxAdmitBatch); !closed {
		t.Fatal("take does not report the close")
	}
}
