package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/curve25519"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files in testdata")

// parseWGQuick reads a wg-quick configuration back as wg-quick's own parser
// does for the keys a session uses (sections, "Key = Value", "#" comments,
// comma-separated lists); anything else is an error.
func parseWGQuick(data []byte) (WGQuick, error) {
	var w WGQuick
	section := ""
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		if line == "" {
			continue
		}
		if line == "[Interface]" || line == "[Peer]" {
			if seen[line] {
				return w, fmt.Errorf("line %d: second %s", n, line)
			}
			seen[line], section = true, line
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			return w, fmt.Errorf("line %d: %q is not Key = Value in a section", n, line)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if seen[section+k] {
			return w, fmt.Errorf("line %d: %s given twice", n, k)
		}
		seen[section+k] = true
		var err error
		switch section + k {
		case "[Interface]PrivateKey":
			err = parseKey(v, &w.PrivateKey)
		case "[Interface]Address":
			w.Addresses, err = parsePrefixList(v)
		case "[Interface]MTU":
			w.MTU, err = strconv.Atoi(v)
		case "[Peer]PublicKey":
			err = parseKey(v, &w.PeerPublicKey)
		case "[Peer]Endpoint":
			w.Endpoint = v
		case "[Peer]AllowedIPs":
			w.AllowedIPs, err = parsePrefixList(v)
		case "[Peer]PersistentKeepalive":
			var u uint64
			u, err = strconv.ParseUint(v, 10, 16)
			w.PersistentKeepalive = uint32(u)
		default:
			err = fmt.Errorf("unknown key %s in %s", k, section)
		}
		if err != nil {
			return w, fmt.Errorf("line %d: %w", n, err)
		}
	}
	for _, k := range []string{"[Interface]PrivateKey", "[Interface]Address", "[Peer]PublicKey", "[Peer]Endpoint", "[Peer]AllowedIPs"} {
		if !seen[k] {
			return w, fmt.Errorf("%s: missing", k)
		}
	}
	return w, sc.Err()
}

func parseKey(s string, k *[32]byte) error {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != 32 {
		return fmt.Errorf("key %q: not 32 bytes of base64 (%v)", s, err)
	}
	copy(k[:], b)
	return nil
}

func parsePrefixList(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		p, err := netip.ParsePrefix(strings.TrimSpace(f))
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

func sampleWGQuick() WGQuick {
	var priv, pub [32]byte
	for i := range priv {
		priv[i], pub[i] = byte(i), byte(255-i)
	}
	return WGQuick{
		SessionID:           "5f0c2a9e-session",
		Expires:             time.Date(2026, 11, 30, 18, 0, 0, 0, time.UTC),
		PrivateKey:          priv,
		Addresses:           []netip.Prefix{netip.MustParsePrefix("100.95.0.7/32"), netip.MustParsePrefix("fd00:da55:e700:ff00::7/128")},
		MTU:                 1420,
		PeerPublicKey:       pub,
		Endpoint:            "[2001:db8::1]:51820",
		AllowedIPs:          []netip.Prefix{netip.MustParsePrefix("100.80.0.2/32"), netip.MustParsePrefix("fd00:da55:e700::2/128")},
		PersistentKeepalive: 25,
	}
}

// The rendering is exactly the golden file, and reads back to what was
// rendered (comment aside).
func TestWGQuickRenderGolden(t *testing.T) {
	w := sampleWGQuick()
	got := w.Render()
	golden := filepath.Join("testdata", "session.wgquick.golden")
	if *updateGolden {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -run TestWGQuickRenderGolden -update ./pkg/agent)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("rendered:\n%s\nwant (%s):\n%s", got, golden, want)
	}
	back, err := parseWGQuick(got)
	if err != nil {
		t.Fatalf("parse back: %v\n%s", err, got)
	}
	back.SessionID, back.Expires = w.SessionID, w.Expires
	if fmt.Sprint(back) != fmt.Sprint(w) {
		t.Fatalf("parsed back %+v\nwant        %+v", back, w)
	}
}

// Optional lines are left out when unset, and the result still parses.
func TestWGQuickRenderMinimal(t *testing.T) {
	w := sampleWGQuick()
	w.MTU, w.PersistentKeepalive, w.Expires = 0, 0, time.Time{}
	w.Addresses, w.AllowedIPs = w.Addresses[:1], w.AllowedIPs[:1]
	out := string(w.Render())
	for _, absent := range []string{"MTU", "PersistentKeepalive", "expires"} {
		if strings.Contains(out, absent) {
			t.Errorf("%s rendered though unset:\n%s", absent, out)
		}
	}
	back, err := parseWGQuick([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if back.Addresses[0] != w.Addresses[0] || back.AllowedIPs[0] != w.AllowedIPs[0] || len(back.AllowedIPs) != 1 {
		t.Fatalf("parsed back %+v from\n%s", back, out)
	}
}

func TestCheckWGQuickPath(t *testing.T) {
	for _, ok := range []string{"dasset.conf", "/etc/wireguard/wg0.conf", "a.b-c_d=e+f.conf", "123456789012345.conf"} {
		if err := CheckWGQuickPath(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "dasset", "dasset.cfg", ".conf", "1234567890123456.conf", "my tunnel.conf", "/tmp/x/ü.conf"} {
		if err := CheckWGQuickPath(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	dir := t.TempDir()
	if err := WriteWGQuick(filepath.Join(dir, "bad name.conf"), sampleWGQuick()); err == nil {
		t.Fatal("WriteWGQuick wrote a file wg-quick refuses")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("a refused write left %v behind", ents)
	}
}

// A session opened without a tunnel of its own hands out a configuration
// whose key is the one the gateway was given, routes only the device's
// addresses, names the endpoint as the gateway sent it (or the gRPC host
// with the WireGuard port), and is written 0600.
func TestOpenSessionNoTunnelWGQuick(t *testing.T) {
	f := &fakeClientService{allowedIPs: []string{virtualNetwork}, keepalive: 25}
	cfg := serveClientService(t, f)
	cfg.Netstack, cfg.NoTunnel = false, true
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := OpenSession(ctx, cfg, testSerial)
	if err != nil {
		t.Fatal(err)
	}
	if s.Net() != nil || s.tun != nil {
		t.Fatal("a session without a tunnel brought one up")
	}
	w := s.WGQuick()
	pub, err := curve25519.X25519(w.PrivateKey[:], curve25519.Basepoint)
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	sent := f.keys[0]
	f.mu.Unlock()
	if !bytes.Equal(pub, sent) {
		t.Fatalf("configuration's key has public half %x; the gateway was given %x", pub, sent)
	}
	if w.Endpoint != "127.0.0.1:9" || w.PersistentKeepalive != 25 || w.MTU != 1420 ||
		fmt.Sprint(w.AllowedIPs) != "["+deviceAddr+"]" || fmt.Sprint(w.Addresses) != "[100.95.0.1/32]" || w.SessionID != s.ID() {
		t.Fatalf("configuration %+v", w)
	}
	path := filepath.Join(t.TempDir(), "dasset.conf")
	if err := WriteWGQuick(path, w); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("written file: %v, %v; want mode 0600", st, err)
	}
	data, _ := os.ReadFile(path)
	if back, err := parseWGQuick(data); err != nil || back.PrivateKey != w.PrivateKey {
		t.Fatalf("written file reads back as %+v, %v", back, err)
	}
	// Still standing after a few polls (no handshake of its own to miss).
	wctx, wcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	if err := s.Wait(wctx); err != context.DeadlineExceeded {
		t.Fatalf("Wait on a standing session: %v", err)
	}
	wcancel()
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}

	f.noEndpoint = true
	s2, err := OpenSession(ctx, cfg, testSerial)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close(ctx)
	if ep := s2.WGQuick().Endpoint; ep != "127.0.0.1:51820" {
		t.Fatalf("endpoint without one in the grant: %q, want the gRPC host with port 51820", ep)
	}

	bad := cfg
	bad.Netstack = true
	if _, err := OpenSession(ctx, bad, testSerial); err == nil || !strings.Contains(err.Error(), "netstack") {
		t.Fatalf("no tunnel and netstack at once: %v", err)
	}
}
