package privacy

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestConfigsPolicyIsTheEmbeddedOne(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "configs", "policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, defaultPolicyYAML) {
		t.Fatal("configs/policy.yaml differs from pkg/privacy/policy.yaml: copy pkg/privacy/policy.yaml over it")
	}
}

func TestDefaultPolicy(t *testing.T) {
	p := DefaultPolicy()
	if !bytes.Equal(p.YAML(), defaultPolicyYAML) {
		t.Fatal("YAML() is not the document")
	}
	// The embedded policy states exactly what the gateway does.
	for field, sinks := range gatewayForms() {
		fp, ok := p.Fields[field]
		if !ok {
			t.Fatalf("field %s missing", field)
		}
		for sink, forms := range sinks {
			if !slices.Equal(fp.Sinks[sink], forms) {
				t.Errorf("%s.%s: policy says %v, gateway does %v", field, sink, fp.Sinks[sink], forms)
			}
		}
	}
	if len(p.Fields) != len(gatewayForms()) {
		t.Errorf("policy has %d fields, gateway %d", len(p.Fields), len(gatewayForms()))
	}
	want := map[string]time.Duration{
		"connection_log": 720 * time.Hour, "sessions": 720 * time.Hour, "binding_codes": 24 * time.Hour,
		"auth_failures": 24 * time.Hour, "audit_log": 8760 * time.Hour, "device_tokens": 720 * time.Hour,
		"access_tokens": 168 * time.Hour,
	}
	for table, d := range want {
		if got := p.MaxRetention(table); got != d {
			t.Errorf("MaxRetention(%s) = %v, want %v", table, got, d)
		}
	}
	if p.MaxRetention("nonesuch") != 0 {
		t.Error("MaxRetention of an unknown table is not 0")
	}
	if p.PseudonymKeyLifetime != p.MaxRetention(RetentionConnectionLog) {
		t.Error("pseudonym key lifetime is not the connection log retention")
	}
	if p.IPv4Bits != 24 || p.IPv6Bits != 48 {
		t.Errorf("truncation %d/%d", p.IPv4Bits, p.IPv6Bits)
	}
	if !p.Fields[FieldHardwareID].Allows(SinkRegistry, FormVerifier) || p.Fields[FieldHardwareID].Allows(SinkRegistry, FormRaw) {
		t.Error("Allows is wrong for hardware_id")
	}
	// The served copy cannot alter the policy.
	y := p.YAML()
	y[0] = 'X'
	if p.YAML()[0] == 'X' {
		t.Error("YAML() shares its buffer")
	}
}

func TestLoadPolicy(t *testing.T) {
	p, err := LoadPolicy(filepath.Join("testdata", "policy_short.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if p.MaxRetention(RetentionConnectionLog) != 168*time.Hour || p.PseudonymKeyLifetime != 168*time.Hour {
		t.Fatalf("short policy: %v %v", p.MaxRetention(RetentionConnectionLog), p.PseudonymKeyLifetime)
	}

	bad := []struct {
		file string
		want []string // all must appear in the error
	}{
		{"policy_unknown_key.yaml", []string{"controller"}},
		{"policy_unknown_sink_key.yaml", []string{"audit_log"}},
		{"policy_missing_field.yaml", []string{"fields.password", "missing"}},
		{"policy_missing_sink.yaml", []string{"fields.source_ip.process_log", "missing"}},
		{"policy_forbids_gateway.yaml", []string{"fields.serial_number.connection_log", "pseudonym", "does not allow"}},
		{"policy_bad_form.yaml", []string{"fields.hardware_id.registry", `unknown form "hashed"`}},
		{"policy_bad_duration.yaml", []string{"retention.auth_failures", "one day"}},
		{"policy_key_outlives_log.yaml", []string{"pseudonym_key_lifetime", "2160h", "720h"}},
		{"policy_truncation.yaml", []string{"truncation.ipv4", "16"}},
		{"policy_unknown_field.yaml", []string{"fields.email", "unknown field"}},
	}
	for _, tc := range bad {
		t.Run(tc.file, func(t *testing.T) {
			path := filepath.Join("testdata", tc.file)
			_, err := LoadPolicy(path)
			if err == nil {
				t.Fatal("loaded")
			}
			for _, w := range append(tc.want, path) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
		})
	}
	if _, err := LoadPolicy(filepath.Join("testdata", "nonesuch.yaml")); err == nil {
		t.Fatal("loaded a missing file")
	}
	for name, doc := range map[string]string{
		"empty":     "",
		"two docs":  string(defaultPolicyYAML) + "\n---\nversion: 1\n",
		"version 2": strings.Replace(string(defaultPolicyYAML), "version: 1", "version: 2", 1),
		"dup key":   strings.Replace(string(defaultPolicyYAML), "version: 1", "version: 1\nversion: 1", 1),
	} {
		if _, err := ParsePolicy([]byte(doc)); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
	_, err = ParsePolicy([]byte(strings.Replace(string(defaultPolicyYAML), "ipv4: 24", "ipv4: 24\n  ipv5: 1", 1)))
	if err == nil || !strings.Contains(err.Error(), `unknown key "ipv5" in truncation`) {
		t.Errorf("unknown truncation key: %v", err)
	}
}

func TestPolicyCheck(t *testing.T) {
	p := DefaultPolicy()
	ok := Requested{Retention: map[string]time.Duration{
		RetentionConnectionLog: 720 * time.Hour, RetentionSessions: 24 * time.Hour, RetentionAuthFailures: time.Hour,
	}}
	if err := p.Check(ok); err != nil {
		t.Fatalf("within the policy: %v", err)
	}
	if err := p.Check(Requested{}); err != nil {
		t.Fatalf("nothing requested: %v", err)
	}
	err := p.Check(Requested{Retention: map[string]time.Duration{
		RetentionConnectionLog: 2160 * time.Hour,
		RetentionAuditLog:      8761 * time.Hour,
		RetentionSessions:      time.Hour,
		"bogus_table":          time.Hour,
		RetentionBindingCodes:  0,
	}})
	if err == nil {
		t.Fatal("no error")
	}
	for _, w := range []string{
		"retention.connection_log: 2160h exceeds the policy maximum 720h",
		"retention.audit_log: 8761h exceeds the policy maximum 8760h",
		"retention.bogus_table: the policy sets no retention",
		"retention.binding_codes: 0s must be positive",
	} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q: %v", w, err)
		}
	}
	if strings.Contains(err.Error(), "retention.sessions") {
		t.Errorf("a permitted key is named: %v", err)
	}
}

func TestFormatDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		720 * time.Hour: "720h", 90 * time.Minute: "1h30m", time.Minute: "1m", 30 * time.Second: "30s", 0: "0s",
		time.Hour + time.Second: "1h0m1s",
	} {
		if got := FormatDuration(d); got != want {
			t.Errorf("FormatDuration(%v) = %q, want %q", d, got, want)
		}
	}
}
