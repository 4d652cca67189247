// Package canary is the privacy canary: a root end-to-end test plants
// recognisable serial numbers, hardware ids, account names and device and
// client source addresses in a real gateway, then searches every byte the
// gateway wrote for them in the encodings a leak would take. This file is
// the search.
package canary

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Kind says what a canary value is, which decides the encodings searched.
type Kind int

const (
	// Token is an identifier typed as text: serial number, hardware id,
	// account name, password.
	Token Kind = iota
	// IP is a device's full source address (IPv4 or IPv6).
	IP
)

// Value is one canary: a name for reports, its kind and its text.
type Value struct {
	Name string
	Kind Kind
	Text string
}

// Pattern is one byte string the scanner looks for. Encodings lists every
// encoding of the value that gives exactly these bytes (e.g. "as-is|upper").
type Pattern struct {
	Value     string
	Encodings string
	Bytes     []byte
}

// minBase64 is the shortest stable base64 middle searched: shorter runs of
// base64 characters match by chance in any key or certificate.
const minBase64 = 8

// Patterns gives every encoding of v that the scan looks for:
//
//   - the text as is, upper case, lower case;
//   - hex (lower and upper case) of the text's bytes;
//   - standard and URL base64 of the text at the three byte alignments
//     (the value preceded by 0, 1 or 2 other bytes), each searched by its
//     stable middle: the characters made of the value's bits only;
//   - SHA-256 of the text in hex (lower and upper case);
//
// and for an IP address also: the expanded IPv6 form (2001:0db8:…, lower
// and upper case), the address's 4 or 16 raw bytes, hex of those bytes, and
// for IPv6 their base64 at the three alignments. Only the full address is
// searched (all 4 or 16 bytes), so the truncated /24 or /48 prefix that the
// policy allows never matches. The 4 raw bytes of an IPv4 address are the one
// short pattern: in random binary data they match by chance about once in
// 4 GiB, so a finding of raw4 alone in a database page deserves a look at
// its context before blaming the gateway.
func Patterns(v Value) ([]Pattern, error) {
	if v.Text == "" {
		return nil, fmt.Errorf("canary %q: empty value", v.Name)
	}
	var out []Pattern
	add := func(enc string, b []byte) {
		out = append(out, Pattern{Value: v.Name, Encodings: enc, Bytes: b})
	}
	addBase64 := func(prefix string, raw []byte) {
		for k := 0; k < 3; k++ {
			for _, e := range []struct {
				name string
				enc  *base64.Encoding
			}{{"base64", base64.StdEncoding}, {"base64url", base64.URLEncoding}} {
				if mid := StableBase64(e.enc, raw, k); len(mid) >= minBase64 {
					add(fmt.Sprintf("%s%s+%d", prefix, e.name, k), []byte(mid))
				}
			}
		}
	}
	text := []byte(v.Text)
	add("as-is", text)
	add("upper", []byte(strings.ToUpper(v.Text)))
	add("lower", []byte(strings.ToLower(v.Text)))
	add("hex", []byte(hex.EncodeToString(text)))
	add("HEX", []byte(strings.ToUpper(hex.EncodeToString(text))))
	addBase64("", text)
	sum := sha256.Sum256(text)
	add("sha256-hex", []byte(hex.EncodeToString(sum[:])))
	add("SHA256-HEX", []byte(strings.ToUpper(hex.EncodeToString(sum[:]))))
	if v.Kind == IP {
		a, err := netip.ParseAddr(v.Text)
		if err != nil {
			return nil, fmt.Errorf("canary %q: %w", v.Name, err)
		}
		a = a.Unmap()
		if a.Is6() {
			add("expanded", []byte(a.StringExpanded()))
			add("EXPANDED", []byte(strings.ToUpper(a.StringExpanded())))
		}
		raw := a.AsSlice()
		add(fmt.Sprintf("raw%d", len(raw)), raw)
		add("hex-raw", []byte(hex.EncodeToString(raw)))
		add("HEX-raw", []byte(strings.ToUpper(hex.EncodeToString(raw))))
		if a.Is6() {
			addBase64("raw16-", raw)
		}
	}
	return merge(out), nil
}

// merge folds patterns with the same bytes into one, listing its encodings.
func merge(ps []Pattern) []Pattern {
	var out []Pattern
	seen := map[string]int{}
	for _, p := range ps {
		if i, ok := seen[string(p.Bytes)]; ok {
			out[i].Encodings += "|" + p.Encodings
			continue
		}
		seen[string(p.Bytes)] = len(out)
		out = append(out, p)
	}
	return out
}

// StableBase64 is the part of enc's encoding of (k other bytes ‖ raw) that
// depends on raw alone: the characters whose 6 bits all come from raw. It is
// the same whatever the k bytes before raw are, and whatever follows it.
func StableBase64(enc *base64.Encoding, raw []byte, k int) string {
	full := enc.EncodeToString(append(make([]byte, k), raw...))
	startBit, endBit := 8*k, 8*(k+len(raw))
	first := (startBit + 5) / 6 // first character starting at or after startBit
	last := endBit/6 - 1        // last character ending at or before endBit
	if last < first {
		return ""
	}
	return full[first : last+1]
}

// Finding is one occurrence of a canary in a scanned file.
type Finding struct {
	File      string
	Offset    int
	Value     string
	Encodings string
	// Context is the bytes around the occurrence, in hex, with the match
	// between [ and ].
	Context string
}

func (f Finding) String() string {
	return fmt.Sprintf("%s @%d: %s as %s: %s", f.File, f.Offset, f.Value, f.Encodings, f.Context)
}

// contextBytes is how many bytes either side of a finding are reported.
const contextBytes = 16

// Scanner searches bytes for a fixed set of canary patterns.
type Scanner struct {
	patterns []Pattern
}

// NewScanner builds the patterns of every value.
func NewScanner(values []Value) (*Scanner, error) {
	s := &Scanner{}
	for _, v := range values {
		ps, err := Patterns(v)
		if err != nil {
			return nil, err
		}
		s.patterns = append(s.patterns, ps...)
	}
	return s, nil
}

// Patterns is every pattern searched.
func (s *Scanner) Patterns() []Pattern { return s.patterns }

// Without returns a scanner that does not look for the named values (a
// subject's own export may hold the subject's own serial number).
func (s *Scanner) Without(names ...string) *Scanner {
	skip := map[string]bool{}
	for _, n := range names {
		skip[n] = true
	}
	out := &Scanner{}
	for _, p := range s.patterns {
		if !skip[p.Value] {
			out.patterns = append(out.patterns, p)
		}
	}
	return out
}

// ScanBytes reports every occurrence of every pattern in b, by offset.
func (s *Scanner) ScanBytes(name string, b []byte) []Finding {
	var out []Finding
	for _, p := range s.patterns {
		for off := 0; off <= len(b)-len(p.Bytes); {
			i := bytes.Index(b[off:], p.Bytes)
			if i < 0 {
				break
			}
			at := off + i
			out = append(out, Finding{File: name, Offset: at, Value: p.Value, Encodings: p.Encodings,
				Context: contextHex(b, at, len(p.Bytes))})
			off = at + 1
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Offset < out[j].Offset })
	return out
}

func contextHex(b []byte, at, n int) string {
	lo, hi := max(0, at-contextBytes), min(len(b), at+n+contextBytes)
	return hex.EncodeToString(b[lo:at]) + "[" + hex.EncodeToString(b[at:at+n]) + "]" + hex.EncodeToString(b[at+n:hi])
}

// ScanFile reads a whole file and scans it.
func (s *Scanner) ScanFile(path string) ([]Finding, int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, err
	}
	return s.ScanBytes(path, b), len(b), nil
}

// Files lists every regular file under root (root itself may be a file).
// Anything else that is not a directory or a socket is an error, so nothing
// is skipped unseen.
func Files(root string) ([]string, error) {
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch t := d.Type(); {
		case t.IsRegular():
			out = append(out, p)
		case t.IsDir(), t&fs.ModeSocket != 0:
		default:
			return fmt.Errorf("%s: cannot scan a %v", p, t)
		}
		return nil
	})
	return out, err
}
