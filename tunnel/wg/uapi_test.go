package wg

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestWritePeer(t *testing.T) {
	k := Key{0xab, 0x01}
	p := Peer{
		PublicKey:           k,
		AllowedIPs:          []netip.Prefix{netip.MustParsePrefix("100.80.0.2/32"), netip.MustParsePrefix("fd00::2/128")},
		Endpoint:            netip.MustParseAddrPort("[::1]:51820"),
		PersistentKeepalive: 25 * time.Second,
	}
	var b strings.Builder
	writePeer(&b, &p)
	want := "public_key=" + k.Hex() + "\n" +
		"replace_allowed_ips=true\n" +
		"allowed_ip=100.80.0.2/32\n" +
		"allowed_ip=fd00::2/128\n" +
		"endpoint=[::1]:51820\n" +
		"persistent_keepalive_interval=25\n"
	if b.String() != want {
		t.Fatalf("writePeer:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	writePeer(&b, &Peer{PublicKey: k})
	if strings.Contains(b.String(), "endpoint=") || !strings.Contains(b.String(), "persistent_keepalive_interval=0\n") {
		t.Fatalf("peer without endpoint/keepalive rendered as:\n%s", b.String())
	}
	b.Reset()
	writeRemove(&b, k)
	if b.String() != "public_key="+k.Hex()+"\nremove=true\n" {
		t.Fatalf("writeRemove: %q", b.String())
	}
}

// A "get=1" answer as wireguard-go renders it (device/uapi.go IpcGetOperation).
const sampleGet = `private_key=e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a
listen_port=51820
fwmark=7
public_key=b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33
preshared_key=0000000000000000000000000000000000000000000000000000000000000000
protocol_version=1
endpoint=127.0.0.1:58216
last_handshake_time_sec=1700000000
last_handshake_time_nsec=500
tx_bytes=38333
rx_bytes=2224
persistent_keepalive_interval=25
allowed_ip=100.80.0.2/32
allowed_ip=fd00::2/128
public_key=58402e695ba1772b1cc9309755f043251ea77fdcf10fbe63989ceb7e19321376
preshared_key=0000000000000000000000000000000000000000000000000000000000000000
protocol_version=1
last_handshake_time_sec=0
last_handshake_time_nsec=0
tx_bytes=0
rx_bytes=0
persistent_keepalive_interval=0
errno=0

`

func TestParseUAPI(t *testing.T) {
	st, err := parseUAPI(sampleGet)
	if err != nil {
		t.Fatal(err)
	}
	if !st.hasPrivateKey || st.listenPort != 51820 || len(st.peers) != 2 {
		t.Fatalf("device fields: %+v", st)
	}
	p := st.peers[0]
	if p.PublicKey != mustHexKey(t, "b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33") {
		t.Errorf("public key %s", p.PublicKey.Hex())
	}
	if p.Endpoint != netip.MustParseAddrPort("127.0.0.1:58216") {
		t.Errorf("endpoint %v", p.Endpoint)
	}
	if !p.LastHandshake.Equal(time.Unix(1700000000, 500)) {
		t.Errorf("last handshake %v", p.LastHandshake)
	}
	if p.TxBytes != 38333 || p.RxBytes != 2224 || p.PersistentKeepalive != 25*time.Second {
		t.Errorf("counters %+v", p)
	}
	if len(p.AllowedIPs) != 2 || p.AllowedIPs[0] != netip.MustParsePrefix("100.80.0.2/32") || p.AllowedIPs[1] != netip.MustParsePrefix("fd00::2/128") {
		t.Errorf("allowed IPs %v", p.AllowedIPs)
	}
	q := st.peers[1]
	if !q.LastHandshake.IsZero() || q.Endpoint.IsValid() || len(q.AllowedIPs) != 0 {
		t.Errorf("second peer %+v", q)
	}

	for _, bad := range []string{
		"listen_port=99999\n",
		"public_key=zz\n",
		"public_key=" + strings.Repeat("0", 64) + "\nrx_bytes=-1\n",
		"public_key=" + strings.Repeat("0", 64) + "\nallowed_ip=10.0.0.0/33\n",
		"no equals sign\n",
		"errno=-22\n",
	} {
		if _, err := parseUAPI(bad); err == nil {
			t.Errorf("parseUAPI(%q) accepted", bad)
		}
	}
}

func TestGetAnswerWithoutPrivateKey(t *testing.T) {
	for _, full := range []bool{false, true} {
		out := getAnswer(sampleGet, full)
		if strings.Contains(out, "private_key") || strings.Contains(out, "e84b5a6d") {
			t.Fatalf("private key left in:\n%s", out)
		}
		if !strings.HasPrefix(out, "listen_port=51820\n") || strings.Contains(out, "\n\n") {
			t.Fatalf("unexpected rendering:\n%s", out)
		}
		st, err := parseUAPI(out)
		if err != nil || len(st.peers) != 2 || st.hasPrivateKey {
			t.Fatalf("filtered answer parses as %+v, %v", st, err)
		}
	}
}

func TestGetAnswerTruncatesEndpoints(t *testing.T) {
	in := "listen_port=51820\n" +
		"public_key=" + strings.Repeat("1", 64) + "\nendpoint=198.51.100.77:41234\n" +
		"public_key=" + strings.Repeat("2", 64) + "\nendpoint=[2001:db8:1:2::5]:41235\n" +
		"public_key=" + strings.Repeat("3", 64) + "\nendpoint=[::ffff:203.0.113.9]:7\n" +
		"public_key=" + strings.Repeat("4", 64) + "\nendpoint=[fe80::1%eth0]:9\n" +
		"public_key=" + strings.Repeat("5", 64) + "\nendpoint=not-an-address\n"
	got := getAnswer(in, false)
	for _, want := range []string{"endpoint=198.51.100.0:0\n", "endpoint=[2001:db8:1::]:0\n", "endpoint=203.0.113.0:0\n", "endpoint=[fe80::]:0\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("truncated answer lacks %q:\n%s", want, got)
		}
	}
	for _, leak := range []string{".77", "41234", "1:2::5", "41235", ".9]", "eth0", "not-an-address"} {
		if strings.Contains(got, leak) {
			t.Errorf("truncated answer shows %q:\n%s", leak, got)
		}
	}
	if strings.Count(got, "endpoint=") != 4 {
		t.Errorf("want the unparsable endpoint dropped:\n%s", got)
	}
	if full := getAnswer(in, true); !strings.Contains(full, "endpoint=198.51.100.77:41234\n") || !strings.Contains(full, "endpoint=not-an-address\n") {
		t.Errorf("full answer changed endpoints:\n%s", full)
	}
}

func TestSummarize(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	peers := []PeerStatus{
		{LastHandshake: now.Add(-time.Minute), RxBytes: 1, TxBytes: 10},
		{LastHandshake: now.Add(-3 * time.Minute), RxBytes: 2, TxBytes: 20},
		{LastHandshake: now.Add(-30 * time.Minute)},
		{LastHandshake: now.Add(-2 * time.Hour)},
		{},
	}
	s := summarize(peers, now)
	want := Stats{Peers: 5, RxBytes: 3, TxBytes: 30, HandshakeAges: HandshakeAges{Under2m: 1, Under5m: 1, Under1h: 1, OlderOrNever: 2}}
	if s != want {
		t.Fatalf("summarize = %+v, want %+v", s, want)
	}
}

func TestRedact(t *testing.T) {
	tests := []struct{ in, want string }{
		{"failed to set endpoint 192.0.2.7:51820: bad", "failed to set endpoint [addr]: bad"},
		{"write udp [::]:51820->[2001:db8::1]:4242: sendmsg: no route", "write udp [addr]->[addr]: sendmsg: no route"},
		{"endpoint=198.51.100.9:1 x", "endpoint=[addr] x"},
		{"peer(AbCd…WxYz) - Sending keepalive packet", "peer(AbCd…WxYz) - Sending keepalive packet"},
		{"listen on 10.0.0.0/8.", "listen on [addr]."},
		{"errno 22, 51820 bytes", "errno 22, 51820 bytes"},
	}
	for _, tc := range tests {
		if got := redact(tc.in); got != tc.want {
			t.Errorf("redact(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestPrefixIndexOverlap(t *testing.T) {
	a, b := Key{1}, Key{2}
	x := newPrefixIndex()
	x.add(netip.MustParsePrefix("100.80.0.2/32"), a)
	x.add(netip.MustParsePrefix("100.90.0.0/16"), b)
	x.add(netip.MustParsePrefix("fd00::2/128"), a)
	none := func(Key) bool { return false }
	for _, tc := range []struct {
		q     string
		owner Key
		found bool
	}{
		{"100.80.0.2/32", a, true}, // same
		{"100.80.0.0/24", a, true}, // contains a's
		{"100.90.3.4/32", b, true}, // inside b's
		{"100.90.0.0/15", b, true}, // contains b's
		{"100.80.0.3/32", Key{}, false},
		{"fd00::/64", a, true},
		{"fd00::3/128", Key{}, false},
		{"0.0.0.0/0", Key{}, true}, // either owner
	} {
		_, owner, found := x.overlap(netip.MustParsePrefix(tc.q), none)
		if found != tc.found || (found && !tc.owner.IsZero() && owner != tc.owner) {
			t.Errorf("overlap(%s) = %v, %v; want %v, %v", tc.q, owner, found, tc.owner, tc.found)
		}
	}
	if _, _, found := x.overlap(netip.MustParsePrefix("100.80.0.2/32"), func(k Key) bool { return k == a }); found {
		t.Error("overlap did not skip the owner")
	}
	x.remove(netip.MustParsePrefix("100.80.0.2/32"), b) // not b's: no effect
	if _, _, found := x.overlap(netip.MustParsePrefix("100.80.0.2/32"), none); !found {
		t.Error("remove by a non-owner removed the prefix")
	}
	x.remove(netip.MustParsePrefix("100.80.0.2/32"), a)
	if _, _, found := x.overlap(netip.MustParsePrefix("100.80.0.2/32"), none); found {
		t.Error("prefix still indexed after remove")
	}
}

func TestCheckPeer(t *testing.T) {
	priv, _ := GeneratePrivateKey()
	d := &Device{pub: priv.PublicKey()}
	other, _ := GeneratePrivateKey()
	good := other.PublicKey()
	pfx := netip.MustParsePrefix
	tests := []struct {
		name    string
		p       Peer
		wantIs  error
		wantMsg string
	}{
		{"ok", Peer{PublicKey: good, AllowedIPs: []netip.Prefix{pfx("100.80.0.2/32")}, Endpoint: netip.MustParseAddrPort("127.0.0.1:1"), PersistentKeepalive: 25 * time.Second}, nil, ""},
		{"zero key", Peer{}, ErrInvalidKey, "public_key"},
		{"own key", Peer{PublicKey: d.pub}, ErrOwnKey, "public_key"},
		{"unmasked", Peer{PublicKey: good, AllowedIPs: []netip.Prefix{pfx("100.80.0.2/24")}}, ErrInvalidPeer, "host bits set (the prefix is 100.80.0.0/24)"},
		{"invalid prefix", Peer{PublicKey: good, AllowedIPs: []netip.Prefix{{}}}, ErrInvalidPeer, "allowed_ips[0]"},
		{"4in6", Peer{PublicKey: good, AllowedIPs: []netip.Prefix{pfx("::ffff:100.80.0.2/128")}}, ErrInvalidPeer, "IPv4-mapped"},
		{"self overlap", Peer{PublicKey: good, AllowedIPs: []netip.Prefix{pfx("100.80.0.0/24"), pfx("100.80.0.9/32")}}, ErrInvalidPeer, "allowed_ips[1] 100.80.0.9/32"},
		{"endpoint port 0", Peer{PublicKey: good, Endpoint: netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), 0)}, ErrInvalidPeer, "endpoint: "},
		{"endpoint unspecified", Peer{PublicKey: good, Endpoint: netip.MustParseAddrPort("0.0.0.0:5")}, ErrInvalidPeer, "endpoint: "},
		{"keepalive fraction", Peer{PublicKey: good, PersistentKeepalive: 1500 * time.Millisecond}, ErrInvalidPeer, "persistent_keepalive"},
		{"keepalive too long", Peer{PublicKey: good, PersistentKeepalive: 65536 * time.Second}, ErrInvalidPeer, "persistent_keepalive"},
		{"keepalive negative", Peer{PublicKey: good, PersistentKeepalive: -time.Second}, ErrInvalidPeer, "persistent_keepalive"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := d.checkPeer(tc.p)
			if tc.wantIs == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tc.wantIs) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("checkPeer error = %v, want %v containing %q", err, tc.wantIs, tc.wantMsg)
			}
			if strings.Contains(err.Error(), "192.0.2.1") {
				t.Fatalf("error echoes the endpoint: %v", err)
			}
		})
	}
}
