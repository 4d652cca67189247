package identity

import (
	"crypto/sha256"
	"strings"
	"testing"
)

// FuzzHashToken: only the canonical base64url form of 32 bytes is a token
// (one spelling per token, so a token cannot be presented two ways); its
// hash is SHA-256 of those bytes.
func FuzzHashToken(f *testing.F) {
	tok, _, _ := NewToken()
	for _, s := range []string{tok, "", "not-a-token", strings.Repeat("A", 43), strings.Repeat("A", 42) + "B", strings.Repeat("_", 43), tok + "=", strings.Repeat("\xff", 43)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, err := HashToken(s)
		if err != nil {
			return
		}
		b, derr := tokenEncoding.DecodeString(s)
		if derr != nil || len(b) != TokenLen || tokenEncoding.EncodeToString(b) != s {
			t.Fatalf("accepted non-canonical token %q", s)
		}
		if h != sha256.Sum256(b) {
			t.Fatalf("hash of %q is not SHA-256 of its bytes", s)
		}
	})
}
