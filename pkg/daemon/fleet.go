package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/planetxlabs/dasset-gateway/internal/atomicfile"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
)

// heartbeatInterval is how often a gateway records itself in the
// registry's gateways table.
const heartbeatInterval = 10 * time.Second

// instanceFile holds the gateway's instance id in data_dir.
const instanceFile = "instance_id"

// loadInstanceID reads the gateway's instance id from data_dir, making one
// (16 random hex digits) on first start: a gateway keeps its id, and its row
// in the gateways table, across restarts.
func loadInstanceID(dataDir string) (string, error) {
	path := filepath.Join(dataDir, instanceFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		id := strings.TrimSpace(string(b))
		if !validInstanceID(id) {
			return "", fmt.Errorf("instance id: %s holds %q, not 1 to 64 characters of a-z 0-9 -; remove it to make a new one", path, id)
		}
		return id, nil
	case !errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("instance id: %w", err)
	}
	raw := make([]byte, 8)
	if _, err := rand.Read(raw); err != nil {
		return "", fmt.Errorf("instance id: %w", err)
	}
	id := hex.EncodeToString(raw)
	if err := atomicfile.Write(path, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("instance id: %w", err)
	}
	return id, nil
}

func validInstanceID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// heartbeat records this gateway in the registry now.
func (d *Daemon) heartbeat(ctx context.Context) error {
	return d.st.Heartbeat(ctx, store.Gateway{
		InstanceID: d.instance, PublicKey: store.Key(d.keys.GatewayPublicKey()), Endpoint: d.cfg.Tunnel.Endpoint,
		StartedAt: d.started, HeartbeatAt: d.now(),
	})
}

// heartbeats records this gateway every heartbeatInterval until ctx ends;
// a failed heartbeat (the database away) is logged and tried again at the
// next tick.
func (d *Daemon) heartbeats(ctx context.Context) error {
	t := time.NewTicker(heartbeatInterval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		hctx, cancel := context.WithTimeout(ctx, heartbeatInterval)
		err := d.heartbeat(hctx)
		cancel()
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			d.log.Warn("gateway heartbeat failed; retrying", "error", err)
			failing = true
		case err == nil && failing:
			d.log.Info("gateway heartbeat recorded again")
			failing = false
		}
	}
}
