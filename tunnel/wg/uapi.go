package wg

import (
	"bufio"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// This file speaks wireguard-go's UAPI text protocol
// (https://www.wireguard.com/xplatform/#configuration-protocol): it renders
// peer changes for IpcSet and parses IpcGet's output.

// writePeer renders the IpcSet lines that create p or replace its
// configuration (allowed IPs replaced, not merged).
func writePeer(b *strings.Builder, p *Peer) {
	b.WriteString("public_key=")
	b.WriteString(p.PublicKey.Hex())
	b.WriteString("\nreplace_allowed_ips=true\n")
	for _, pfx := range p.AllowedIPs {
		b.WriteString("allowed_ip=")
		b.WriteString(pfx.String())
		b.WriteByte('\n')
	}
	if p.Endpoint.IsValid() {
		b.WriteString("endpoint=")
		b.WriteString(p.Endpoint.String())
		b.WriteByte('\n')
	}
	b.WriteString("persistent_keepalive_interval=")
	b.WriteString(strconv.Itoa(int(p.PersistentKeepalive / time.Second)))
	b.WriteByte('\n')
}

// writeRemove renders the IpcSet lines that remove the peer with key k.
func writeRemove(b *strings.Builder, k Key) {
	b.WriteString("public_key=")
	b.WriteString(k.Hex())
	b.WriteString("\nremove=true\n")
}

// PeerStatus is one peer as the device reports it.
type PeerStatus struct {
	PublicKey  Key
	AllowedIPs []netip.Prefix
	// Endpoint is the peer's current UDP endpoint (zero if none is known).
	// It is personal data: keep it in memory only.
	Endpoint netip.AddrPort
	// LastHandshake is the time of the last completed handshake; zero if never.
	LastHandshake       time.Time
	RxBytes, TxBytes    uint64
	PersistentKeepalive time.Duration
}

// uapiState is a parsed IpcGet answer.
type uapiState struct {
	hasPrivateKey bool
	listenPort    int
	peers         []PeerStatus
}

// parseUAPI parses the output of IpcGet (a "get=1" answer without the
// trailing errno line, which it also accepts).
func parseUAPI(s string) (uapiState, error) {
	var st uapiState
	var cur *PeerStatus
	var hsSec, hsNsec int64
	finish := func() {
		if cur == nil {
			return
		}
		if hsSec != 0 || hsNsec != 0 {
			cur.LastHandshake = time.Unix(hsSec, hsNsec)
		}
		st.peers = append(st.peers, *cur)
		cur, hsSec, hsNsec = nil, 0, 0
	}
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 0, 4096), 64*1024)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if text == "" {
			continue
		}
		key, value, ok := strings.Cut(text, "=")
		if !ok {
			return uapiState{}, fmt.Errorf("uapi line %d: no '=' in %q", line, text)
		}
		bad := func(err error) error {
			return fmt.Errorf("uapi line %d: %s: %w", line, key, err)
		}
		if key == "public_key" {
			finish()
			k, err := parseHexKey(value)
			if err != nil {
				return uapiState{}, bad(err)
			}
			cur = &PeerStatus{PublicKey: k}
			continue
		}
		if cur == nil {
			switch key {
			case "private_key":
				st.hasPrivateKey = true
			case "listen_port":
				n, err := strconv.ParseUint(value, 10, 16)
				if err != nil {
					return uapiState{}, bad(err)
				}
				st.listenPort = int(n)
			case "errno":
				if value != "0" {
					return uapiState{}, fmt.Errorf("uapi: errno=%s", value)
				}
			}
			// Other device keys (fwmark, ...) are not needed here.
			continue
		}
		var err error
		switch key {
		case "allowed_ip":
			var p netip.Prefix
			if p, err = netip.ParsePrefix(value); err == nil {
				cur.AllowedIPs = append(cur.AllowedIPs, p)
			}
		case "endpoint":
			// The standard bind renders ip:port; other binds may not, and an
			// unparsable endpoint is left zero rather than failing the read.
			if ap, perr := netip.ParseAddrPort(value); perr == nil {
				cur.Endpoint = ap
			}
		case "last_handshake_time_sec":
			hsSec, err = strconv.ParseInt(value, 10, 64)
		case "last_handshake_time_nsec":
			hsNsec, err = strconv.ParseInt(value, 10, 64)
		case "rx_bytes":
			cur.RxBytes, err = strconv.ParseUint(value, 10, 64)
		case "tx_bytes":
			cur.TxBytes, err = strconv.ParseUint(value, 10, 64)
		case "persistent_keepalive_interval":
			var n uint64
			if n, err = strconv.ParseUint(value, 10, 16); err == nil {
				cur.PersistentKeepalive = time.Duration(n) * time.Second
			}
		case "errno":
			if value != "0" {
				return uapiState{}, fmt.Errorf("uapi: errno=%s", value)
			}
		}
		// preshared_key, protocol_version and unknown keys are ignored.
		if err != nil {
			return uapiState{}, bad(err)
		}
	}
	if err := sc.Err(); err != nil {
		return uapiState{}, fmt.Errorf("uapi: %w", err)
	}
	finish()
	return st, nil
}
