package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/planetxlabs/dasset-gateway/internal/poll"
	"github.com/planetxlabs/dasset-gateway/scripts/internal/netnstest"
)

// The test binary, re-executed inside a namespace, can also serve or dial
// one TCP connection (see TestMain).
const (
	// tcpEchoEnv (HOST:PORT) makes it listen, print "listening", accept one
	// connection, answer "<remote address> said <line>" and exit.
	tcpEchoEnv = "DASSET_E2E_TCPECHO"
	// tcpDialEnv (HOST:PORT) makes it dial (retrying for up to 5s), send
	// "hello device\n" and print the whole answer.
	tcpDialEnv = "DASSET_E2E_TCPDIAL"
)

// tcpEcho serves one connection on addr; the exit code is 0 only if it did.
func tcpEcho(addr string) int {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer ln.Close()
	fmt.Println("listening")
	_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(60 * time.Second))
	c, err := ln.Accept()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		fmt.Fprintln(os.Stderr, "read:", err)
		return 1
	}
	remote := c.RemoteAddr().(*net.TCPAddr).IP.String()
	fmt.Printf("accepted from %s\n", remote)
	if _, err := fmt.Fprintf(c, "%s said %s", remote, line); err != nil {
		fmt.Fprintln(os.Stderr, "write:", err)
		return 1
	}
	return 0
}

// tcpDial talks to one tcpEcho; the exit code is 0 only for a full answer.
func tcpDial(addr string) int {
	var c net.Conn
	err := poll.Until(context.Background(), 10*time.Second, 100*time.Millisecond, func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr, time.Second)
		return err
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "hello device\n"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	b, err := io.ReadAll(c)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Print(string(b))
	return 0
}

// dropReasons are the hub's drop counters this test watches.
var dropReasons = []string{"no_session", "client_to_client", "device_to_device"}

// dropMeter reads the gateway's router drop counters. The gateway reads
// them at every scrape (only its WireGuard figures are cached), so a drop
// shows in the next scrape.
type dropMeter struct{ g *gateway }

// fresh scrapes the drop counters by reason.
func (m *dropMeter) fresh() map[string]float64 {
	t := m.g.h.T
	t.Helper()
	body, err := m.g.Get(netnstest.MetricsURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	vals := map[string]float64{}
	for _, r := range dropReasons {
		v, err := counterValue(body, "dasset_gateway_router_dropped_packets_total", map[string]string{"reason": r})
		if err != nil {
			t.Fatal(err)
		}
		vals[r] = v
	}
	return vals
}

// expectRise checks that reason rose from before to after and, if alone,
// that no other watched reason did.
func expectRise(t interface {
	Helper()
	Fatalf(string, ...any)
	Logf(string, ...any)
}, what, reason string, before, after map[string]float64, alone bool) {
	t.Helper()
	if after[reason] <= before[reason] {
		t.Fatalf("%s: hub %s drops %v → %v, want a rise (before %v, after %v)", what, reason, before[reason], after[reason], before, after)
	}
	if alone {
		for _, r := range dropReasons {
			if r != reason && after[r] != before[r] {
				t.Fatalf("%s: hub %s drops also moved %v → %v; want only %s (before %v, after %v)", what, r, before[r], after[r], reason, before, after)
			}
		}
	}
	t.Logf("%s: dropped by the hub as %s (%v → %v)", what, reason, before[reason], after[reason])
}

// findRecord returns the time of the first record p logged with msg and
// every attribute in attrs.
func findRecord(p *netnstest.Proc, msg string, attrs map[string]string) (time.Time, bool) {
	for _, r := range logRecordsOf(p) {
		if r["msg"] != msg {
			continue
		}
		ok := true
		for k, v := range attrs {
			if fmt.Sprint(r[k]) != v {
				ok = false
			}
		}
		if ok {
			ts, _ := r["time"].(string)
			at, err := time.Parse(time.RFC3339Nano, ts)
			if err != nil {
				return time.Time{}, true
			}
			return at, true
		}
	}
	return time.Time{}, false
}

// hasRecord reports whether p logged a record with msg and attrs.
func hasRecord(p *netnstest.Proc, msg string, attrs map[string]string) bool {
	_, ok := findRecord(p, msg, attrs)
	return ok
}

// waitRecord waits up to within for p to log msg with attrs, and returns
// the record's time stamp.
func (h *harness) waitRecord(p *netnstest.Proc, within time.Duration, msg string, attrs map[string]string) (time.Time, error) {
	var at time.Time
	err := h.Poll(within, 20*time.Millisecond, func() error {
		var ok bool
		if at, ok = findRecord(p, msg, attrs); ok {
			if at.IsZero() {
				return fmt.Errorf("%s: %q record without a readable time", p.Name, msg)
			}
			return nil
		}
		return fmt.Errorf("%s: no %q record with %v", p.Name, msg, attrs)
	})
	return at, err
}

// firstV4 is the first IPv4 prefix's address among space-separated prefixes.
func firstV4(prefixes string) string {
	for _, f := range strings.Fields(prefixes) {
		if a, _, ok := strings.Cut(f, "/"); ok && !strings.Contains(a, ":") {
			return a
		}
	}
	return ""
}

// pingReply matches a reply line of `ping -D`: its Unix time.
var pingReply = regexp.MustCompile(`^\[(\d+\.\d+)\] \d+ bytes from`)

// replyTimes are the times of the echo replies in `ping -D` output.
func replyTimes(out string) []time.Time {
	var ts []time.Time
	for _, line := range strings.Split(out, "\n") {
		m := pingReply.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		f, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			continue
		}
		sec := int64(f)
		ts = append(ts, time.Unix(sec, int64((f-float64(sec))*1e9)))
	}
	return ts
}
