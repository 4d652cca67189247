package migrations_test

import (
	"io/fs"
	"slices"
	"testing"

	"github.com/pressly/goose/v3"

	"github.com/planetxlabs/dasset-gateway/pkg/store/migrations"
)

// TestDialectsInStep: every schema version exists for every dialect, so a
// database's version means the same schema whichever store wrote it.
func TestDialectsInStep(t *testing.T) {
	versions := map[migrations.Dialect][]int64{}
	for _, d := range []migrations.Dialect{migrations.SQLite, migrations.Postgres} {
		fsys, err := migrations.FS(d)
		if err != nil {
			t.Fatal(err)
		}
		names, err := fs.Glob(fsys, "*.sql")
		if err != nil || len(names) == 0 {
			t.Fatalf("%s: migrations %v, %v", d, names, err)
		}
		for _, n := range names {
			v, err := goose.NumericComponent(n)
			if err != nil {
				t.Fatalf("%s: %s: %v", d, n, err)
			}
			versions[d] = append(versions[d], v)
		}
		slices.Sort(versions[d])
		for i, v := range versions[d] {
			if v != int64(i+1) {
				t.Fatalf("%s: versions %v, want 1..n without gaps", d, versions[d])
			}
		}
		latest, err := migrations.Latest(d)
		if err != nil || latest != int64(len(names)) {
			t.Fatalf("%s: Latest %d, %v; want %d", d, latest, err, len(names))
		}
	}
	if !slices.Equal(versions[migrations.SQLite], versions[migrations.Postgres]) {
		t.Fatalf("sqlite versions %v, postgres versions %v: add the missing migration to the other dialect", versions[migrations.SQLite], versions[migrations.Postgres])
	}
	if _, err := migrations.FS("mysql"); err == nil {
		t.Fatal("FS of an unknown dialect: no error")
	}
}
