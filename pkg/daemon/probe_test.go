package daemon_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// mentions reports whether a message type has a field with one of the
// names, at any depth.
func mentions(md protoreflect.MessageDescriptor, names []protoreflect.Name, seen map[protoreflect.FullName]bool) bool {
	if seen[md.FullName()] {
		return false
	}
	seen[md.FullName()] = true
	for i := range md.Fields().Len() {
		fd := md.Fields().Get(i)
		if slices.Contains(names, fd.Name()) {
			return true
		}
		if fd.Message() != nil && mentions(fd.Message(), names, seen) {
			return true
		}
	}
	return false
}

// fill sets every serial_number field of m (at any depth; one element of a
// repeated message) to serial, every hardware_id field to hwid and every
// reason to a text, so that any request carrying a hardware id carries the
// probed one. It reports whether it set anything.
func fill(m protoreflect.Message, serial, hwid string) bool {
	set := false
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		switch {
		case fd.Kind() == protoreflect.StringKind && !fd.IsList() && !fd.IsMap():
			switch fd.Name() {
			case "serial_number":
				m.Set(fd, protoreflect.ValueOfString(serial))
				set = true
			case "hardware_id":
				m.Set(fd, protoreflect.ValueOfString(hwid))
				set = true
			case "reason":
				m.Set(fd, protoreflect.ValueOfString("probe test"))
			}
		case fd.Message() != nil && fd.IsList():
			sub := m.NewField(fd).List().NewElement()
			if fill(sub.Message(), serial, hwid) {
				l := m.Mutable(fd).List()
				l.Append(sub)
				set = true
			}
		case fd.Message() != nil && !fd.IsMap():
			sub := m.NewField(fd)
			if fill(sub.Message(), serial, hwid) {
				m.Set(fd, sub)
				set = true
			}
		}
	}
	return set
}

// answer is everything a caller sees of one call.
type answer struct {
	code string
	msg  string
	resp proto.Message
}

func (a answer) String() string { return fmt.Sprintf("%s %q %v", a.code, a.msg, a.resp) }

func (a answer) same(b answer) bool {
	return a.code == b.code && a.msg == b.msg && proto.Equal(a.resp, b.resp)
}

// TestOperatorCannotProbeHWIDs: for every AdminService method (from the
// service descriptor, so a new method is covered without editing this
// test), an operator without the privacy role gets the same answer for an
// enrolled device's right hardware id, a wrong one, and an erased device.
// A method whose request cannot carry a hardware id cannot be asked about
// one; no response carries a hardware id or a verifier. The same probe by
// the privacy role does tell them apart (the positive control), every
// probe is audited with its target, and a reveal names every device.
func TestOperatorCannotProbeHWIDs(t *testing.T) {
	g, ca := startMTLSAdmin(t)
	const (
		serial, hwid    = "DS-PROBE-0001", "HW-PROBE-RIGHT"
		erased, erasedH = "DS-PROBE-0002", "HW-PROBE-ERASED"
		wrong           = "HW-PROBE-WRONG"
	)
	g.enroll(t, [2]string{serial, hwid}, [2]string{erased, erasedH})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := g.admin.EraseSubject(ctx, &gatewayv1.EraseSubjectRequest{Subject: &gatewayv1.EraseSubjectRequest_SerialNumber{SerialNumber: erased}, Reason: "probe test"}); err != nil {
		t.Fatal(err)
	}

	olivia, priya := dialMTLSAdmin(t, g, ca, "olivia"), dialMTLSAdmin(t, g, ca, "priya")
	call := func(conn *grpc.ClientConn, md protoreflect.MethodDescriptor, sn, hw string) answer {
		req := dynamicpb.NewMessage(md.Input())
		fill(req, sn, hw)
		resp := dynamicpb.NewMessage(md.Output())
		path := fmt.Sprintf("/%s/%s", md.Parent().FullName(), md.Name())
		err := conn.Invoke(ctx, path, req, resp)
		st := status.Convert(err)
		return answer{code: st.Code().String(), msg: st.Message(), resp: resp}
	}

	svc := gatewayv1.File_dasset_gateway_v1_admin_proto.Services().ByName("AdminService")
	if svc == nil {
		t.Fatal("no AdminService in the descriptor")
	}
	hwidNames := []protoreflect.Name{"hardware_id"}
	secretNames := []protoreflect.Name{"hardware_id", "verifier"}
	probed := 0
	for i := range svc.Methods().Len() {
		md := svc.Methods().Get(i)
		t.Run(string(md.Name()), func(t *testing.T) {
			if mentions(md.Output(), secretNames, map[protoreflect.FullName]bool{}) {
				t.Fatalf("%s answers with a hardware id or verifier field", md.Name())
			}
			if !mentions(md.Input(), hwidNames, map[protoreflect.FullName]bool{}) {
				t.Logf("%s: its request has no hardware id field, so it cannot be asked about one", md.Name())
				return
			}
			probed++
			// Each probe twice, in both orders, so a first call changing
			// state cannot pass for a difference or hide one.
			answers := map[string]answer{}
			for _, round := range []string{"1", "2"} {
				answers["wrong"+round] = call(olivia, md, serial, wrong)
				answers["right"+round] = call(olivia, md, serial, hwid)
				answers["erased-right"+round] = call(olivia, md, erased, erasedH)
				answers["erased-wrong"+round] = call(olivia, md, erased, wrong)
			}
			ref := answers["right2"]
			for k, a := range answers {
				if !a.same(ref) {
					t.Errorf("operator without the privacy role tells HWIDs apart through %s: %s = %s, right2 = %s", md.Name(), k, a, ref)
				}
			}
			// Positive control: the privacy role is told (so the probe is
			// one that would show an oracle).
			if a, b := call(priya, md, serial, hwid), call(priya, md, serial, wrong); a.same(b) {
				t.Errorf("%s: the privacy role cannot tell a right HWID from a wrong one either (%s): the probe proves nothing", md.Name(), a)
			}
		})
	}
	if probed == 0 {
		t.Fatal("no AdminService method takes a hardware id: the probe table is empty")
	}

	// The device keeps its hardware id: the wrong one was not written.
	dev := deviceClient(t, g)
	if _, err := dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: serial, HardwareId: hwid, PublicKey: newKey(t)}); err != nil {
		t.Fatalf("login with the enrolled HWID after the probes: %v", err)
	}

	// A reveal names every device it shows.
	if _, err := gatewayv1.NewAdminServiceClient(priya).ListDevices(ctx, &gatewayv1.ListDevicesRequest{Reveal: true, Reason: "ticket 7"}); err != nil {
		t.Fatal(err)
	}
	if _, err := g.admin.EnrollDevices(ctx, &gatewayv1.EnrollDevicesRequest{Devices: []*gatewayv1.DeviceEnrollment{{SerialNumber: "DS-PROBE-0003", HardwareId: "HW-3"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := gatewayv1.NewAdminServiceClient(priya).ListDevices(ctx, &gatewayv1.ListDevicesRequest{Reveal: true, Reason: "ticket 8"}); err != nil {
		t.Fatal(err)
	}
	ks, err := privacy.OpenKeystore(g.cfg.KeystorePath())
	if err != nil {
		t.Fatal(err)
	}
	idx := func(s string) string {
		sn, err := privacy.ParseSerialNumber(s)
		if err != nil {
			t.Fatal(err)
		}
		return ks.BlindIndex(sn).String()
	}
	type entry struct {
		Operator, Action, Target, Reason, Result string
		Targets                                  []string
	}
	var entries []entry
	f, err := os.Open(filepath.Join(g.cfg.KeystorePath(), privacy.AuditLogFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatal(err)
		}
		entries = append(entries, e)
	}
	has := func(e entry, target string) bool { return e.Target == target || slices.Contains(e.Targets, target) }
	probes := 0
	for _, e := range entries {
		if e.Operator == "olivia" && e.Action == "enroll_devices" {
			// Each probe named one existing (or erased) device.
			probes++
			if e.Target != idx(serial) && e.Target != idx(erased) {
				t.Errorf("an operator's enrolment of an existing device is audited as %+v, want target %s or %s", e, idx(serial), idx(erased))
			}
		}
	}
	if probes != 8 {
		t.Errorf("%d audited operator enrolments, want 8", probes)
	}
	var reveals []entry
	for _, e := range entries {
		if e.Action == "reveal_devices" && e.Result == "attempt" {
			reveals = append(reveals, e)
		}
	}
	if len(reveals) != 2 {
		t.Fatalf("%d reveal attempts audited, want 2: %+v", len(reveals), reveals)
	}
	if !has(reveals[0], idx(serial)) || has(reveals[0], idx("DS-PROBE-0003")) {
		t.Errorf("first reveal (one device) audited as %+v, want target %s", reveals[0], idx(serial))
	}
	if !has(reveals[1], idx(serial)) || !has(reveals[1], idx("DS-PROBE-0003")) || len(reveals[1].Targets) != 2 {
		t.Errorf("second reveal (two devices) audited as %+v, want both targets", reveals[1])
	}
}
