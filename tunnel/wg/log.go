package wg

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"

	"golang.zx2c4.com/wireguard/device"
)

// IP addresses and endpoints are personal data (docs/ARCHITECTURE.md, "The privacy model"):
// wireguard-go's messages and errors can carry peers' endpoints, so every
// text that leaves this package through a log or an error is passed through
// redact first.

// newWGLogger routes wireguard-go's logs to l: verbose messages at Debug,
// errors at Error, with addresses redacted.
func newWGLogger(l *slog.Logger) *device.Logger {
	return &device.Logger{
		Verbosef: func(format string, args ...any) {
			if l.Enabled(context.Background(), slog.LevelDebug) {
				l.Debug(redact(fmt.Sprintf(format, args...)), "source", "wireguard-go")
			}
		},
		Errorf: func(format string, args ...any) {
			l.Error(redact(fmt.Sprintf(format, args...)), "source", "wireguard-go")
		},
	}
}

// redactErr returns err with addresses redacted from its text. The result
// does not wrap err (its chain could carry the address in fields).
func redactErr(err error) error {
	if err == nil {
		return nil
	}
	return errors.New(redact(err.Error()))
}

// redact replaces every token of s that parses as an IP address, an
// address:port or a prefix with "[addr]".
func redact(s string) string {
	var b strings.Builder
	start := -1
	changed := false
	for i := 0; i <= len(s); i++ {
		if i < len(s) && !isSep(s[i]) {
			if start < 0 {
				start = i
			}
			continue
		}
		if start >= 0 {
			tok := s[start:i]
			core := strings.TrimRight(tok, ":-.")
			if isAddr(core) {
				b.WriteString("[addr]")
				b.WriteString(tok[len(core):])
				changed = true
			} else {
				b.WriteString(tok)
			}
			start = -1
		}
		if i < len(s) {
			b.WriteByte(s[i])
		}
	}
	if !changed {
		return s
	}
	return b.String()
}

func isSep(c byte) bool {
	switch c {
	case ' ', '\t', '\n', ',', ';', '=', '(', ')', '"', '\'', '<', '>', '{', '}':
		return true
	}
	return false
}

func isAddr(s string) bool {
	if len(s) < 2 {
		return false
	}
	if _, err := netip.ParseAddr(s); err == nil {
		return true
	}
	if _, err := netip.ParseAddrPort(s); err == nil {
		return true
	}
	if _, err := netip.ParsePrefix(s); err == nil {
		return true
	}
	return false
}
