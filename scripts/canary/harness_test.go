package canary

import (
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/scripts/internal/netnstest"
)

// garbageEnv, set to HOST:PORT, makes the re-executed test binary connect
// there over TCP, send a few bytes that are neither TLS nor HTTP/2, and
// close (a probe of the gateway's error path; see TestMain).
const garbageEnv = "DASSET_CANARY_GARBAGE"

// TestMain lets the test binary, re-executed inside a network namespace, do
// one small network job there and exit: an HTTP GET of the gateway's
// loopback-only metrics listener (netnstest.HTTPGetEnv), a probe of the
// gateway's API (probeEnv) or a garbage connection (garbageEnv).
func TestMain(m *testing.M) {
	netnstest.Main(m, map[string]netnstest.Job{probeEnv: runProbe, garbageEnv: sendGarbage})
}

func sendGarbage(addr string) int {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("GET / HTTP/1.0\r\n\r\n\x16\x03\x01\x00\x05hello")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	_, _ = io.Copy(io.Discard, c) // until the gateway closes or the deadline
	return 0
}

// harness is the shared netns harness with this package's topology (see
// topology_test.go).
type harness struct {
	*netnstest.Harness
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	return &harness{netnstest.New(t, netnstest.Options{Who: "privacy canary", Tools: []string{"ping"}, TailLines: 30})}
}
