package canary

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// planting is one way a leak could write a value, produced the way a leaking
// program would produce it (not from the scanner's patterns).
type planting struct {
	encoding string // the label the scanner must report
	ipOnly   bool
	v6Only   bool
	make     func(v Value) []byte
}

// junk is n random bytes: what surrounds a planted canary.
func junk(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func rawAddr(v Value) []byte { return netip.MustParseAddr(v.Text).Unmap().AsSlice() }

// b64 is a full base64 encoding of raw after k random bytes, as it would sit
// inside a longer encoded blob.
func b64(enc *base64.Encoding, k int, raw func(Value) []byte) func(Value) []byte {
	return func(v Value) []byte {
		pre := make([]byte, k)
		_, _ = rand.Read(pre)
		return []byte(enc.EncodeToString(append(append(pre, raw(v)...), "~trailing bytes~"...)))
	}
}

func text(v Value) []byte { return []byte(v.Text) }

func plantings() []planting {
	ps := []planting{
		{encoding: "as-is", make: text},
		{encoding: "upper", make: func(v Value) []byte { return []byte(strings.ToUpper(v.Text)) }},
		{encoding: "lower", make: func(v Value) []byte { return []byte(strings.ToLower(v.Text)) }},
		{encoding: "hex", make: func(v Value) []byte { return []byte(hex.EncodeToString([]byte(v.Text))) }},
		{encoding: "HEX", make: func(v Value) []byte { return []byte(fmt.Sprintf("%X", v.Text)) }},
		{encoding: "sha256-hex", make: func(v Value) []byte { return []byte(fmt.Sprintf("%x", sha256.Sum256([]byte(v.Text)))) }},
		{encoding: "SHA256-HEX", make: func(v Value) []byte { return []byte(fmt.Sprintf("%X", sha256.Sum256([]byte(v.Text)))) }},
		{encoding: "expanded", ipOnly: true, v6Only: true, make: func(v Value) []byte {
			return []byte(netip.MustParseAddr(v.Text).StringExpanded())
		}},
		{encoding: "EXPANDED", ipOnly: true, v6Only: true, make: func(v Value) []byte {
			return []byte(strings.ToUpper(netip.MustParseAddr(v.Text).StringExpanded()))
		}},
		{encoding: "raw", ipOnly: true, make: rawAddr},
		{encoding: "hex-raw", ipOnly: true, make: func(v Value) []byte { return []byte(fmt.Sprintf("%x", rawAddr(v))) }},
		{encoding: "HEX-raw", ipOnly: true, make: func(v Value) []byte { return []byte(fmt.Sprintf("%X", rawAddr(v))) }},
	}
	for k := 0; k < 3; k++ {
		ps = append(ps,
			planting{encoding: fmt.Sprintf("base64+%d", k), make: b64(base64.StdEncoding, k, text)},
			planting{encoding: fmt.Sprintf("base64url+%d", k), make: b64(base64.URLEncoding, k, text)},
			planting{encoding: fmt.Sprintf("raw16-base64+%d", k), ipOnly: true, v6Only: true, make: b64(base64.StdEncoding, k, rawAddr)},
			planting{encoding: fmt.Sprintf("raw16-base64url+%d", k), ipOnly: true, v6Only: true, make: b64(base64.RawURLEncoding, k, rawAddr)},
		)
	}
	return ps
}

// proveScanner writes one scratch file per canary and encoding, each holding
// that canary planted in that encoding among random bytes, and fails unless
// the scanner reports it there under that encoding. A last file holds the
// forms the policy allows (truncated prefixes, masked serials) and must give
// no finding. It returns how many planted files were found.
func proveScanner(t *testing.T, s *Scanner, values []Value, dir string) int {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	n := 0
	for vi, v := range values {
		is6 := v.Kind == IP && netip.MustParseAddr(v.Text).Unmap().Is6()
		for _, p := range plantings() {
			if p.ipOnly && v.Kind != IP || p.v6Only && !is6 {
				continue
			}
			enc := p.encoding
			if enc == "raw" {
				enc = fmt.Sprintf("raw%d", len(rawAddr(v)))
			}
			planted := p.make(v)
			pre, post := junk(t, 1000+vi*7), junk(t, 500)
			body := append(append(append([]byte{}, pre...), planted...), post...)
			path := filepath.Join(dir, fmt.Sprintf("planted-%s-%s.bin", v.Name, strings.ReplaceAll(enc, "+", "_")))
			if err := os.WriteFile(path, body, 0o600); err != nil {
				t.Fatal(err)
			}
			fs, _, err := s.ScanFile(path)
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, f := range fs {
				if f.Value == v.Name && hasEncoding(f.Encodings, enc) &&
					f.Offset >= len(pre) && f.Offset < len(pre)+len(planted) {
					found = true
				}
			}
			if !found {
				t.Errorf("scanner missed %s planted as %s (%q) in %s; it reported %v", v.Name, enc, planted, path, fs)
				continue
			}
			n++
		}
	}
	allowed := filepath.Join(dir, "allowed-forms.bin")
	if err := os.WriteFile(allowed, allowedForms(t, values), 0o600); err != nil {
		t.Fatal(err)
	}
	fs, _, err := s.ScanFile(allowed)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fs {
		t.Errorf("false positive on a form the policy allows: %v", f)
	}
	return n
}

func hasEncoding(list, enc string) bool {
	for _, e := range strings.Split(list, "|") {
		if e == enc {
			return true
		}
	}
	return false
}

// allowedForms is what the policy lets the gateway write about the canaries:
// truncated prefixes (text, raw bytes, expanded, hex) and masked serials.
func allowedForms(t *testing.T, values []Value) []byte {
	canary4 := map[netip.Addr]bool{}
	for _, v := range values {
		if a, err := netip.ParseAddr(v.Text); err == nil && a.Unmap().Is4() {
			canary4[a.Unmap()] = true
		}
	}
	var b []byte
	b = append(b, junk(t, 64)...)
	for _, v := range values {
		switch v.Kind {
		case IP:
			a := netip.MustParseAddr(v.Text).Unmap()
			bits := 48
			if a.Is4() {
				bits = 24
			}
			p := netip.PrefixFrom(a, bits).Masked()
			raw := p.Addr().AsSlice()
			b = append(b, fmt.Sprintf(" %s %s %x %X ", p, p.Addr().StringExpanded(), raw, raw)...)
			b = append(b, raw...)
			if a.Is4() {
				// Every other address of the /24 as 4 raw bytes.
				for last := 0; last < 256; last++ {
					if o := netip.AddrFrom4([4]byte{raw[0], raw[1], raw[2], byte(last)}); !canary4[o] {
						b = append(b, o.AsSlice()...)
						b = append(b, ' ')
					}
				}
			}
		case Token:
			if len(v.Text) > 4 {
				b = append(b, " ****"+v.Text[len(v.Text)-4:]+" "...)
			}
		}
	}
	return b
}

func TestStableBase64(t *testing.T) {
	raw := []byte("CANARY-SN-7f3a91")
	for k := 0; k < 3; k++ {
		mid := StableBase64(base64.StdEncoding, raw, k)
		if len(mid) < 16 {
			t.Fatalf("alignment %d: stable middle %q too short", k, mid)
		}
		for i := 0; i < 8; i++ {
			pre := junk(t, k+3*i)
			full := base64.StdEncoding.EncodeToString(append(append(pre, raw...), junk(t, i)...))
			if !strings.Contains(full, mid) {
				t.Fatalf("alignment %d, %d bytes before: %q does not contain %q", k, len(pre), full, mid)
			}
		}
	}
}

// TestScannerFindsPlantedCanaries proves the scan on the same canaries the
// root test plants in the gateway; it needs no root.
func TestScannerFindsPlantedCanaries(t *testing.T) {
	values := canaries()
	s, err := NewScanner(values)
	if err != nil {
		t.Fatal(err)
	}
	n := proveScanner(t, s, values, t.TempDir())
	t.Logf("%d canaries, %d patterns, %d planted files found", len(values), len(s.Patterns()), n)
}

func TestScannerReportsEveryOccurrence(t *testing.T) {
	v := Value{Name: "ip", Kind: IP, Text: "198.51.100.23"}
	s, err := NewScanner([]Value{v})
	if err != nil {
		t.Fatal(err)
	}
	b := []byte("from 198.51.100.23 and again 198.51.100.23; prefix 198.51.100.0/24")
	fs := s.ScanBytes("mem", b)
	if len(fs) != 2 || fs[0].Offset != 5 || fs[1].Offset != 29 {
		t.Fatalf("findings %v; want offsets 5 and 29", fs)
	}
	if want := hex.EncodeToString([]byte("from ")) + "[" + hex.EncodeToString([]byte("198.51.100.23")) + "]"; !strings.HasPrefix(fs[0].Context, want) {
		t.Fatalf("context %q; want prefix %q", fs[0].Context, want)
	}
	if got := s.Without("ip").ScanBytes("mem", b); len(got) != 0 {
		t.Fatalf("Without(ip) still finds %v", got)
	}
}
