package config

import (
	"fmt"
	"os"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

func (s Store) validate(v *validator) {
	v.oneOf("store.driver", s.Driver, DriverSQLite, DriverPostgres)
	switch s.Driver {
	case DriverSQLite:
		// A DSN meant for a fleet must never be ignored silently.
		if s.DSN != "" {
			v.bad("store.dsn", "must be empty with store.driver %q (set store.driver: postgres to use it)", DriverSQLite)
		}
		if s.DSNFile != "" {
			v.bad("store.dsn_file", "must be empty with store.driver %q (set store.driver: postgres to use it)", DriverSQLite)
		}
	case DriverPostgres:
		switch {
		case s.DSN == "" && s.DSNFile == "":
			v.bad("store.dsn", "must be set (or store.dsn_file) with store.driver %q", DriverPostgres)
		case s.DSN != "" && s.DSNFile != "":
			v.bad("store.dsn_file", "must be empty when store.dsn is set (one source for the connection string)")
		case s.DSN != "":
			if err := checkDSN(s.DSN); err != nil {
				v.bad("store.dsn", "%v", err)
			}
		}
	}
}

// checkDSN parses a PostgreSQL connection string without connecting. Its
// error never repeats the string, which may hold a password.
func checkDSN(dsn string) error {
	if _, err := pgconn.ParseConfig(dsn); err != nil {
		return fmt.Errorf("not a PostgreSQL connection string (key=value pairs or a postgres:// URL; the value is not shown, it may hold a password)")
	}
	return nil
}

// ResolveDSN returns the PostgreSQL connection string: store.dsn, or the
// contents of store.dsn_file (surrounding white space removed). The file
// must not be readable by others than its owner and group, and must hold a
// valid connection string; errors name the key and never the string.
func (s Store) ResolveDSN() (string, error) {
	if s.DSNFile == "" {
		if err := checkDSN(s.DSN); err != nil {
			return "", fmt.Errorf("store.dsn: %w", err)
		}
		return s.DSN, nil
	}
	fi, err := os.Stat(s.DSNFile)
	if err != nil {
		return "", fmt.Errorf("store.dsn_file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("store.dsn_file: %s is not a regular file", s.DSNFile)
	}
	if fi.Mode().Perm()&0o007 != 0 {
		return "", fmt.Errorf("store.dsn_file: %s is accessible by others (mode %04o); it holds a secret: chmod o-rwx", s.DSNFile, fi.Mode().Perm())
	}
	if fi.Size() > 64<<10 {
		return "", fmt.Errorf("store.dsn_file: %s is %d bytes, more than a connection string (64 KiB)", s.DSNFile, fi.Size())
	}
	b, err := os.ReadFile(s.DSNFile)
	if err != nil {
		return "", fmt.Errorf("store.dsn_file: %w", err)
	}
	dsn := strings.TrimSpace(string(b))
	if dsn == "" {
		return "", fmt.Errorf("store.dsn_file: %s is empty", s.DSNFile)
	}
	if err := checkDSN(dsn); err != nil {
		return "", fmt.Errorf("store.dsn_file: %s: %w", s.DSNFile, err)
	}
	return dsn, nil
}
