package store

import (
	"context"
	"database/sql"
	"sync"
)

// maxCachedStmts bounds each prepared-statement cache; queries beyond it run
// unprepared.
const maxCachedStmts = 256

// stmtCache keeps prepared statements of one *sql.DB by query text.
// Preparing costs about a third of a small write transaction in SQLite.
type stmtCache struct {
	db *sql.DB
	mu sync.Mutex
	m  map[string]*sql.Stmt
}

func newStmtCache(db *sql.DB) *stmtCache {
	return &stmtCache{db: db, m: make(map[string]*sql.Stmt)}
}

func (c *stmtCache) lookup(q string) *sql.Stmt {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[q]
}

// prepare returns the cached statement for q, preparing it if needed; nil
// when it cannot (the caller then runs q unprepared, which reports any error).
func (c *stmtCache) prepare(ctx context.Context, q string) *sql.Stmt {
	if st := c.lookup(q); st != nil {
		return st
	}
	c.mu.Lock()
	full := len(c.m) >= maxCachedStmts
	c.mu.Unlock()
	if full {
		return nil
	}
	st, err := c.db.PrepareContext(ctx, q)
	if err != nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.m[q]; ok {
		_ = st.Close()
		return old
	}
	c.m[q] = st
	return st
}

func (c *stmtCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for q, st := range c.m {
		_ = st.Close()
		delete(c.m, q)
	}
}

// wtx is a write transaction on the single writer connection. Statements
// already in the cache run prepared; the others run unprepared and are
// prepared after the transaction ends (preparing on the DB inside the
// transaction would wait for the one connection the transaction holds).
type wtx struct {
	tx      *sql.Tx
	cache   *stmtCache
	missed  []string
	changes []Change // published once the transaction has committed
}

// emit records changes to publish after the commit.
func (t *wtx) emit(cs ...Change) { t.changes = append(t.changes, cs...) }

// stmt returns a statement for q bound to the transaction.
func (t *wtx) stmt(ctx context.Context, q string) (*sql.Stmt, error) {
	if st := t.cache.lookup(q); st != nil {
		return t.tx.StmtContext(ctx, st), nil
	}
	t.missed = append(t.missed, q)
	return t.tx.PrepareContext(ctx, q)
}

func (t *wtx) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	if st := t.cache.lookup(q); st != nil {
		return t.tx.StmtContext(ctx, st).ExecContext(ctx, args...)
	}
	t.missed = append(t.missed, q)
	return t.tx.ExecContext(ctx, q, args...)
}

func (t *wtx) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	if st := t.cache.lookup(q); st != nil {
		return t.tx.StmtContext(ctx, st).QueryRowContext(ctx, args...)
	}
	t.missed = append(t.missed, q)
	return t.tx.QueryRowContext(ctx, q, args...)
}

func (t *wtx) QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	if st := t.cache.lookup(q); st != nil {
		return t.tx.StmtContext(ctx, st).QueryContext(ctx, args...)
	}
	t.missed = append(t.missed, q)
	return t.tx.QueryContext(ctx, q, args...)
}

// warm prepares the statements the transaction ran unprepared.
func (t *wtx) warm(ctx context.Context) {
	for _, q := range t.missed {
		if ctx.Err() != nil {
			return
		}
		t.cache.prepare(ctx, q)
	}
}

// rdb reads through the read pool with prepared statements.
type rdb struct {
	db    *sql.DB
	cache *stmtCache
}

func (r *rdb) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	if st := r.cache.prepare(ctx, q); st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return r.db.QueryRowContext(ctx, q, args...)
}

func (r *rdb) QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	if st := r.cache.prepare(ctx, q); st != nil {
		return st.QueryContext(ctx, args...)
	}
	return r.db.QueryContext(ctx, q, args...)
}
