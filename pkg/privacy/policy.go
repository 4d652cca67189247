package privacy

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

//go:embed policy.yaml
var defaultPolicyYAML []byte

// Personal fields named by the policy.
const (
	FieldSerialNumber      = "serial_number"
	FieldHardwareID        = "hardware_id"
	FieldSourceIP          = "source_ip"
	FieldVirtualAddress    = "virtual_address"
	FieldWireGuardEndpoint = "wireguard_endpoint"
	FieldAccountName       = "account_name"
	FieldPassword          = "password"
)

// Sinks the gateway writes to.
const (
	SinkRegistry      = "registry"
	SinkConnectionLog = "connection_log"
	SinkProcessLog    = "process_log"
	SinkMetricLabels  = "metric_labels"
)

// Form is the shape a personal field takes in a sink.
type Form string

// Forms.
const (
	FormRaw        Form = "raw"
	FormSealed     Form = "sealed"
	FormBlindIndex Form = "blind_index"
	FormVerifier   Form = "verifier"
	FormPseudonym  Form = "pseudonym"
	FormTruncated  Form = "truncated"
	FormArgon2id   Form = "argon2id"
	FormMemoryOnly Form = "memory_only"
	FormNever      Form = "never"
)

// Retention periods named by the policy (the store's table names).
const (
	RetentionConnectionLog = "connection_log"
	RetentionSessions      = "sessions"
	RetentionBindingCodes  = "binding_codes"
	RetentionAuthFailures  = "auth_failures"
	RetentionAuditLog      = "audit_log"
	RetentionDeviceTokens  = "device_tokens"
	RetentionAccessTokens  = "access_tokens"
)

var (
	policyFields    = []string{FieldSerialNumber, FieldHardwareID, FieldSourceIP, FieldVirtualAddress, FieldWireGuardEndpoint, FieldAccountName, FieldPassword}
	policySinks     = []string{SinkRegistry, SinkConnectionLog, SinkProcessLog, SinkMetricLabels}
	policyForms     = []Form{FormRaw, FormSealed, FormBlindIndex, FormVerifier, FormPseudonym, FormTruncated, FormArgon2id, FormMemoryOnly, FormNever}
	policyRetention = []string{RetentionConnectionLog, RetentionSessions, RetentionBindingCodes, RetentionAuthFailures, RetentionAuditLog, RetentionDeviceTokens, RetentionAccessTokens}
)

// gatewayForms is what the gateway's code does with each field in each sink.
// A policy must allow every form written here ("never" and "memory_only"
// write nothing); the embedded policy states exactly this (a test checks).
func gatewayForms() map[string]map[string][]Form {
	n := []Form{FormNever}
	return map[string]map[string][]Form{
		FieldSerialNumber:      {SinkRegistry: {FormBlindIndex, FormSealed}, SinkConnectionLog: {FormPseudonym}, SinkProcessLog: {FormPseudonym}, SinkMetricLabels: n},
		FieldHardwareID:        {SinkRegistry: {FormVerifier}, SinkConnectionLog: n, SinkProcessLog: n, SinkMetricLabels: n},
		FieldSourceIP:          {SinkRegistry: n, SinkConnectionLog: {FormTruncated}, SinkProcessLog: {FormTruncated}, SinkMetricLabels: n},
		FieldVirtualAddress:    {SinkRegistry: {FormRaw}, SinkConnectionLog: n, SinkProcessLog: {FormRaw}, SinkMetricLabels: n},
		FieldWireGuardEndpoint: {SinkRegistry: {FormMemoryOnly}, SinkConnectionLog: n, SinkProcessLog: n, SinkMetricLabels: n},
		FieldAccountName:       {SinkRegistry: {FormBlindIndex, FormSealed}, SinkConnectionLog: {FormPseudonym}, SinkProcessLog: {FormPseudonym}, SinkMetricLabels: n},
		FieldPassword:          {SinkRegistry: {FormArgon2id}, SinkConnectionLog: n, SinkProcessLog: n, SinkMetricLabels: n},
	}
}

// Truncation the gateway applies (Addr.Truncated).
const (
	gatewayIPv4Bits = 24
	gatewayIPv6Bits = 48
)

// Policy is the privacy policy as data: each personal field's purpose and
// form in each sink, and retention maxima.
type Policy struct {
	Version int
	// Fields maps a field name (FieldSerialNumber, ...) to its policy.
	Fields map[string]FieldPolicy
	// Retention maps a table (RetentionConnectionLog, ...) to the longest
	// time its records may be kept.
	Retention map[string]time.Duration
	// PseudonymKeyLifetime is how long after its day a pseudonym key is
	// destroyed; at most the connection log's retention.
	PseudonymKeyLifetime time.Duration
	// IPv4Bits and IPv6Bits are the prefix lengths a truncated address keeps.
	IPv4Bits, IPv6Bits int

	raw []byte
}

// FieldPolicy is one field's purpose and its allowed forms per sink.
type FieldPolicy struct {
	Purpose string
	Sinks   map[string][]Form
}

// Allows reports whether the field may take form f in sink.
func (f FieldPolicy) Allows(sink string, form Form) bool {
	return slices.Contains(f.Sinks[sink], form)
}

type rawPolicy struct {
	Version              int                 `yaml:"version"`
	Fields               map[string]rawField `yaml:"fields"`
	Retention            map[string]string   `yaml:"retention"`
	PseudonymKeyLifetime string              `yaml:"pseudonym_key_lifetime"`
	Truncation           rawTruncation       `yaml:"truncation"`
}

type rawTruncation struct {
	IPv4 int `yaml:"ipv4"`
	IPv6 int `yaml:"ipv6"`
}

type rawField struct {
	Purpose       string   `yaml:"purpose"`
	Registry      []string `yaml:"registry"`
	ConnectionLog []string `yaml:"connection_log"`
	ProcessLog    []string `yaml:"process_log"`
	MetricLabels  []string `yaml:"metric_labels"`
}

func (f rawField) sinks() map[string][]string {
	return map[string][]string{SinkRegistry: f.Registry, SinkConnectionLog: f.ConnectionLog, SinkProcessLog: f.ProcessLog, SinkMetricLabels: f.MetricLabels}
}

// DefaultPolicy is the policy embedded in the binary (pkg/privacy/policy.yaml,
// copied to configs/policy.yaml).
func DefaultPolicy() *Policy {
	p, err := parsePolicy(defaultPolicyYAML)
	if err != nil {
		panic("privacy: the embedded policy is invalid: " + err.Error()) // a test keeps it valid
	}
	return p
}

// LoadPolicy reads and checks a policy file.
func LoadPolicy(path string) (*Policy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("privacy: policy: %w", err)
	}
	p, err := parsePolicy(b)
	if err != nil {
		return nil, fmt.Errorf("privacy: policy %s: %w", path, err)
	}
	return p, nil
}

// ParsePolicy parses and checks a policy document. Unknown keys, missing
// fields, sinks or retention periods, unknown forms, and a policy that
// forbids what the gateway does are errors naming the key.
func ParsePolicy(b []byte) (*Policy, error) {
	p, err := parsePolicy(b)
	if err != nil {
		return nil, fmt.Errorf("privacy: policy: %w", err)
	}
	return p, nil
}

var yamlUnknownField = regexp.MustCompile(`field (\S+) not found in type privacy\.raw(\w+)`)

func parsePolicy(b []byte) (*Policy, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var r rawPolicy
	if err := dec.Decode(&r); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty document")
		}
		var te *yaml.TypeError
		if errors.As(err, &te) {
			msgs := make([]string, len(te.Errors))
			for i, m := range te.Errors {
				msgs[i] = yamlUnknownField.ReplaceAllStringFunc(m, func(f string) string {
					sub := yamlUnknownField.FindStringSubmatch(f)
					where := "at the top level"
					switch sub[2] {
					case "Field":
						where = "in a field (known: purpose, " + strings.Join(policySinks, ", ") + ")"
					case "Truncation":
						where = "in truncation (known: ipv4, ipv6)"
					}
					return fmt.Sprintf("unknown key %q %s", sub[1], where)
				})
			}
			return nil, errors.New(strings.Join(msgs, "; "))
		}
		return nil, err
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one YAML document")
	}

	p := &Policy{
		Version:   r.Version,
		Fields:    make(map[string]FieldPolicy, len(r.Fields)),
		Retention: make(map[string]time.Duration, len(r.Retention)),
		IPv4Bits:  r.Truncation.IPv4,
		IPv6Bits:  r.Truncation.IPv6,
		raw:       slices.Clone(b),
	}
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if r.Version != 1 {
		bad("version", "must be 1 (got %d)", r.Version)
	}

	for _, name := range sortedKeys(r.Fields) {
		if !slices.Contains(policyFields, name) {
			bad("fields."+name, "unknown field (known: %s)", strings.Join(policyFields, ", "))
		}
	}
	code := gatewayForms()
	for _, name := range policyFields {
		rf, ok := r.Fields[name]
		key := "fields." + name
		if !ok {
			bad(key, "missing")
			continue
		}
		if strings.TrimSpace(rf.Purpose) == "" {
			bad(key+".purpose", "missing")
		}
		fp := FieldPolicy{Purpose: rf.Purpose, Sinks: make(map[string][]Form, len(policySinks))}
		raws := rf.sinks()
		for _, sink := range policySinks {
			skey := key + "." + sink
			list := raws[sink]
			if len(list) == 0 {
				bad(skey, "missing (list the allowed forms, or [never])")
				continue
			}
			var forms []Form
			for _, s := range list {
				f := Form(s)
				if !slices.Contains(policyForms, f) {
					bad(skey, "unknown form %q (known: %s)", s, joinForms(policyForms))
					continue
				}
				if slices.Contains(forms, f) {
					bad(skey, "form %q listed twice", s)
					continue
				}
				forms = append(forms, f)
			}
			if len(forms) > 1 && (slices.Contains(forms, FormNever) || slices.Contains(forms, FormMemoryOnly)) {
				bad(skey, "never and memory_only stand alone")
			}
			for _, f := range code[name][sink] {
				if f != FormNever && f != FormMemoryOnly && !slices.Contains(forms, f) {
					bad(skey, "the gateway writes this field as %s, which this policy does not allow", f)
				}
			}
			fp.Sinks[sink] = forms
		}
		p.Fields[name] = fp
	}

	for _, t := range sortedKeys(r.Retention) {
		if !slices.Contains(policyRetention, t) {
			bad("retention."+t, "unknown table (known: %s)", strings.Join(policyRetention, ", "))
		}
	}
	for _, t := range policyRetention {
		s, ok := r.Retention[t]
		if !ok {
			bad("retention."+t, "missing")
			continue
		}
		d, err := parsePositiveDuration(s)
		if err != nil {
			bad("retention."+t, "%v", err)
			continue
		}
		p.Retention[t] = d
	}

	if r.PseudonymKeyLifetime == "" {
		bad("pseudonym_key_lifetime", "missing")
	} else if d, err := parsePositiveDuration(r.PseudonymKeyLifetime); err != nil {
		bad("pseudonym_key_lifetime", "%v", err)
	} else {
		p.PseudonymKeyLifetime = d
		if cl, ok := p.Retention[RetentionConnectionLog]; ok && d > cl {
			bad("pseudonym_key_lifetime", "%s is longer than retention.connection_log %s", FormatDuration(d), FormatDuration(cl))
		}
	}

	switch {
	case r.Truncation.IPv4 == 0:
		bad("truncation.ipv4", "missing")
	case r.Truncation.IPv4 < gatewayIPv4Bits || r.Truncation.IPv4 > 32:
		bad("truncation.ipv4", "%d is outside %d..32 (the gateway keeps /%d)", r.Truncation.IPv4, gatewayIPv4Bits, gatewayIPv4Bits)
	}
	switch {
	case r.Truncation.IPv6 == 0:
		bad("truncation.ipv6", "missing")
	case r.Truncation.IPv6 < gatewayIPv6Bits || r.Truncation.IPv6 > 128:
		bad("truncation.ipv6", "%d is outside %d..128 (the gateway keeps /%d)", r.Truncation.IPv6, gatewayIPv6Bits, gatewayIPv6Bits)
	}

	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return p, nil
}

// Requested is what the configuration asks of the policy.
type Requested struct {
	// Retention maps a table (RetentionConnectionLog, ...) to the configured
	// retention.
	Retention map[string]time.Duration
}

// Check returns an error naming each configuration key that asks for more
// than the policy allows, e.g. "retention.connection_log: 2160h exceeds the
// policy maximum 720h".
func (p *Policy) Check(req Requested) error {
	var errs []error
	for _, t := range sortedKeys(req.Retention) {
		d := req.Retention[t]
		max, ok := p.Retention[t]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("retention.%s: the policy sets no retention for this table (known: %s)", t, strings.Join(policyRetention, ", ")))
		case d <= 0:
			errs = append(errs, fmt.Errorf("retention.%s: %s must be positive", t, FormatDuration(d)))
		case d > max:
			errs = append(errs, fmt.Errorf("retention.%s: %s exceeds the policy maximum %s", t, FormatDuration(d), FormatDuration(max)))
		}
	}
	return errors.Join(errs...)
}

// MaxRetention is the longest the policy lets table's records be kept, or 0
// when the policy names no such table.
func (p *Policy) MaxRetention(table string) time.Duration { return p.Retention[table] }

// YAML is the policy document as loaded (comments included): what GetPolicy
// serves.
func (p *Policy) YAML() []byte { return slices.Clone(p.raw) }

// FormatDuration writes d without trailing zero units ("720h", "1h30m").
func FormatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func parsePositiveDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration (e.g. 720h)", s)
	}
	if d <= 0 {
		return 0, fmt.Errorf("%s must be positive", s)
	}
	return d, nil
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func joinForms(fs []Form) string {
	s := make([]string, len(fs))
	for i, f := range fs {
		s[i] = string(f)
	}
	return strings.Join(s, ", ")
}
