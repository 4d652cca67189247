package ctl

import (
	"strings"
	"testing"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
)

// FuzzParseDevicesCSV: any file is either refused with an error naming it,
// or every device it yields is valid and its serial numbers are unique.
func FuzzParseDevicesCSV(f *testing.F) {
	for _, s := range []string{
		"serial_number,hardware_id\nDS-1,hw1\nDS-2,hw2\n", "\ufeffDS-1,hw1\r\n", "# c\n\nDS-1, hw1\n", "DS-1,hw1\nDS-1,hw2\n",
		"DS-1,\"hw\n", "a,b,c\n", "", "\"DS-1\",\"hw,1\"\n", "DS 1,hw\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		devs, err := ParseDevicesCSV("f.csv", strings.NewReader(s))
		if err != nil {
			if devs != nil || !strings.HasPrefix(err.Error(), "f.csv") {
				t.Fatalf("error %q with %d devices", err, len(devs))
			}
			return
		}
		if len(devs) == 0 {
			t.Fatal("no error and no devices")
		}
		seen := map[string]bool{}
		for _, d := range devs {
			if _, err := privacy.ParseSerialNumber(d.GetSerialNumber()); err != nil {
				t.Fatalf("yielded invalid serial %q", d.GetSerialNumber())
			}
			if _, err := privacy.ParseHardwareID(d.GetHardwareId()); err != nil {
				t.Fatalf("yielded invalid hardware id %q", d.GetHardwareId())
			}
			if seen[d.GetSerialNumber()] {
				t.Fatalf("yielded %q twice", d.GetSerialNumber())
			}
			seen[d.GetSerialNumber()] = true
		}
	})
}
