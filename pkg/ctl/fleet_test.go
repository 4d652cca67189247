package ctl

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

func TestFleetList(t *testing.T) {
	key := make([]byte, 32)
	key[0] = 0xff
	f := &fakeAdmin{gateways: &gatewayv1.ListGatewaysResponse{Gateways: []*gatewayv1.FleetGateway{
		{InstanceId: "0a1b2c3d4e5f6071", PublicKey: key, Endpoint: "gw1.example.net:51820",
			StartedAt: timestamppb.New(testNow.Add(-2 * time.Hour)), HeartbeatAt: timestamppb.New(testNow.Add(-4 * time.Second)), Self: true,
			Devices: 1234, Sessions: 7},
		{InstanceId: "9f8e7d6c5b4a3921", PublicKey: key,
			StartedAt: timestamppb.New(testNow.Add(-3 * time.Hour)), HeartbeatAt: timestamppb.New(testNow.Add(-10 * time.Minute))},
	}}}
	sock := serveUnix(t, f)
	r := runCLI(t, "", nil, "--socket", sock, "fleet")
	want := [][]string{
		{"INSTANCE", "PUBLIC", "KEY", "ENDPOINT", "STARTED", "HEARTBEAT", "DEVICES", "SESSIONS"},
		{"0a1b2c3d4e5f6071", "*", "/wAAAAAAAA…", "gw1.example.net:51820", "2h", "ago", "4s", "ago", "1234", "7"},
		{"9f8e7d6c5b4a3921", "/wAAAAAAAA…", none, "3h", "ago", "10m", "ago", "0", "0"},
	}
	if r.code != ExitOK || fmt.Sprint(tableRows(r.stdout)) != fmt.Sprint(want) {
		t.Fatalf("exit %d, stdout\n%s\nstderr %q\nwant %q", r.code, r.stdout, r.stderr, want)
	}
	r = runCLI(t, "", nil, "--socket", sock, "fleet", "-o", "json")
	var got gatewayv1.ListGatewaysResponse
	if err := protojson.Unmarshal([]byte(r.stdout), &got); err != nil || !proto.Equal(&got, f.gateways) {
		t.Fatalf("json %q: %v", r.stdout, err)
	}
}

// TestBackupOfAPostgresGateway: dassetctl backup on the data_dir of a
// gateway whose registry is in PostgreSQL says so, instead of a bare "no
// such file".
func TestBackupOfAPostgresGateway(t *testing.T) {
	data := t.TempDir()
	if err := os.WriteFile(filepath.Join(data, "instance_id"), []byte("0a1b2c3d4e5f6071\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	env := Env{Stdout: &stdout, Stderr: &stderr, Getenv: func(string) string { return "" }}
	code := Run(context.Background(), []string{"backup", "--data-dir", data, "--out", filepath.Join(t.TempDir(), "b.db")}, env)
	if code == ExitOK || !strings.Contains(stderr.String(), "keeps its registry in PostgreSQL") {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
}
