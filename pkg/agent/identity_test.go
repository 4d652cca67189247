package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeRoot makes a root directory holding the given platform files.
func fakeRoot(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, v := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(v), 0o400); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestReadIdentityFromPlatform(t *testing.T) {
	root := fakeRoot(t, map[string]string{
		DMISerialPath: "DS-PLAT-0001\n",
		DMIUUIDPath:   "4c4c4544-0042-3510-8052-b4c04f384d32\n",
		MachineIDPath: "0f3e9a0c2b5d4e6f8a1b2c3d4e5f6a7b\n",
	})
	id, err := ReadIdentity(IdentitySources{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	if id.Serial != "DS-PLAT-0001" || id.HardwareID != "4c4c4544-0042-3510-8052-b4c04f384d32" {
		t.Fatalf("identity %+v", id)
	}
	if id.SerialSource != filepath.Join(root, DMISerialPath) || id.HWIDSource != filepath.Join(root, DMIUUIDPath) {
		t.Fatalf("sources %q, %q", id.SerialSource, id.HWIDSource)
	}
}

// Without a DMI product UUID (or with a firmware placeholder in it) the
// hardware id is the machine id.
func TestReadIdentityFallsBackToMachineID(t *testing.T) {
	for name, files := range map[string]map[string]string{
		"no uuid":          {DMISerialPath: "DS-PLAT-0002", MachineIDPath: "0f3e9a0c2b5d4e6f8a1b2c3d4e5f6a7b\n"},
		"placeholder uuid": {DMISerialPath: "DS-PLAT-0002", DMIUUIDPath: "03000200-0400-0500-0006-000700080009", MachineIDPath: "0f3e9a0c2b5d4e6f8a1b2c3d4e5f6a7b"},
	} {
		t.Run(name, func(t *testing.T) {
			root := fakeRoot(t, files)
			id, err := ReadIdentity(IdentitySources{Root: root})
			if err != nil {
				t.Fatal(err)
			}
			if id.HardwareID != "0f3e9a0c2b5d4e6f8a1b2c3d4e5f6a7b" || id.HWIDSource != filepath.Join(root, MachineIDPath) {
				t.Fatalf("identity %+v", id)
			}
		})
	}
}

func TestReadIdentityFromFiles(t *testing.T) {
	dir := t.TempDir()
	sf, hf := filepath.Join(dir, "serial"), filepath.Join(dir, "hwid")
	if err := os.WriteFile(sf, []byte("  DS-FILE-0001 \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hf, []byte("HW-FILE-1"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Files win over the platform, which is not even read.
	root := fakeRoot(t, map[string]string{DMISerialPath: "DS-PLAT-9", DMIUUIDPath: "uuid-9"})
	id, err := ReadIdentity(IdentitySources{SerialFile: sf, HWIDFile: hf, Root: root})
	if err != nil {
		t.Fatal(err)
	}
	if id.Serial != "DS-FILE-0001" || id.HardwareID != "HW-FILE-1" || id.SerialSource != sf || id.HWIDSource != hf {
		t.Fatalf("identity %+v", id)
	}
	// Values given directly win over everything.
	id, err = ReadIdentity(IdentitySources{Serial: "DS-LAB-1", HWID: "HW-LAB-1", SerialFile: sf, HWIDFile: hf})
	if err != nil || id.Serial != "DS-LAB-1" || id.HardwareID != "HW-LAB-1" || id.SerialSource != SourceGiven || id.HWIDSource != SourceGiven {
		t.Fatalf("given values: %+v, %v", id, err)
	}
}

// Every refusal names the file and the problem, and never the value.
func TestReadIdentityRefusals(t *testing.T) {
	dir := t.TempDir()
	write := func(name, v string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good-hwid", "HW-GOOD")
	for _, tc := range []struct {
		name string
		src  IdentitySources
		want []string
		leak string
	}{
		{"missing serial file", IdentitySources{SerialFile: filepath.Join(dir, "none"), HWIDFile: good}, []string{"serial_number", "none", "no such file"}, ""},
		{"empty serial file", IdentitySources{SerialFile: write("empty", "\n"), HWIDFile: good}, []string{"serial_number", "empty", "the file is empty"}, ""},
		{"bad serial", IdentitySources{SerialFile: write("bad", "DS 0001 SECRET\n"), HWIDFile: good}, []string{"bad", "serial_number", "not allowed"}, "SECRET"},
		{"two lines", IdentitySources{SerialFile: write("two", "DS-1\nDS-2\n"), HWIDFile: good}, []string{"two", "more than one line"}, "DS-2"},
		{"huge", IdentitySources{SerialFile: write("huge", strings.Repeat("A", 5000)), HWIDFile: good}, []string{"huge", "longer than"}, "AAAA"},
		{"no platform serial", IdentitySources{Root: fakeRoot(t, nil), HWIDFile: good}, []string{"product_serial", "--serial-file"}, ""},
		{"placeholder serial", IdentitySources{Root: fakeRoot(t, map[string]string{DMISerialPath: "To Be Filled By O.E.M."}), HWIDFile: good}, []string{"product_serial", "unset", "--serial-file"}, ""},
		{"no platform hwid", IdentitySources{Root: fakeRoot(t, nil), Serial: "DS-1"}, []string{"product_uuid", "machine-id", "--hwid-file"}, ""},
		{"bad hwid", IdentitySources{Serial: "DS-1", HWIDFile: write("badhw", "HW WITH SPACE-SECRET")}, []string{"badhw", "hardware_id"}, "SECRET"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadIdentity(tc.src)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if tc.leak != "" && strings.Contains(err.Error(), tc.leak) {
				t.Errorf("error %q shows the value", err)
			}
		})
	}
}
