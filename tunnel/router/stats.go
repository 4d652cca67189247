package router

// Reason is why the router dropped a packet.
type Reason uint8

// The drop reasons. Their names (Reason.String) are stable: they are metric
// label values.
const (
	// ReasonMalformed: truncated or garbage IP header, unknown version.
	ReasonMalformed Reason = iota
	// ReasonNoSession: a client↔device packet whose pair has no open session.
	ReasonNoSession
	// ReasonDeviceToDevice: devices never reach each other.
	ReasonDeviceToDevice
	// ReasonClientToClient: clients never reach each other.
	ReasonClientToClient
	// ReasonNotVirtual: a peer's packet to a destination outside the virtual network.
	ReasonNotVirtual
	// ReasonSpoofedSource: a peer's packet whose source is outside the
	// virtual network or is one of the gateway's own addresses.
	ReasonSpoofedSource
	// ReasonQueueFull: the hairpin queue was full.
	ReasonQueueFull
	// ReasonHostSource: a host packet whose source is not a gateway address.
	ReasonHostSource
	// ReasonOversize: a packet larger than the buffer Read was given.
	ReasonOversize

	numReasons
)

var reasonNames = [numReasons]string{
	ReasonMalformed:      "malformed",
	ReasonNoSession:      "no_session",
	ReasonDeviceToDevice: "device_to_device",
	ReasonClientToClient: "client_to_client",
	ReasonNotVirtual:     "not_virtual",
	ReasonSpoofedSource:  "spoofed_source",
	ReasonQueueFull:      "queue_full",
	ReasonHostSource:     "host_source",
	ReasonOversize:       "oversize",
}

// String returns the reason's stable name, e.g. "no_session".
func (r Reason) String() string {
	if r >= numReasons {
		return "unknown"
	}
	return reasonNames[r]
}

// Reasons lists every drop reason name, so that a metrics exporter can
// pre-create all its label values.
func Reasons() []string {
	out := make([]string, numReasons)
	copy(out, reasonNames[:])
	return out
}

// Stats is a snapshot of the router's counters.
type Stats struct {
	// Dropped counts dropped packets by reason name; every reason of
	// Reasons() is present.
	Dropped map[string]uint64
	// Hairpinned counts peer packets put back towards another peer
	// (enqueued; a packet later dropped as oversize is counted here too).
	Hairpinned uint64
	// ToHost counts peer packets handed to the inner device (the host).
	ToHost uint64
	// FromHost counts host packets passed into the tunnel.
	FromHost uint64
}

// Stats returns a snapshot of the counters.
func (r *Router) Stats() Stats {
	s := Stats{
		Dropped:    make(map[string]uint64, numReasons),
		Hairpinned: r.hairpinned.Load(),
		ToHost:     r.toHost.Load(),
		FromHost:   r.fromHost.Load(),
	}
	for i := range r.dropped {
		s.Dropped[Reason(i).String()] = r.dropped[i].Load()
	}
	return s
}

func (r *Router) drop(reason Reason) {
	r.dropped[reason].Add(1)
}
