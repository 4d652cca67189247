package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/planetxlabs/dasset-gateway/internal/poll"
)

// pingFrom sends one ICMP echo from the netstack n (source: its address of
// dst's family among addrs) to dst and waits up to a second for the reply.
func pingFrom(n *netstack.Net, addrs []netip.Prefix, dst netip.Addr) error {
	if n == nil {
		return errors.New("no netstack")
	}
	var src netip.Addr
	for _, p := range addrs {
		if p.Addr().Is4() == dst.Is4() {
			src = p.Addr()
		}
	}
	c, err := n.DialPingAddr(src, dst)
	if err != nil {
		return err
	}
	defer c.Close()
	var typ, reply icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	proto := 1
	if dst.Is6() {
		typ, reply, proto = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply, 58
	}
	b, err := (&icmp.Message{Type: typ, Body: &icmp.Echo{ID: 4321, Seq: 1, Data: []byte("dasset-session")}}).Marshal(nil)
	if err != nil {
		return err
	}
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write(b); err != nil {
		return err
	}
	buf := make([]byte, 1500)
	nr, err := c.Read(buf)
	if err != nil {
		return err
	}
	m, err := icmp.ParseMessage(proto, buf[:nr])
	if err != nil {
		return err
	}
	if m.Type != reply {
		return fmt.Errorf("got ICMP %v, want echo reply", m.Type)
	}
	return nil
}

// pingUntil pings until a reply comes (nil) or within passes: a lost echo
// or a slow handshake on a loaded machine costs a retry, not the test.
func pingUntil(n *netstack.Net, addrs []netip.Prefix, dst netip.Addr, within time.Duration) error {
	err := poll.Until(context.Background(), within, 100*time.Millisecond, func() error { return pingFrom(n, addrs, dst) })
	if err != nil {
		return fmt.Errorf("no echo reply from %s: %w", dst, err)
	}
	return nil
}
