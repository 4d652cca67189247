package daemon_test

import (
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/planetxlabs/dasset-gateway/pkg/agent"
)

// pingOnce sends one ICMP echo through the agent's netstack and waits for
// the matching reply.
func pingOnce(a *agent.Agent, dst netip.Addr) error {
	n := a.Net()
	if n == nil {
		return fmt.Errorf("agent has no netstack")
	}
	var src netip.Addr
	for _, p := range a.Addresses() {
		if p.Addr().Is4() == dst.Is4() {
			src = p.Addr()
		}
	}
	c, err := n.DialPingAddr(src, dst)
	if err != nil {
		return err
	}
	defer c.Close()
	var typ icmp.Type = ipv4.ICMPTypeEcho
	var reply icmp.Type = ipv4.ICMPTypeEchoReply
	proto := 1
	if dst.Is6() {
		typ, reply, proto = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply, 58
	}
	msg := icmp.Message{Type: typ, Body: &icmp.Echo{ID: 1234, Seq: 1, Data: []byte("dasset-ping")}}
	b, err := msg.Marshal(nil)
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
