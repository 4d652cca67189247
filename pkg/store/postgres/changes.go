package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"

	"github.com/planetxlabs/dasset-gateway/pkg/store"
)

// Changes travel between the gateways of a fleet by LISTEN/NOTIFY: each
// write sends pg_notify on Channel inside its own transaction (PostgreSQL
// delivers it after the commit, and never for a rolled-back transaction),
// and each Store LISTENs on one dedicated connection, reconnecting with
// backoff and publishing a ChangeResync after any gap.

// Channel is the notification channel of registry changes.
const Channel = "dasset_changes"

// ListenerApplicationName is the application_name of the listening
// connection (to tell it apart in pg_stat_activity).
const ListenerApplicationName = "dasset-changes"

// Listener timing: a connection attempt's bound; how long the listener
// waits for a notification before checking the connection is alive; the
// backoff between reconnection attempts.
const (
	listenConnectTimeout = 10 * time.Second
	listenIdlePing       = 30 * time.Second
	listenBackoffMin     = 100 * time.Millisecond
	listenBackoffMax     = 5 * time.Second
)

// Payload is a notification's payload: ids only, never personal data.
// Schema is the sender's current_schema(): stores on one database in
// different schemas (search_path) do not see each other's changes.
type Payload struct {
	Schema  string `json:"n"`
	Kind    string `json:"k"`
	Device  int64  `json:"d,omitempty"`
	Session string `json:"s,omitempty"`
	Gateway string `json:"g,omitempty"`
}

// payloadSQL is the Payload of one change as a SQL expression, given SQL
// expressions of its kind, device id, session id and gateway.
func payloadSQL(kind, device, session, gateway string) string {
	return `json_strip_nulls(json_build_object('n', current_schema(), 'k', ` + kind + `,
		'd', nullif(` + device + `, 0), 's', nullif(` + session + `, ''), 'g', nullif(` + gateway + `, '')))::text`
}

// notify sends cs on Channel in tx; more than store.ChangeBuffer changes
// are sent as one ChangeResync.
func notify(ctx context.Context, tx pgx.Tx, cs ...store.Change) error {
	if len(cs) == 0 {
		return nil
	}
	if len(cs) > store.ChangeBuffer {
		cs = []store.Change{{Kind: store.ChangeResync}}
	}
	kinds, devs, sess, gws := make([]string, len(cs)), make([]int64, len(cs)), make([]string, len(cs)), make([]string, len(cs))
	for i, c := range cs {
		kinds[i], devs[i], sess[i], gws[i] = string(c.Kind), c.DeviceID, c.SessionID, c.Gateway
	}
	_, err := tx.Exec(ctx, `SELECT pg_notify('`+Channel+`', `+payloadSQL("c.k", "c.d", "c.s", "c.g")+`)
		FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[]) WITH ORDINALITY AS c(k, d, s, g, i) ORDER BY c.i`,
		kinds, devs, sess, gws)
	if err != nil {
		return fmt.Errorf("notify: %w", err)
	}
	return nil
}

// decode reads a notification's payload.
func decode(payload string) (schema string, c store.Change, err error) {
	var p Payload
	if err := json.Unmarshal([]byte(payload), &p); err != nil {
		return "", store.Change{}, err
	}
	switch k := store.ChangeKind(p.Kind); k {
	case store.ChangeDevice, store.ChangeSession, store.ChangeResync:
		return p.Schema, store.Change{Kind: k, DeviceID: p.Device, SessionID: p.Session, Gateway: p.Gateway}, nil
	}
	return "", store.Change{}, fmt.Errorf("unknown change kind %q", p.Kind)
}

// listener is a Store's LISTEN connection, started by the first Changes.
type listener struct {
	cfg    *pgx.ConnConfig
	broker *store.Broker
	cancel context.CancelFunc
	done   chan struct{}
	first  chan struct{} // closed after the first connection attempt
}

// Changes delivers the registry's changes from every store on the
// database (see store.Store). The first call starts the listener and
// returns after its first connection attempt: when that succeeded, every
// change committed after Changes returns is delivered; when it failed, a
// ChangeResync follows once the listener is connected.
func (s *Store) Changes(ctx context.Context) (<-chan store.Change, error) {
	ch, err := s.broker.Subscribe(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: Changes: %w", err)
	}
	s.lmu.Lock()
	if s.closed {
		s.lmu.Unlock()
		return nil, fmt.Errorf("store: Changes: store closed")
	}
	if s.listen == nil {
		cfg := s.pool.Config().ConnConfig.Copy()
		cfg.RuntimeParams["application_name"] = ListenerApplicationName
		// A timed-out wait only sets a deadline on the socket: no cancel
		// request that could hit the next statement.
		cfg.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
			return &pgconn.DeadlineContextWatcherHandler{Conn: c.Conn()}
		}
		lctx, cancel := context.WithCancel(context.Background())
		s.listen = &listener{cfg: cfg, broker: s.broker, cancel: cancel, done: make(chan struct{}), first: make(chan struct{})}
		go s.listen.run(lctx)
	}
	l := s.listen
	s.lmu.Unlock()
	select {
	case <-l.first:
	case <-ctx.Done():
		return nil, fmt.Errorf("store: Changes: %w", ctx.Err())
	}
	return ch, nil
}

// closeListener stops the listener and ends every subscription.
func (s *Store) closeListener() {
	s.lmu.Lock()
	s.closed = true
	l := s.listen
	s.lmu.Unlock()
	if l != nil {
		l.cancel()
		<-l.done
	}
	s.broker.Close()
}

// run keeps a LISTEN connection until ctx ends.
func (l *listener) run(ctx context.Context) {
	defer close(l.done)
	var once sync.Once
	firstDone := func() { once.Do(func() { close(l.first) }) }
	defer firstDone()
	gap := false
	backoff := listenBackoffMin
	for {
		listened := l.session(ctx, gap, firstDone)
		firstDone()
		if ctx.Err() != nil {
			return
		}
		// Whatever was committed from now until the next LISTEN is missed.
		gap = true
		if listened {
			backoff = listenBackoffMin
		}
		d := backoff/2 + rand.N(backoff/2+1)
		backoff = min(2*backoff, listenBackoffMax)
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
	}
}

// session connects, listens and publishes notifications until the
// connection fails or ctx ends; it reports whether it got as far as
// listening. After a gap it publishes one ChangeResync once listening.
func (l *listener) session(ctx context.Context, gap bool, listening func()) bool {
	cctx, cancel := context.WithTimeout(ctx, listenConnectTimeout)
	conn, err := pgx.ConnectConfig(cctx, l.cfg)
	if err != nil {
		cancel()
		return false
	}
	defer func() {
		c, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = conn.Close(c)
		cancel()
	}()
	var schema string
	err = conn.QueryRow(cctx, `SELECT current_schema()`).Scan(&schema)
	if err == nil {
		_, err = conn.Exec(cctx, `LISTEN `+Channel)
	}
	cancel()
	if err != nil {
		return false
	}
	listening()
	if gap {
		l.broker.Publish(store.Change{Kind: store.ChangeResync})
	}
	for {
		wctx, cancel := context.WithTimeout(ctx, listenIdlePing)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return true
		case err != nil && (errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err)):
			// Quiet for a while: check that the connection still works.
			pctx, cancel := context.WithTimeout(ctx, listenConnectTimeout)
			err = conn.Ping(pctx)
			cancel()
			if err != nil {
				return true
			}
			continue
		case err != nil:
			return true
		}
		sch, c, err := decode(n.Payload)
		if err != nil {
			// Not ours to read (another program on the channel): re-read
			// rather than guess.
			l.broker.Publish(store.Change{Kind: store.ChangeResync})
			continue
		}
		if sch == schema {
			l.broker.Publish(c)
		}
	}
}
