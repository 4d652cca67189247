package api

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"strconv"
	"strings"
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/gateway"
)

// Page sizes of the admin lists: what page_size 0 means, and the most one
// page holds (kept far below gRPC's 4 MiB message limit).
const (
	DefaultPageSize = 500
	MaxPageSize     = 5000
)

// pageSize reads a request's page_size: 0 is the default, larger than the
// maximum is the maximum.
func pageSize(n int32) (int, error) {
	switch {
	case n < 0:
		return 0, invalid("page_size", "must not be negative")
	case n == 0:
		return DefaultPageSize, nil
	default:
		return min(int(n), MaxPageSize), nil
	}
}

// Page tokens are opaque to callers: base64url of "<list>1:<key>", so a
// token of one list is refused by another. The key is where the next page
// starts after (keyset pagination).
func encodeToken(list, key string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(list + "1:" + key))
}

func decodeToken(list, tok string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(tok) > 256 {
		return "", invalid("page_token", "not a page token")
	}
	key, ok := bytes.CutPrefix(b, []byte(list+"1:"))
	if !ok {
		return "", invalid("page_token", "not a page token of this list")
	}
	return string(key), nil
}

func deviceCursor(tok string) (int64, error) {
	if tok == "" {
		return 0, nil
	}
	key, err := decodeToken("devices", tok)
	if err != nil {
		return 0, err
	}
	id, err := strconv.ParseInt(key, 10, 64)
	if err != nil || id < 0 {
		return 0, invalid("page_token", "not a page token of this list")
	}
	return id, nil
}

func sessionCursor(tok string) (gateway.SessionCursor, error) {
	if tok == "" {
		return gateway.SessionCursor{}, nil
	}
	key, err := decodeToken("sessions", tok)
	if err != nil {
		return gateway.SessionCursor{}, err
	}
	ns, id, ok := strings.Cut(key, ":")
	n, err := strconv.ParseInt(ns, 10, 64)
	if !ok || err != nil || id == "" {
		return gateway.SessionCursor{}, invalid("page_token", "not a page token of this list")
	}
	return gateway.SessionCursor{OpenedAt: time.Unix(0, n), ID: id}, nil
}

func sessionToken(v gateway.SessionView) string {
	return encodeToken("sessions", strconv.FormatInt(v.OpenedAt.UnixNano(), 10)+":"+v.ID)
}

func peerCursor(tok string) ([]byte, error) {
	if tok == "" {
		return nil, nil
	}
	key, err := decodeToken("peers", tok)
	if err != nil {
		return nil, err
	}
	k, err := hex.DecodeString(key)
	if err != nil || len(k) != 32 {
		return nil, invalid("page_token", "not a page token of this list")
	}
	return k, nil
}
