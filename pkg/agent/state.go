package agent

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/curve25519"

	"github.com/planetxlabs/dasset-gateway/internal/atomicfile"
)

const (
	keyFileName   = "private.key"
	tokenFileName = "token"
)

// ensureStateDir creates dir with mode 0700, or tightens an existing one to it.
func ensureStateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("state dir %s: not a directory", dir)
	}
	if st.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("state dir: %w", err)
		}
	}
	return nil
}

// loadOrCreateKey returns the device's WireGuard private key from
// dir/private.key, making a new clamped Curve25519 key on first use.
func loadOrCreateKey(dir string) (priv [32]byte, created bool, err error) {
	if err := ensureStateDir(dir); err != nil {
		return priv, false, err
	}
	path := filepath.Join(dir, keyFileName)
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(data)))
		if err != nil {
			return priv, false, fmt.Errorf("private key %s: not base64: %w", path, err)
		}
		if len(raw) != 32 {
			return priv, false, fmt.Errorf("private key %s: %d bytes, want 32", path, len(raw))
		}
		copy(priv[:], raw)
		if st, err := os.Stat(path); err == nil && st.Mode().Perm() != 0o600 {
			if err := os.Chmod(path, 0o600); err != nil {
				return priv, false, fmt.Errorf("private key %s: %w", path, err)
			}
		}
		return priv, false, nil
	case !errors.Is(err, fs.ErrNotExist):
		return priv, false, fmt.Errorf("private key: %w", err)
	}
	if _, err := rand.Read(priv[:]); err != nil {
		return priv, false, fmt.Errorf("private key: %w", err)
	}
	clamp(&priv)
	if err := atomicfile.Write(path, []byte(base64.StdEncoding.EncodeToString(priv[:])+"\n"), 0o600); err != nil {
		return priv, false, fmt.Errorf("private key: %w", err)
	}
	return priv, true, nil
}

// clamp applies the Curve25519 private key clamping (RFC 7748).
func clamp(k *[32]byte) {
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
}

// publicKey derives the Curve25519 public key of priv.
func publicKey(priv [32]byte) ([32]byte, error) {
	var pub [32]byte
	p, err := curve25519.X25519(priv[:], curve25519.Basepoint)
	if err != nil {
		return pub, fmt.Errorf("public key: %w", err)
	}
	copy(pub[:], p)
	return pub, nil
}

// ErrNoToken means the state directory holds no device token yet.
var ErrNoToken = errors.New("no device token: run `dasset-agent up` first so the device logs in")

func readToken(dir string) (string, error) {
	path := filepath.Join(dir, tokenFileName)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%s: %w", path, ErrNoToken)
	}
	if err != nil {
		return "", fmt.Errorf("device token: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return "", fmt.Errorf("%s is empty: %w", path, ErrNoToken)
	}
	return tok, nil
}

func writeToken(dir, token string) error {
	if err := atomicfile.Write(filepath.Join(dir, tokenFileName), []byte(token+"\n"), 0o600); err != nil {
		return fmt.Errorf("device token: %w", err)
	}
	return nil
}

func removeToken(dir string) error {
	err := os.Remove(filepath.Join(dir, tokenFileName))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("device token: %w", err)
	}
	return nil
}
