package api

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Role is an operator permission.
type Role string

// Roles: operator may do everything that reveals no personal data; privacy
// may reveal, export and erase.
const (
	RoleOperator Role = "operator"
	RolePrivacy  Role = "privacy"
)

// Operator is a person allowed on the admin listener.
type Operator struct {
	Name  string
	Roles []Role
}

// Has reports whether the operator holds r.
func (o Operator) Has(r Role) bool {
	for _, x := range o.Roles {
		if x == r {
			return true
		}
	}
	return false
}

// Operators finds the operator behind a connection: by uid on the unix
// socket (SO_PEERCRED), by certificate common name on mutual TLS.
type Operators struct {
	ByUID  map[uint32]Operator
	ByName map[string]Operator
}

// PeerCred is the AuthInfo of a unix-socket connection: the kernel's view
// of the connecting process, which it cannot forge.
type PeerCred struct {
	credentials.CommonAuthInfo
	UID, GID uint32
	PID      int32
}

// AuthType implements credentials.AuthInfo.
func (PeerCred) AuthType() string { return "peercred" }

// peerCredCreds are transport credentials for a unix socket that read the
// peer's credentials during the handshake; the transport stays plaintext
// (the socket's file mode and the uid check protect it).
type peerCredCreds struct{}

// UnixPeerCredentials returns transport credentials for the admin socket.
func UnixPeerCredentials() credentials.TransportCredentials { return peerCredCreds{} }

func (peerCredCreds) ClientHandshake(_ context.Context, _ string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c, PeerCred{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}, nil
}

func (peerCredCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, nil, errors.New("admin socket: not a unix connection")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, nil, err
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return nil, nil, err
	}
	if serr != nil {
		return nil, nil, fmt.Errorf("admin socket: SO_PEERCRED: %w", serr)
	}
	return c, PeerCred{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		UID:            cred.Uid, GID: cred.Gid, PID: cred.Pid,
	}, nil
}

func (peerCredCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}
func (p peerCredCreds) Clone() credentials.TransportCredentials { return p }
func (peerCredCreds) OverrideServerName(string) error           { return nil }

type operatorKey struct{}

// OperatorFrom returns the operator the admin interceptor authenticated.
func OperatorFrom(ctx context.Context) (Operator, bool) {
	o, ok := ctx.Value(operatorKey{}).(Operator)
	return o, ok
}

func (ops Operators) identify(ctx context.Context) (Operator, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Operator{}, status.Error(codes.Unauthenticated, "no peer information")
	}
	switch ai := p.AuthInfo.(type) {
	case PeerCred:
		if o, ok := ops.ByUID[ai.UID]; ok {
			return o, nil
		}
		return Operator{}, status.Error(codes.PermissionDenied, "uid "+strconv.FormatUint(uint64(ai.UID), 10)+" is not an operator (admin.operators)")
	case credentials.TLSInfo:
		if len(ai.State.VerifiedChains) == 0 || len(ai.State.VerifiedChains[0]) == 0 {
			return Operator{}, status.Error(codes.Unauthenticated, "client certificate required")
		}
		cn := ai.State.VerifiedChains[0][0].Subject.CommonName
		if o, ok := ops.ByName[cn]; ok {
			return o, nil
		}
		return Operator{}, status.Error(codes.PermissionDenied, "certificate "+strconv.Quote(cn)+" is not an operator (admin.operators)")
	default:
		return Operator{}, status.Error(codes.Unauthenticated, "unknown transport")
	}
}

// requireRole checks a role inside a handler.
func requireRole(ctx context.Context, r Role) (Operator, error) {
	o, ok := OperatorFrom(ctx)
	if !ok {
		return Operator{}, status.Error(codes.Unauthenticated, "no operator")
	}
	if !o.Has(r) {
		return Operator{}, status.Error(codes.PermissionDenied, "this needs the "+string(r)+" role; operator "+o.Name+" lacks it")
	}
	return o, nil
}
