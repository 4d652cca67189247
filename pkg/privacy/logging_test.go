package privacy

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestSensitiveKey(t *testing.T) {
	yes := []string{"sn", "SN", "serial", "serial_number", "serialNumber", "SerialNumber", "device_sn", "sn_hash",
		"hwid", "HWID", "hardware_id", "hardwareId", "ip", "IP", "client_ip", "clientIP", "clientip", "source_ip", "ip_addr",
		"addr", "address", "Address", "remote", "remote_addr", "remoteAddr", "RemoteAddr", "peer_addr", "peerAddr",
		"source", "src", "endpoint", "wg_endpoint", "Endpoint", "x-forwarded-ip", "ips", "addrs", "ip6", "ipv4", "IPv6", "addr6", "sn2", "clientIPv4"}
	no := []string{"msg", "level", "time", "err", "error", "device", "pseudonym", "outcome", "description", "zip",
		"ship", "tip", "id", "session", "count", "duration", "method", "resource", "snapshot", "ipam_pool", "sha256", "k8s"}
	for _, k := range yes {
		if !SensitiveKey(k) {
			t.Errorf("SensitiveKey(%q) = false, want true", k)
		}
	}
	for _, k := range no {
		if SensitiveKey(k) {
			t.Errorf("SensitiveKey(%q) = true, want false", k)
		}
	}
}

func TestReplaceAttr(t *testing.T) {
	sn := mustSN(t, "SNTABLE123")
	hw := mustHW(t, "HWTABLE456")
	v4 := netip.MustParseAddr("198.51.100.77")
	v6 := netip.MustParseAddr("2001:db8:1234:5678::1")
	src := &slog.Source{File: "x.go", Line: 3}
	tests := []struct {
		name string
		in   slog.Attr
		want string // resolved value as text
	}{
		{"plain sn string", slog.String("sn", "SNTABLE123"), Redacted},
		{"plain hwid string", slog.String("hardware_id", "HWTABLE456"), Redacted},
		{"suffix key", slog.String("device_serial", "SNTABLE123"), Redacted},
		{"ip string", slog.String("client_ip", "198.51.100.77"), "198.51.100.0/24"},
		{"ipv6 string", slog.String("ip", "2001:db8:1234:5678::1"), "2001:db8:1234::/48"},
		{"addrport string", slog.String("remote_addr", "198.51.100.77:51820"), "198.51.100.0/24"},
		{"ipv6 addrport string", slog.String("peer_addr", "[2001:db8:1234:5678::1]:443"), "2001:db8:1234::/48"},
		{"prefix too long", slog.String("source", "198.51.100.77/32"), "198.51.100.0/24"},
		{"prefix short", slog.String("source", "198.51.0.0/16"), "198.51.0.0/16"},
		{"netip.Addr", slog.Any("ip", v4), "198.51.100.0/24"},
		{"netip.Addr v6", slog.Any("addr", v6), "2001:db8:1234::/48"},
		{"netip.AddrPort", slog.Any("endpoint", netip.AddrPortFrom(v4, 9)), "198.51.100.0/24"},
		{"net.IP", slog.Any("remote", net.ParseIP("198.51.100.77")), "198.51.100.0/24"},
		{"net.UDPAddr", slog.Any("peer_addr", &net.UDPAddr{IP: net.ParseIP("198.51.100.77"), Port: 5}), "198.51.100.0/24"},
		{"bytes", slog.Any("serial", []byte("SNTABLE123")), Redacted},
		{"struct", slog.Any("hwid", struct{ V string }{"HWTABLE456"}), Redacted},
		{"error under key", slog.Any("endpoint", errors.New("198.51.100.77 refused")), Redacted},
		{"garbage ip", slog.String("ip", "not-an-ip"), Redacted},
		{"int passes", slog.Int("source", 3), "3"},
		{"bool passes", slog.Bool("remote", true), "true"},
		{"duration passes", slog.Duration("addr", time.Second), "1s"},
		{"typed SN passes", slog.Any("sn", sn), "[serial-number]"},
		{"typed HWID passes", slog.Any("hwid", hw), "[hardware-id]"},
		{"typed Addr passes", slog.Any("ip", NewAddr(v4)), "198.51.100.0/24"},
		{"typed Endpoint passes", slog.Any("endpoint", NewEndpoint(netip.AddrPortFrom(v4, 1))), "[endpoint]"},
		{"pseudonym passes under sn", slog.Any("sn", Pseudonym{0xab}), "ab000000000000000000000000000000"},
		{"blind index hidden", slog.Any("device", BlindIndex{1}), "[blind-index]"},
		{"resolved typed passes", slog.Attr{Key: "sn", Value: sn.LogValue()}, "[serial-number]"},
		{"source passes", slog.Any(slog.SourceKey, src), fmt.Sprint(src)},
		{"other key untouched", slog.String("outcome", "SNTABLE123"), "SNTABLE123"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := ReplaceAttr(nil, tc.in)
			if got.Key != tc.in.Key {
				t.Fatalf("key changed: %q", got.Key)
			}
			if s := got.Value.Resolve().String(); s != tc.want {
				t.Fatalf("got %q, want %q", s, tc.want)
			}
		})
	}
	// Inside a group named like personal data, any key is redacted.
	if got := ReplaceAttr([]string{"client_ip"}, slog.String("v", "198.51.100.77")); got.Value.String() != "198.51.100.0/24" {
		t.Fatalf("group: %v", got.Value)
	}
	// A group value passed directly is walked.
	g := ReplaceAttr(nil, slog.Group("peer", slog.String("addr", "198.51.100.77"), slog.String("sn", "SNTABLE123")))
	if s := g.Value.String(); strings.Contains(s, "198.51.100.77") || strings.Contains(s, "SNTABLE123") {
		t.Fatalf("group value leaked: %s", s)
	}
}

// canaryEncodings are the forms a leaked value may take in a log.
func canaryEncodings(c string) map[string]string {
	enc := map[string]string{
		"raw":       c,
		"upper":     strings.ToUpper(c),
		"lower":     strings.ToLower(c),
		"hex":       hex.EncodeToString([]byte(c)),
		"HEX":       strings.ToUpper(hex.EncodeToString([]byte(c))),
		"base64":    base64.StdEncoding.EncodeToString([]byte(c)),
		"base64raw": base64.RawStdEncoding.EncodeToString([]byte(c)),
		"base64url": base64.RawURLEncoding.EncodeToString([]byte(c)),
	}
	if a, err := netip.ParseAddr(c); err == nil {
		b := a.AsSlice()
		enc["addr-bytes-hex"] = hex.EncodeToString(b)
		enc["addr-bytes-dec"] = strings.Trim(fmt.Sprint(b), "[]")
		enc["addr-expanded"] = a.StringExpanded()
		enc["addr-bytes-base64"] = base64.StdEncoding.EncodeToString(b)
	}
	return enc
}

// findCanaries returns "canary/encoding" for every canary form found in out.
func findCanaries(out string, canaries []string) []string {
	var found []string
	for _, c := range canaries {
		for name, e := range canaryEncodings(c) {
			if strings.Contains(out, e) {
				found = append(found, c+"/"+name)
			}
		}
	}
	return found
}

func TestCanaryScannerFindsPlanted(t *testing.T) {
	canaries := []string{"CanarySN88x", "198.51.100.201"}
	for _, c := range canaries {
		for name, e := range canaryEncodings(c) {
			out := `{"msg":"x","leak":"` + e + `"}`
			if got := findCanaries(out, []string{c}); len(got) == 0 {
				t.Errorf("scanner missed %s planted as %s", c, name)
			}
		}
	}
	if got := findCanaries(`{"msg":"clean","ip":"198.51.100.0/24"}`, canaries); len(got) != 0 {
		t.Errorf("scanner false positive: %v", got)
	}
}

func TestLogsNeverCarryCanaries(t *testing.T) {
	const (
		rawSN  = "CanarySN88x"
		rawHW  = "hw:Canary-7f3e-91ab"
		rawIP4 = "198.51.100.201"
		rawIP6 = "2001:db8:cafe:f00d:1:2:3:4"
	)
	canaries := []string{rawSN, rawHW, rawIP4, rawIP6}
	sn, hw := mustSN(t, rawSN), mustHW(t, rawHW)
	ip4, ip6 := netip.MustParseAddr(rawIP4), netip.MustParseAddr(rawIP6)
	addr4, addr6 := NewAddr(ip4), NewAddr(ip6)
	ep := NewEndpoint(netip.AddrPortFrom(ip4, 51820))

	for _, format := range []string{"json", "text"} {
		t.Run(format, func(t *testing.T) {
			var buf bytes.Buffer
			log := NewLogger(&buf, slog.LevelDebug, format)

			// Typed values, under any key.
			log.Info("typed", slog.Any("sn", sn), slog.Any("device", sn), slog.Any("hwid", hw), slog.Any("x", hw),
				slog.Any("ip", addr4), slog.Any("source", addr6), slog.Any("endpoint", ep), slog.Any("peer", ep))
			// Plain values under personal-data keys.
			for _, key := range []string{"sn", "SN", "serial", "serial_number", "serialNumber", "device_sn"} {
				log.Info("plain sn", key, rawSN)
			}
			for _, key := range []string{"hwid", "HWID", "hardware_id", "hardwareID"} {
				log.Info("plain hwid", key, rawHW)
			}
			for _, key := range []string{"ip", "client_ip", "clientIP", "addr", "address", "remote", "remote_addr", "remoteAddr", "peer_addr", "source", "endpoint"} {
				log.Info("plain ip", key, rawIP4, key+"6", rawIP6)
			}
			log.Info("net types", "ip", ip4, "addr", ip6, "remote", net.ParseIP(rawIP4), "endpoint", netip.AddrPortFrom(ip6, 1),
				"peer_addr", &net.UDPAddr{IP: net.ParseIP(rawIP4), Port: 51820}, "serial", []byte(rawSN), "hwid", []byte(rawHW))
			// Formatted into the message, every verb.
			for _, verb := range []string{"%v", "%s", "%q", "%+v", "%#v", "%x", "%X", "%d"} {
				log.Info(fmt.Sprintf("fmt "+verb+" "+verb+" "+verb+" "+verb+" "+verb, sn, hw, addr4, addr6, ep))
			}
			log.Info(fmt.Sprintf("struct %+v %#v", struct {
				SN   SerialNumber
				HW   HardwareID
				Addr Addr
			}{sn, hw, addr4}, []SerialNumber{sn}))
			// Through With, WithGroup and groups.
			log.With("sn", rawSN, "ip", rawIP4).Info("with")
			log.WithGroup("client").Info("group", "ip", rawIP4, "serial_number", rawSN)
			log.WithGroup("remote").Info("sensitive group", "v", rawIP6, "w", rawSN)
			log.Info("nested", slog.Group("peer", slog.String("addr", rawIP4), slog.Group("device", slog.String("hwid", rawHW))))
			log.Debug("debug", "source_ip", rawIP4)

			out := buf.String()
			if n := strings.Count(out, "\n"); n < 30 {
				t.Fatalf("only %d log lines written", n)
			}
			if found := findCanaries(out, canaries); len(found) > 0 {
				t.Fatalf("canaries in the log: %v\n%s", found, out)
			}
			// What may appear does.
			for _, want := range []string{"198.51.100.0/24", "2001:db8:cafe::/48", Redacted, "[serial-number]", "[hardware-id]", "[endpoint]"} {
				if !strings.Contains(out, want) {
					t.Errorf("log lacks %q", want)
				}
			}
		})
	}
}
