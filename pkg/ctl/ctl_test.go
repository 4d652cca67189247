package ctl

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	writeFileAt(t, path, content)
	return path
}

func writeFileAt(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestEnrollCSVSendsExactlyTheRows(t *testing.T) {
	f := &fakeAdmin{}
	sock := serveUnix(t, f)
	csvPath := writeFile(t, "devices.csv", `serial_number,hardware_id
# batch 7 from the factory

DS-0001,hw:aa:01
  DS-0002 , hw:aa:02
# a comment between rows
DS-0003,"hw:aa:03"
`)
	r := runCLI(t, "", nil, "--socket", sock, "enroll", "--file", csvPath, "--after-erasure")
	if r.code != ExitOK {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	reqs := received[*gatewayv1.EnrollDevicesRequest](f)
	if len(reqs) != 1 {
		t.Fatalf("got %d EnrollDevices requests, want 1", len(reqs))
	}
	want := &gatewayv1.EnrollDevicesRequest{AfterErasure: true, Devices: []*gatewayv1.DeviceEnrollment{
		{SerialNumber: "DS-0001", HardwareId: "hw:aa:01"},
		{SerialNumber: "DS-0002", HardwareId: "hw:aa:02"},
		{SerialNumber: "DS-0003", HardwareId: "hw:aa:03"},
	}}
	if !proto.Equal(reqs[0], want) {
		t.Fatalf("sent %v\nwant %v", reqs[0], want)
	}
	if r.stdout != "2 enrolled, 1 unchanged\n" {
		t.Fatalf("stdout %q", r.stdout)
	}
}

func TestEnrollCSVBadLineSendsNothing(t *testing.T) {
	f := &fakeAdmin{}
	sock := serveUnix(t, f)
	csvPath := writeFile(t, "devices.csv", "serial_number,hardware_id\nDS-0001,hw1\nDS-0002,\nDS-0003,hw3\n")
	r := runCLI(t, "", nil, "--socket", sock, "enroll", "--file", csvPath)
	if r.code != ExitError {
		t.Fatalf("exit %d, want %d", r.code, ExitError)
	}
	if want := "Error: " + csvPath + ":3: hardware_id: must not be empty\n"; r.stderr != want {
		t.Fatalf("stderr %q, want %q", r.stderr, want)
	}
	if n := f.total(); n != 0 {
		t.Fatalf("the fake received %d requests, want none", n)
	}
}

func TestParseDevicesCSVErrors(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"three fields", "DS-1,hw1\nDS-2,hw2,extra\n", "devices.csv:2: want 2 fields (serial_number,hardware_id), got 3"},
		{"bad serial", "# c\nDS 1,hw1\n", "devices.csv:2: serial_number: character 3 is not allowed"},
		{"empty serial", ",hw1\n", "devices.csv:1: serial_number: must not be empty"},
		{"long hwid", "DS-1," + strings.Repeat("h", 129) + "\n", "devices.csv:1: hardware_id: longer than 128 bytes"},
		{"duplicate", "DS-1,hw1\nDS-2,hw2\nDS-1,hw3\n", "devices.csv:3: serial_number: same as on line 1"},
		{"bad quote", "DS-1,hw1\nDS-2,\"hw2\n", "devices.csv:2: extraneous or missing \" in quoted-field"},
		{"only header", "serial_number,hardware_id\n# nothing\n", "devices.csv: no devices in it"},
		{"header later is data", "DS-1,hw1\nserial_number,hardware_id\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseDevicesCSV("devices.csv", strings.NewReader(tc.in))
			if tc.want == "" {
				if err != nil || len(got) != 2 {
					t.Fatalf("got %v, %v; want 2 devices", got, err)
				}
				return
			}
			if err == nil || err.Error() != tc.want {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if got != nil {
				t.Fatalf("returned %d devices with an error", len(got))
			}
		})
	}
}

// TestParseDevicesCSVBOM: a file starting with a UTF-8 byte order mark (as
// spreadsheets write it) is read like one without, header row included; a
// BOM anywhere else is still part of the data.
func TestParseDevicesCSVBOM(t *testing.T) {
	for _, in := range []string{"\ufeffserial_number,hardware_id\nDS-1,hw1\nDS-2,hw2\n", "\ufeffDS-1,hw1\r\nDS-2,hw2\r\n"} {
		got, err := ParseDevicesCSV("devices.csv", strings.NewReader(in))
		if err != nil || len(got) != 2 || got[0].GetSerialNumber() != "DS-1" {
			t.Fatalf("%q: %v, %v; want DS-1 and DS-2", in, got, err)
		}
	}
	if _, err := ParseDevicesCSV("devices.csv", strings.NewReader("DS-1,hw1\n\ufeffDS-2,hw2\n")); err == nil || !strings.Contains(err.Error(), "devices.csv:2: serial_number") {
		t.Fatalf("BOM inside the file: %v, want a serial_number error on line 2", err)
	}
}

func TestEnrollOneAndFieldErrors(t *testing.T) {
	f := &fakeAdmin{}
	sock := serveUnix(t, f)

	r := runCLI(t, "", nil, "--socket", sock, "enroll", "--serial", "DS/1", "--hwid", "hw")
	if r.code != ExitUsage || !strings.HasPrefix(r.stderr, "Error: serial_number: character 3 is not allowed\n") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	r = runCLI(t, "", nil, "--socket", sock, "enroll", "--serial", "DS-1")
	if r.code != ExitUsage || !strings.Contains(r.stderr, "hwid") {
		t.Fatalf("--serial without --hwid: exit %d, stderr %q", r.code, r.stderr)
	}
	if n := f.total(); n != 0 {
		t.Fatalf("the fake received %d requests after bad input", n)
	}

	r = runCLI(t, "", nil, "--socket", sock, "-o", "json", "enroll", "--serial", "DS-1", "--hwid", "hw-1")
	if r.code != ExitOK {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	reqs := received[*gatewayv1.EnrollDevicesRequest](f)
	want := &gatewayv1.EnrollDevicesRequest{Devices: []*gatewayv1.DeviceEnrollment{{SerialNumber: "DS-1", HardwareId: "hw-1"}}}
	if len(reqs) != 1 || !proto.Equal(reqs[0], want) {
		t.Fatalf("sent %v, want %v", reqs, want)
	}
	var resp gatewayv1.EnrollDevicesResponse
	if err := protojson.Unmarshal([]byte(r.stdout), &resp); err != nil || resp.Unchanged != 1 || resp.Enrolled != 0 {
		t.Fatalf("json %q: %v %v", r.stdout, &resp, err)
	}
}

func TestEnrollBatches(t *testing.T) {
	f := &fakeAdmin{}
	sock := serveUnix(t, f)
	var b strings.Builder
	const n = 2*enrollBatch + 5
	for i := range n {
		fmt.Fprintf(&b, "DS-%05d,hw-%05d\n", i, i)
	}
	r := runCLI(t, "", nil, "--socket", sock, "enroll", "--file", writeFile(t, "devices.csv", b.String()))
	if r.code != ExitOK {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	reqs := received[*gatewayv1.EnrollDevicesRequest](f)
	if len(reqs) != 3 {
		t.Fatalf("%d requests, want 3", len(reqs))
	}
	seen := 0
	for _, req := range reqs {
		for _, d := range req.Devices {
			if want := fmt.Sprintf("DS-%05d", seen); d.SerialNumber != want {
				t.Fatalf("device %d is %s, want %s", seen, d.SerialNumber, want)
			}
			seen++
		}
	}
	if seen != n {
		t.Fatalf("sent %d devices, want %d", seen, n)
	}
	if want := fmt.Sprintf("%d enrolled, 3 unchanged\n", n-3); r.stdout != want {
		t.Fatalf("stdout %q, want %q", r.stdout, want)
	}
}

// TestEnrollNoOverallTimeout: a file of many batches may take longer than
// --timeout in total, since each batch has its own; progress goes to
// stderr, the result to stdout.
func TestEnrollNoOverallTimeout(t *testing.T) {
	f := &fakeAdmin{enrollDelay: 100 * time.Millisecond}
	sock := serveUnix(t, f)
	var b strings.Builder
	const n = 12 * enrollBatch
	for i := range n {
		fmt.Fprintf(&b, "DS-%05d,hw-%05d\n", i, i)
	}
	r := runCLI(t, "", nil, "--socket", sock, "--timeout", "1s", "enroll", "--file", writeFile(t, "devices.csv", b.String()))
	if r.code != ExitOK {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if got := len(received[*gatewayv1.EnrollDevicesRequest](f)); got != 12 {
		t.Fatalf("%d batches, want 12", got)
	}
	if want := fmt.Sprintf("sent %d of %d devices (100%%)\n", n, n); !strings.HasSuffix(r.stderr, want) {
		t.Fatalf("stderr %q, want progress ending with %q", r.stderr, want)
	}
	if want := fmt.Sprintf("%d enrolled, 12 unchanged\n", n-12); r.stdout != want {
		t.Fatalf("stdout %q, want %q", r.stdout, want)
	}
}

func sampleDevices() *gatewayv1.ListDevicesResponse {
	return &gatewayv1.ListDevicesResponse{Devices: []*gatewayv1.Device{
		{SerialNumber: "****01", Addresses: []string{"100.80.0.2", "fd00::2"}, KeyPinned: true, LastLoginDay: "2025-03-14", Online: true},
		{SerialNumber: "****02", Addresses: []string{"100.80.0.3"}, KeyPinned: true, LastLoginDay: "2025-03-01"},
		{SerialNumber: "****03", Revoked: true, Online: true},
	}}
}

// tableRows splits table output into rows of whitespace-separated cells.
func tableRows(out string) [][]string {
	var rows [][]string
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		rows = append(rows, strings.Fields(line))
	}
	return rows
}

func TestDevicesListTableAndJSON(t *testing.T) {
	f := &fakeAdmin{devices: sampleDevices()}
	sock := serveUnix(t, f)

	r := runCLI(t, "", nil, "--socket", sock, "devices", "list")
	if r.code != ExitOK {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	lines := strings.Split(r.stdout, "\n")
	if !strings.HasPrefix(lines[0], "SERIAL ") || !strings.Contains(lines[0], "LAST LOGIN") || !strings.HasSuffix(strings.TrimSpace(lines[0]), "STATE") {
		t.Fatalf("header %q", lines[0])
	}
	// tabwriter aligns columns: STATE starts at the same offset on every line.
	col := strings.Index(lines[0], "STATE")
	for _, line := range lines[1:4] {
		l := []rune(line)
		if len(l) <= col || l[col-1] != ' ' || l[col] == ' ' {
			t.Fatalf("line %q not aligned at column %d", line, col)
		}
	}
	want := [][]string{
		{"SERIAL", "ADDRESSES", "KEY", "LAST", "LOGIN", "STATE"},
		{"****01", "100.80.0.2,fd00::2", "pinned", "2025-03-14", "online"},
		{"****02", "100.80.0.3", "pinned", "2025-03-01", "offline"},
		{"****03", "–", "–", "never", "revoked"},
	}
	if got := tableRows(r.stdout); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("table\n%s\ngot %q\nwant %q", r.stdout, got, want)
	}

	r = runCLI(t, "", nil, "--socket", sock, "devices", "list", "-o", "json")
	if r.code != ExitOK {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	var got gatewayv1.ListDevicesResponse
	if err := protojson.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("json does not parse: %v\n%s", err, r.stdout)
	}
	if !proto.Equal(&got, sampleDevices()) {
		t.Fatalf("json round trip %v, want %v", &got, sampleDevices())
	}
	var raw struct {
		Devices []map[string]any `json:"devices"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"serial_number", "addresses", "key_pinned", "last_login_day", "revoked", "online"} {
		if _, ok := raw.Devices[2][k]; !ok {
			t.Fatalf("json device has no %q key (proto names, unpopulated emitted): %v", k, raw.Devices[2])
		}
	}
}

func TestRevealNeedsReason(t *testing.T) {
	f := &fakeAdmin{devices: sampleDevices()}
	sock := serveUnix(t, f)
	r := runCLI(t, "", nil, "--socket", sock, "devices", "list", "--reveal")
	if r.code != ExitUsage || !strings.HasPrefix(r.stderr, "Error: --reveal needs --reason") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if n := f.total(); n != 0 {
		t.Fatalf("the fake received %d requests", n)
	}
	r = runCLI(t, "", nil, "--socket", sock, "devices", "list", "--reveal", "--reason", "ticket 4711")
	if r.code != ExitOK {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	reqs := received[*gatewayv1.ListDevicesRequest](f)
	if len(reqs) != 1 || !reqs[0].Reveal || reqs[0].Reason != "ticket 4711" {
		t.Fatalf("sent %v", reqs)
	}
}

func samplePeers() *gatewayv1.ListPeersResponse {
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i)
	}
	return &gatewayv1.ListPeersResponse{Peers: []*gatewayv1.Peer{
		{PublicKey: key, Kind: "device", AllowedIps: []string{"100.80.0.2/32", "fd00::2/128"},
			LastHandshake: timestamppb.New(testNow.Add(-12 * time.Second)), RxBytes: 1536, TxBytes: 3 << 20},
		{PublicKey: make([]byte, 32), Kind: "client", AllowedIps: []string{"100.90.0.2/32"},
			LastHandshake: timestamppb.New(testNow.Add(-5 * time.Minute)), RxBytes: 10},
		{PublicKey: key[:8], Kind: "unknown"},
	}}
}

func TestPeersTableAndJSON(t *testing.T) {
	f := &fakeAdmin{peers: samplePeers()}
	sock := serveUnix(t, f)

	r := runCLI(t, "", nil, "--socket", sock, "peers")
	if r.code != ExitOK {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	want := [][]string{
		{"PUBLIC", "KEY", "KIND", "ALLOWED", "IPS", "LAST", "HANDSHAKE", "RX", "TX"},
		{"AAECAwQFBg…", "device", "100.80.0.2/32,fd00::2/128", "12s", "ago", "1.5", "KiB", "3.0", "MiB"},
		{"AAAAAAAAAA…", "client", "100.90.0.2/32", "5m", "ago", "10", "B", "0", "B"},
		{"AAECAwQFBg…", "unknown", "–", "never", "0", "B", "0", "B"},
	}
	if got := tableRows(r.stdout); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("table\n%s\ngot %q\nwant %q", r.stdout, got, want)
	}

	r = runCLI(t, "", nil, "--socket", sock, "--output", "json", "peers")
	if r.code != ExitOK {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	var got gatewayv1.ListPeersResponse
	if err := protojson.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("json does not parse: %v\n%s", err, r.stdout)
	}
	if !proto.Equal(&got, samplePeers()) {
		t.Fatalf("json round trip %v", &got)
	}
	var raw struct {
		Peers []map[string]any `json:"peers"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil {
		t.Fatal(err)
	}
	if k := raw.Peers[0]["public_key"]; k != "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=" {
		t.Fatalf("json public_key %v, want the full base64 key", k)
	}
	if _, ok := raw.Peers[0]["last_handshake"]; !ok {
		t.Fatalf("json peer lacks last_handshake: %v", raw.Peers[0])
	}
}

func TestMissingSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.sock")
	want := "Error: cannot reach the gateway's admin socket at " + path + ": is dasset-gateway running? (use --socket)\n"

	r := runCLI(t, "", nil, "--socket", path, "peers")
	if r.code != ExitError || r.stderr != want || r.stdout != "" {
		t.Fatalf("exit %d, stderr %q, want %q", r.code, r.stderr, want)
	}
	// The same from the environment variable.
	r = runCLI(t, "", map[string]string{EnvSocket: path}, "status")
	if r.code != ExitError || r.stderr != want {
		t.Fatalf("exit %d, stderr %q, want %q", r.code, r.stderr, want)
	}
}

func TestExplainDial(t *testing.T) {
	where := "the gateway's admin socket at /run/x.sock"
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("dial: %w", fs.ErrNotExist), "cannot reach " + where + ": is dasset-gateway running? (use --socket)"},
		{fmt.Errorf("dial: %w", syscall.ECONNREFUSED), "cannot reach " + where + ": is dasset-gateway running? (use --socket)"},
		{fmt.Errorf("dial: %w", syscall.EACCES), "permission denied on " + where + ": run as root or as a member of the socket's group"},
	} {
		if got := explainDial("unix", where, tc.err); got != tc.want {
			t.Errorf("explainDial(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

func TestStatusErrorExitCode(t *testing.T) {
	f := &fakeAdmin{err: status.Error(codes.PermissionDenied, "the privacy role is required to reveal serial numbers")}
	sock := serveUnix(t, f)
	r := runCLI(t, "", nil, "--socket", sock, "devices", "list", "--reveal", "--reason", "x")
	if r.code != ExitError {
		t.Fatalf("exit %d, want 1", r.code)
	}
	if want := "Error: PermissionDenied: the privacy role is required to reveal serial numbers\n"; r.stderr != want {
		t.Fatalf("stderr %q, want %q", r.stderr, want)
	}
	if r.stdout != "" {
		t.Fatalf("stdout %q", r.stdout)
	}
}

func TestAccountsCreatePasswordStdin(t *testing.T) {
	f := &fakeAdmin{}
	sock := serveUnix(t, f)
	r := runCLI(t, "correct horse battery\n", nil, "--socket", sock, "accounts", "create", "alice", "--password-stdin")
	if r.code != ExitOK {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	reqs := received[*gatewayv1.CreateAccountRequest](f)
	if len(reqs) != 1 || reqs[0].Name != "alice" || reqs[0].Password != "correct horse battery" {
		t.Fatalf("sent %v", reqs)
	}
	if r.stdout != "Created account alice (id acc-1).\n" {
		t.Fatalf("stdout %q", r.stdout)
	}

	// No terminal and no --password-stdin: refused, nothing sent.
	r = runCLI(t, "pw\n", nil, "--socket", sock, "accounts", "create", "bob")
	if r.code != ExitUsage || !strings.Contains(r.stderr, "--password-stdin") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	r = runCLI(t, "", nil, "--socket", sock, "accounts", "create", "bob", "--password-stdin")
	if r.code != ExitError || !strings.Contains(r.stderr, "password: standard input was empty") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if n := len(received[*gatewayv1.CreateAccountRequest](f)); n != 1 {
		t.Fatalf("%d CreateAccount requests, want 1", n)
	}
}

func TestStatusSummary(t *testing.T) {
	f := &fakeAdmin{devices: sampleDevices(), peers: samplePeers(), sessions: &gatewayv1.ListSessionsResponse{
		Sessions: []*gatewayv1.SessionInfo{{SessionId: "s1"}, {SessionId: "s2"}},
	}}
	sock := serveUnix(t, f)
	r := runCLI(t, "", nil, "--socket", sock, "status")
	if r.code != ExitOK {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	for _, want := range []string{
		"3 enrolled, 1 online, 1 revoked",
		"2 open",
		"3, 1 handshook in the last 3m",
		"rx 1.5 KiB, tx 3.0 MiB",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status lacks %q:\n%s", want, r.stdout)
		}
	}
	r = runCLI(t, "", nil, "--socket", sock, "status", "-o", "json")
	var s Summary
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	want := Summary{DevicesEnrolled: 3, DevicesOnline: 1, DevicesRevoked: 1, SessionsOpen: 2, Peers: 3, PeersRecent: 1, RxBytes: 1546, TxBytes: 3 << 20}
	if s != want {
		t.Fatalf("summary %+v, want %+v", s, want)
	}
}

func TestSubjectEraseAndExport(t *testing.T) {
	f := &fakeAdmin{removed: map[string]int64{"devices": 1, "bindings": 2}, export: `{"devices":[{"serial_number":"DS-1"}]}`}
	sock := serveUnix(t, f)

	// Not a terminal and no --yes: refused before anything is sent.
	r := runCLI(t, "yes\n", nil, "--socket", sock, "subject", "erase", "--serial", "DS-1", "--reason", "request 17")
	if r.code != ExitUsage || !strings.Contains(r.stderr, "--yes") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	r = runCLI(t, "", nil, "--socket", sock, "subject", "erase", "--account", "alice", "--yes")
	if r.code != ExitUsage || !strings.Contains(r.stderr, "--reason is required") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if n := f.total(); n != 0 {
		t.Fatalf("the fake received %d requests", n)
	}

	r = runCLI(t, "", nil, "--socket", sock, "subject", "erase", "--account", "alice", "--reason", "request 18", "--yes")
	if r.code != ExitOK {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	reqs := received[*gatewayv1.EraseSubjectRequest](f)
	want := &gatewayv1.EraseSubjectRequest{Subject: &gatewayv1.EraseSubjectRequest_Account{Account: "alice"}, Reason: "request 18"}
	if len(reqs) != 1 || !proto.Equal(reqs[0], want) {
		t.Fatalf("sent %v", reqs)
	}
	wantRows := [][]string{{"Erased", "account", "alice."}, {"TABLE", "ROWS", "REMOVED"}, {"bindings", "2"}, {"devices", "1"}, {"total", "3"}}
	if got := tableRows(r.stdout); fmt.Sprint(got) != fmt.Sprint(wantRows) {
		t.Fatalf("receipt %q", r.stdout)
	}

	r = runCLI(t, "", nil, "--socket", sock, "subject", "export", "--serial", "DS-1", "--reason", "request 19")
	if r.code != ExitOK {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil || doc["devices"] == nil {
		t.Fatalf("export %q: %v", r.stdout, err)
	}
	ex := received[*gatewayv1.ExportSubjectRequest](f)
	if len(ex) != 1 || ex[0].GetSerialNumber() != "DS-1" || ex[0].Reason != "request 19" {
		t.Fatalf("sent %v", ex)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"devices", "revoke"},
		{"devices", "revoke", "a", "b"},
		{"-o", "yaml", "peers"},
		{"--server", "127.0.0.1:1", "peers"},
		{"--cert", "c.pem", "peers"},
		{"--timeout", "0s", "peers"},
		{"nosuchcommand"},
		{"peers", "--nosuchflag"},
	} {
		r := runCLI(t, "", nil, append([]string{"--socket", "/nonexistent/admin.sock"}, args...)...)
		if r.code != ExitUsage || !strings.HasPrefix(r.stderr, "Error: ") || strings.Contains(r.stderr, "goroutine") {
			t.Errorf("%v: exit %d, stderr %q", args, r.code, r.stderr)
		}
	}
}

func TestEveryCommandHasHelpAndExample(t *testing.T) {
	a := &app{env: Env{Getenv: func(string) string { return "" }}, dial: &dialRecorder{}}
	var walk func(c *cobra.Command)
	n := 0
	walk = func(c *cobra.Command) {
		n++
		if c.Short == "" || c.Example == "" {
			t.Errorf("%s: Short %q, Example %q", c.CommandPath(), c.Short, c.Example)
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(a.rootCommand())
	if n < 20 {
		t.Fatalf("walked %d commands", n)
	}
}

// TestEnrollHWIDFromStdin: --hwid - takes the hardware id from standard
// input (off the command line); bad input sends nothing.
func TestEnrollHWIDFromStdin(t *testing.T) {
	f := &fakeAdmin{}
	sock := serveUnix(t, f)
	for _, bad := range []struct{ stdin, want string }{
		{"", "standard input holds no hardware id"},
		{"  \n\n", "standard input holds no hardware id"},
		{"hw-1\nhw-2\n", "more than one line"},
		{"hw 1\n", "hardware_id: character 3 is not allowed"},
	} {
		r := runCLI(t, bad.stdin, nil, "--socket", sock, "enroll", "--serial", "DS-1", "--hwid", "-")
		if r.code != ExitUsage || !strings.Contains(r.stderr, bad.want) {
			t.Errorf("stdin %q: exit %d, stderr %q; want usage error %q", bad.stdin, r.code, r.stderr, bad.want)
		}
	}
	if n := f.total(); n != 0 {
		t.Fatalf("the fake received %d requests after bad input", n)
	}
	r := runCLI(t, "3c:52:82:aa:10:0f\n", nil, "--socket", sock, "enroll", "--serial", "DS-1", "--hwid", "-")
	if r.code != ExitOK {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	reqs := received[*gatewayv1.EnrollDevicesRequest](f)
	want := &gatewayv1.EnrollDevicesRequest{Devices: []*gatewayv1.DeviceEnrollment{{SerialNumber: "DS-1", HardwareId: "3c:52:82:aa:10:0f"}}}
	if len(reqs) != 1 || !proto.Equal(reqs[0], want) {
		t.Fatalf("sent %v, want %v", reqs, want)
	}
}

// The gateway's refusal to enroll an erased device names no command; the
// CLI adds its own flag to the message.
func TestEnrollErasedDeviceNamesTheFlag(t *testing.T) {
	const refusal = "devices[0]: this device was erased; re-enroll it explicitly with after_erasure"
	f := &fakeAdmin{err: status.Error(codes.FailedPrecondition, refusal)}
	sock := serveUnix(t, f)
	r := runCLI(t, "", nil, "--socket", sock, "enroll", "--serial", "DS-0001", "--hwid", "hw:aa:01")
	if r.code != ExitError || !strings.Contains(r.stderr, refusal) || !strings.Contains(r.stderr, "add --after-erasure") {
		t.Fatalf("exit %d, stderr %q; want the refusal and the --after-erasure hint", r.code, r.stderr)
	}
	r = runCLI(t, "", nil, "--socket", sock, "enroll", "--serial", "DS-0001", "--hwid", "hw:aa:01", "--after-erasure")
	if r.code != ExitError || strings.Contains(r.stderr, "add --after-erasure") {
		t.Fatalf("with --after-erasure: exit %d, stderr %q; want no hint to add it", r.code, r.stderr)
	}
}
