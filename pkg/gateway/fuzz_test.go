package gateway

import (
	"crypto/sha256"
	"strings"
	"testing"
)

// FuzzBindingCode: a typed binding code is accepted only when, with case,
// dashes and spaces normalised, it is 10 characters of the code alphabet;
// its hash is that of the normalised form, which a made code has.
func FuzzBindingCode(f *testing.F) {
	code, _, _ := newBindingCode()
	for _, s := range []string{code, strings.ToLower(code), code[:5] + "-" + code[5:], "", "0000000000", "not a code!", "ı" + code[1:], strings.Repeat("-", 100)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, err := hashBindingCode(s)
		if err != nil {
			return
		}
		c := strings.ToUpper(strings.NewReplacer("-", "", " ", "").Replace(s))
		if len(c) != bindLen {
			t.Fatalf("accepted %q (normalised %q)", s, c)
		}
		for i := 0; i < len(c); i++ {
			if !strings.ContainsRune(bindAlphabet, rune(c[i])) {
				t.Fatalf("accepted %q with %q", s, c[i])
			}
		}
		if h != sha256.Sum256([]byte(c)) {
			t.Fatalf("hash of %q is not that of its normalised form", s)
		}
	})
}
