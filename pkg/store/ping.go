package store

import (
	"context"
	"fmt"
)

// Ping checks that the database answers (readiness).
func (s *SQLite) Ping(ctx context.Context) error {
	if err := s.r.PingContext(ctx); err != nil {
		return fmt.Errorf("store: ping: %w", err)
	}
	return nil
}
