package canary

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// probeEnv makes the re-executed test binary run a probe (JSON) against the
// gateway's device and client API from inside a device namespace.
const probeEnv = "DASSET_CANARY_PROBE"

// probe is a list of calls made over one TLS connection to the gateway.
type probe struct {
	Addr  string      `json:"addr"`
	Pin   string      `json:"pin"` // SHA-256 of the gateway's certificate, hex
	Calls []probeCall `json:"calls"`
}

// probeCall is one call. Kind is device-login, client-login or
// open-session (with the token of the last successful client-login).
type probeCall struct {
	Name     string `json:"name"`
	Kind     string `json:"kind"`
	Serial   string `json:"serial,omitempty"`
	HWID     string `json:"hwid,omitempty"`
	KeyLen   int    `json:"key_len,omitempty"`
	Account  string `json:"account,omitempty"`
	Password string `json:"password,omitempty"`
}

// runProbe runs the probe in $probeEnv and prints "name code" per call.
func runProbe(spec string) int {
	var p probe
	if err := json.Unmarshal([]byte(spec), &p); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	pin, err := hex.DecodeString(p.Pin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	tc := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // the pin below is the check
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("no certificate")
			}
			if sum := sha256.Sum256(raw[0]); !bytes.Equal(sum[:], pin) {
				return errors.New("certificate does not match the pin")
			}
			return nil
		},
	}
	conn, err := grpc.NewClient("passthrough:///"+p.Addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer conn.Close()
	dev, cli := gatewayv1.NewDeviceServiceClient(conn), gatewayv1.NewClientServiceClient(conn)
	var token string
	for _, c := range p.Calls {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var err error
		switch c.Kind {
		case "device-login":
			key := make([]byte, c.KeyLen)
			_, _ = rand.Read(key)
			_, err = dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: c.Serial, HardwareId: c.HWID, PublicKey: key, AgentVersion: "canary"})
		case "client-login":
			var r *gatewayv1.ClientLoginResponse
			if r, err = cli.Login(ctx, &gatewayv1.ClientLoginRequest{Account: c.Account, Password: c.Password}); err == nil {
				token = r.GetAccessToken()
			}
		case "open-session":
			key := make([]byte, 32)
			_, _ = rand.Read(key)
			octx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
			_, err = cli.OpenSession(octx, &gatewayv1.OpenSessionRequest{SerialNumber: c.Serial, ClientPublicKey: key})
		default:
			err = fmt.Errorf("unknown kind %q", c.Kind)
		}
		cancel()
		fmt.Printf("%s %s\n", c.Name, status.Code(err))
	}
	return 0
}

// probeIn runs calls from namespace ns against addr and returns the status
// code name of each call by name.
func (h *harness) probeIn(ns, addr, pin string, calls []probeCall) (map[string]string, error) {
	spec, err := json.Marshal(probe{Addr: addr, Pin: pin, Calls: calls})
	if err != nil {
		return nil, err
	}
	out, err := h.SelfIn(ns, probeEnv, string(spec))
	if err != nil {
		return nil, err
	}
	codes := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if name, code, ok := strings.Cut(line, " "); ok {
			codes[name] = code
		}
	}
	if len(codes) != len(calls) {
		return codes, fmt.Errorf("probe in %s: %d answers to %d calls: %s", ns, len(codes), len(calls), out)
	}
	return codes, nil
}

// adminEnroll calls AdminService.EnrollDevices on the unix socket directly,
// past dassetctl's own checks, and returns the status code.
func adminEnroll(sock string, devs ...*gatewayv1.DeviceEnrollment) (string, error) {
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = gatewayv1.NewAdminServiceClient(conn).EnrollDevices(ctx, &gatewayv1.EnrollDevicesRequest{Devices: devs})
	return status.Code(err).String(), nil
}
