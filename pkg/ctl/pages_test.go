package ctl

import (
	"fmt"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// TestListsFollowPages: devices, sessions and peers are fetched page by
// page (each next_page_token passed back) and printed as one table with one
// header, or one JSON document equal to the whole list.
func TestListsFollowPages(t *testing.T) {
	devs := &gatewayv1.ListDevicesResponse{}
	for i := range 7 {
		devs.Devices = append(devs.Devices, &gatewayv1.Device{SerialNumber: fmt.Sprintf("****%02d", i), KeyPinned: true, LastLoginDay: "2025-03-14"})
	}
	f := &fakeAdmin{devices: devs, maxPage: 3}
	sock := serveUnix(t, f)
	r := runCLI(t, "", nil, "--socket", sock, "devices", "list")
	rows := tableRows(r.stdout)
	if r.code != ExitOK || len(rows) != 8 || rows[0][0] != "SERIAL" || rows[7][0] != "****06" || strings.Count(r.stdout, "SERIAL") != 1 {
		t.Fatalf("exit %d, stdout\n%s\nstderr %q", r.code, r.stdout, r.stderr)
	}
	reqs := received[*gatewayv1.ListDevicesRequest](f)
	if len(reqs) != 3 || reqs[0].GetPageToken() != "" || reqs[1].GetPageToken() != "3" || reqs[2].GetPageToken() != "6" || reqs[0].GetPageSize() != listPageSize {
		t.Fatalf("requests %v, want 3 pages following the tokens", reqs)
	}
	r = runCLI(t, "", nil, "--socket", sock, "devices", "list", "-o", "json")
	var got gatewayv1.ListDevicesResponse
	if err := protojson.Unmarshal([]byte(r.stdout), &got); err != nil || !proto.Equal(&got, devs) {
		t.Fatalf("json %v:\n%s", err, r.stdout)
	}
	// Empty lists are still one JSON document with the list's key.
	r = runCLI(t, "", nil, "--socket", sock, "sessions", "list", "-o", "json")
	if r.code != ExitOK || strings.Join(strings.Fields(r.stdout), "") != `{"sessions":[]}` {
		t.Fatalf("empty sessions json: exit %d, %q", r.code, r.stdout)
	}
}

// TestStatusListsNothing: status asks the gateway to count; it sends no
// list request, whatever the fleet's size.
func TestStatusListsNothing(t *testing.T) {
	f := &fakeAdmin{devices: sampleDevices(), peers: samplePeers()}
	sock := serveUnix(t, f)
	if r := runCLI(t, "", nil, "--socket", sock, "status"); r.code != ExitOK {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if n := len(received[*gatewayv1.GetSummaryRequest](f)); n != 1 || f.total() != 1 {
		t.Fatalf("%d GetSummary of %d requests, want exactly one GetSummary", n, f.total())
	}
}
