package wg

import (
	"strings"
	"testing"
)

// FuzzParseUAPI: whatever a UAPI socket answers, the parser returns peers or
// an error, never a peer without a public key.
func FuzzParseUAPI(f *testing.F) {
	k := strings.Repeat("ab", 32)
	for _, s := range []string{
		"private_key=" + k + "\nlisten_port=51820\npublic_key=" + k + "\nallowed_ip=100.80.0.2/32\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\nrx_bytes=10\ntx_bytes=20\nerrno=0\n",
		"listen_port=99999\n", "public_key=zz\n", "no equals\n", "errno=1\n", "public_key=" + k + "\nallowed_ip=garbage\n", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		st, err := parseUAPI(s)
		if err != nil {
			return
		}
		if st.listenPort < 0 || st.listenPort > 65535 {
			t.Fatalf("listen port %d", st.listenPort)
		}
		for i, p := range st.peers {
			if p.PublicKey.IsZero() && !strings.Contains(s, "public_key="+strings.Repeat("00", 32)) {
				t.Fatalf("peer %d without a public key", i)
			}
		}
	})
}

// FuzzKeyValidate: a key Validate accepts is canonical (top bit clear,
// below 2^255-19) and not zero; flipping its top bit makes it refused.
func FuzzKeyValidate(f *testing.F) {
	priv, _ := GeneratePrivateKey()
	pub := priv.PublicKey()
	f.Add(pub[:])
	f.Add(make([]byte, 32))
	f.Add([]byte(strings.Repeat("\xff", 32)))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) != KeySize {
			return
		}
		k := Key(b)
		if k.Validate() != nil {
			return
		}
		if k.IsZero() || !k.canonical() || k[KeySize-1]&0x80 != 0 {
			t.Fatalf("accepted %x", k)
		}
		k[KeySize-1] |= 0x80
		if k.Validate() == nil {
			t.Fatalf("accepted %x with the top bit set", k)
		}
	})
}
