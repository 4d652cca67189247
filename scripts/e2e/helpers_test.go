package e2e

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/planetxlabs/dasset-gateway/scripts/internal/netnstest"
)

// TestMain lets the test binary, re-executed inside a network namespace, do
// one small network job there and exit: an HTTP GET of the gateway's
// loopback-only metrics listener (netnstest.HTTPGetEnv), or one TCP echo
// connection (tcpEchoEnv, tcpDialEnv).
func TestMain(m *testing.M) {
	netnstest.Main(m, map[string]netnstest.Job{tcpEchoEnv: tcpEcho, tcpDialEnv: tcpDial})
}

// harness is the shared netns harness with this package's topology: veths
// on 10.213.<n>.0/24, a gateway per test, `wg` at hand.
type harness struct {
	*netnstest.Harness
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	return &harness{netnstest.New(t, netnstest.Options{Tools: []string{"wg", "ping"}})}
}

// counterValue sums a counter's samples whose labels include want.
func counterValue(exposition []byte, name string, want map[string]string) (float64, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(exposition))
	if err != nil {
		return 0, fmt.Errorf("parse metrics: %w", err)
	}
	fam, ok := fams[name]
	if !ok {
		return 0, fmt.Errorf("metric %s: not exposed", name)
	}
	var sum float64
	for _, m := range fam.GetMetric() {
		match := 0
		for _, l := range m.GetLabel() {
			if v, ok := want[l.GetName()]; ok && v == l.GetValue() {
				match++
			}
		}
		if match == len(want) && m.GetCounter() != nil {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum, nil
}
