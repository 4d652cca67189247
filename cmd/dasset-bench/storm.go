package main

import (
	"bufio"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/planetxlabs/dasset-gateway/pkg/agent"
	"github.com/planetxlabs/dasset-gateway/pkg/tlsutil"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// enrollBatch is how many devices one EnrollDevices call carries (as dassetctl).
const enrollBatch = 1000

// stormConfig is one boot storm: devices logging in once each, concurrency
// at a time, each over its own new TLS connection.
type stormConfig struct {
	// Gateway is one gateway's HOST:PORT, or several, comma-separated (a
	// fleet on one registry): device i logs in to the (i mod n)-th.
	Gateway     string
	Pin         string
	Devices     int
	Concurrency int
	Prefix      string
	Timeout     time.Duration
	Version     string
}

func (c stormConfig) validate() error {
	switch {
	case c.Devices < 1:
		return fmt.Errorf("--devices %d: want at least 1", c.Devices)
	case c.Concurrency < 1:
		return fmt.Errorf("--concurrency %d: want at least 1", c.Concurrency)
	case c.Timeout <= 0:
		return fmt.Errorf("--timeout %s: want a positive duration", c.Timeout)
	}
	if _, err := serial(c.Prefix, c.Devices-1); err != nil {
		return err
	}
	return nil
}

// serial is the serial number of device i; its hardware id is "HW-" + serial.
func serial(prefix string, i int) (string, error) {
	s := fmt.Sprintf("%s%06d", prefix, i)
	if len(s) > 64 {
		return "", fmt.Errorf("--prefix %q: serial numbers would be %d characters; at most 64", prefix, len(s))
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return "", fmt.Errorf("--prefix %q: %q is not allowed in a serial number (A-Z a-z 0-9 - _ .)", prefix, r)
		}
	}
	return s, nil
}

func hardwareID(sn string) string { return "HW-" + sn }

// storm runs the boot storm and returns one sample per device, in device
// order, and the wall time from the first dial to the last answer.
func storm(ctx context.Context, c stormConfig) ([]sample, time.Duration, error) {
	reqs := make([]*gatewayv1.DeviceLoginRequest, c.Devices)
	for i := range reqs {
		sn, err := serial(c.Prefix, i)
		if err != nil {
			return nil, 0, err
		}
		// A fresh Curve25519 key per device, made before the clock starts.
		k, err := ecdh.X25519().GenerateKey(rand.Reader)
		if err != nil {
			return nil, 0, fmt.Errorf("key: %w", err)
		}
		reqs[i] = &gatewayv1.DeviceLoginRequest{
			SerialNumber: sn, HardwareId: hardwareID(sn),
			PublicKey: k.PublicKey().Bytes(), AgentVersion: c.Version,
		}
	}
	opts := agent.TLSOptions{Pin: c.Pin}
	if err := opts.Validate(); err != nil {
		return nil, 0, fmt.Errorf("--pin: %w", err)
	}
	gateways, err := agent.ParseGateways(c.Gateway)
	if err != nil {
		return nil, 0, fmt.Errorf("--gateway: %w", err)
	}
	samples := make([]sample, c.Devices)
	next := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for range c.Concurrency {
		wg.Go(func() {
			for i := range next {
				samples[i] = loginOnce(ctx, gateways[i%len(gateways)], c, opts, reqs[i])
				samples[i].gateway = gateways[i%len(gateways)]
			}
		})
	}
feed:
	for i := range reqs {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	wall := time.Since(start)
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	return samples, wall, nil
}

// loginOnce makes a new gRPC connection (so a new TLS handshake), calls
// Login once and closes the connection. The latency covers the handshake.
func loginOnce(ctx context.Context, gateway string, c stormConfig, opts agent.TLSOptions, req *gatewayv1.DeviceLoginRequest) sample {
	t0 := time.Now()
	conn, err := agent.Dial(gateway, opts)
	if err != nil {
		return sample{latency: time.Since(t0), code: "Dial", msg: err.Error()}
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	_, err = gatewayv1.NewDeviceServiceClient(conn).Login(cctx, req)
	lat := time.Since(t0)
	if err != nil {
		st := status.Convert(err)
		return sample{latency: lat, code: st.Code().String(), msg: st.Message()}
	}
	return sample{latency: lat}
}

// enroll enrolls the storm's devices through the AdminService on the unix
// socket at path, in batches, and returns how many were new.
func enroll(ctx context.Context, path string, c stormConfig) (int64, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return 0, fmt.Errorf("--enroll-socket %q: %w", path, err)
	}
	conn, err := grpc.NewClient("unix://"+abs, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return 0, fmt.Errorf("--enroll-socket %q: %w", path, err)
	}
	defer conn.Close()
	client := gatewayv1.NewAdminServiceClient(conn)
	var enrolled int64
	for start := 0; start < c.Devices; start += enrollBatch {
		end := min(start+enrollBatch, c.Devices)
		batch := make([]*gatewayv1.DeviceEnrollment, 0, end-start)
		for i := start; i < end; i++ {
			sn, err := serial(c.Prefix, i)
			if err != nil {
				return enrolled, err
			}
			batch = append(batch, &gatewayv1.DeviceEnrollment{SerialNumber: sn, HardwareId: hardwareID(sn)})
		}
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		resp, err := client.EnrollDevices(cctx, &gatewayv1.EnrollDevicesRequest{Devices: batch})
		cancel()
		if err != nil {
			return enrolled, fmt.Errorf("enroll devices %d..%d over %s: %w", start, end-1, abs, err)
		}
		enrolled += resp.GetEnrolled()
	}
	return enrolled, nil
}

// bareServer is the reference: a gRPC server with the gateway's TLS setup
// (a self-signed ECDSA P-256 certificate, TLS 1.3) whose Login does nothing.
type bareServer struct {
	gatewayv1.UnimplementedDeviceServiceServer
}

// Login returns an empty response.
func (bareServer) Login(context.Context, *gatewayv1.DeviceLoginRequest) (*gatewayv1.DeviceLoginResponse, error) {
	return &gatewayv1.DeviceLoginResponse{}, nil
}

// startBaseline serves bareServer on a free loopback port with a certificate
// made in dir. It returns the address, the certificate pin and a stop func.
func startBaseline(dir string) (addr, pin string, stop func(), err error) {
	certFile, keyFile, pin, err := tlsutil.EnsureSelfSigned(dir, nil, time.Now())
	if err != nil {
		return "", "", nil, err
	}
	tc, err := tlsutil.ServerConfig(certFile, keyFile, "")
	if err != nil {
		return "", "", nil, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", "", nil, fmt.Errorf("baseline listener: %w", err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tc)))
	gatewayv1.RegisterDeviceServiceServer(srv, bareServer{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	return lis.Addr().String(), pin, func() { srv.Stop(); <-done }, nil
}

// memory reads VmRSS and VmHWM (KiB) of process pid from /proc.
func memory(pid int) (rss, peak int64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("--pid %d: %w", pid, err)
	}
	defer f.Close()
	return parseStatus(f)
}

// parseStatus reads VmRSS and VmHWM (KiB) from a /proc/PID/status file.
func parseStatus(f io.Reader) (rss, peak int64, err error) {
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || name != "VmRSS" && name != "VmHWM" {
			continue
		}
		fields := strings.Fields(val)
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, 0, fmt.Errorf("status: %s: unexpected value %q", name, val)
		}
		n, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("status: %s: %w", name, err)
		}
		if name == "VmRSS" {
			rss = n
		} else {
			peak = n
		}
	}
	if err := sc.Err(); err != nil {
		return 0, 0, fmt.Errorf("status: %w", err)
	}
	if rss == 0 {
		return 0, 0, errors.New("status: no VmRSS line")
	}
	return rss, peak, nil
}

// freePorts returns n currently free loopback ports of network ("tcp" or "udp").
func freePorts(network string, n int) ([]int, error) {
	var ports []int
	var closers []func() error
	defer func() {
		for _, c := range closers {
			_ = c()
		}
	}()
	for range n {
		switch network {
		case "tcp":
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return nil, err
			}
			closers = append(closers, l.Close)
			ports = append(ports, l.Addr().(*net.TCPAddr).Port)
		case "udp":
			c, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				return nil, err
			}
			closers = append(closers, c.Close)
			ports = append(ports, c.LocalAddr().(*net.UDPAddr).Port)
		default:
			return nil, fmt.Errorf("network %q: want tcp or udp", network)
		}
	}
	return ports, nil
}

// firstCertDER returns the DER of the first CERTIFICATE block of PEM data.
func firstCertDER(data []byte) ([]byte, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no PEM CERTIFICATE block")
		}
		if b.Type == "CERTIFICATE" {
			return b.Bytes, nil
		}
	}
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times (100 on Linux).
const clockTicks = 100

// processCPU returns the user+system CPU seconds process pid has used.
func processCPU(pid int) (float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("--pid %d: %w", pid, err)
	}
	return parseStat(string(data))
}

// parseStat returns utime+stime, in seconds, from a /proc/PID/stat line.
func parseStat(line string) (float64, error) {
	// The command name (field 2) is in parentheses and may hold spaces.
	i := strings.LastIndexByte(line, ')')
	if i < 0 {
		return 0, errors.New("stat: no command name")
	}
	f := strings.Fields(line[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("stat: %d fields after the name; want at least 13", len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("stat: %w", err)
		}
		ticks += n
	}
	return float64(ticks) / clockTicks, nil
}

// selfCPU returns the user+system CPU seconds this process has used.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}
