package promtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"

	"github.com/planetxlabs/dasset-gateway/scripts/internal/netnstest"
)

const (
	job          = "dasset-gateway"
	needPromPkgs = "install Debian's prometheus package (make deps does)"
)

// scrapeMetrics are the series Prometheus adds to every target itself.
var scrapeMetrics = map[string]bool{
	"up": true, "scrape_duration_seconds": true, "scrape_samples_scraped": true,
	"scrape_samples_post_metric_relabeling": true, "scrape_series_added": true,
}

func TestPromtoolRules(t *testing.T) {
	promtool := tool(t, "promtool", needPromPkgs)
	dir := filepath.Join(netnstest.RepoRoot(t), "configs", "prometheus")
	for _, args := range [][]string{
		{"check", "rules", "alerts.yml"},
		{"test", "rules", "alerts_test.yml"},
		{"check", "config", "prometheus.yml"},
	} {
		out, err := runIn(dir, promtool, args...)
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
			continue
		}
		t.Logf("promtool %s:\n%s", strings.Join(args, " "), strings.TrimSpace(out))
	}
}

// TestAlertTestsCoverEveryAlert checks that alerts_test.yml has, for every
// alert of alerts.yml, a case where it fires and one where it stays quiet.
func TestAlertTestsCoverEveryAlert(t *testing.T) {
	dir := filepath.Join(netnstest.RepoRoot(t), "configs", "prometheus")
	rules := loadRules(t, filepath.Join(dir, "alerts.yml"))
	var tests struct {
		Tests []struct {
			Name          string `yaml:"name"`
			AlertRuleTest []struct {
				AlertName string           `yaml:"alertname"`
				ExpAlerts []map[string]any `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "alerts_test.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &tests); err != nil {
		t.Fatalf("alerts_test.yml: %v", err)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.AlertName] = true
			} else {
				quiet[a.AlertName] = true
			}
		}
	}
	for _, r := range rules {
		if r.Alert == "" {
			continue
		}
		if !fires[r.Alert] {
			t.Errorf("alerts_test.yml has no case where %s fires", r.Alert)
		}
		if !quiet[r.Alert] {
			t.Errorf("alerts_test.yml has no case where %s stays quiet", r.Alert)
		}
		for _, k := range []string{"summary", "description"} {
			if r.Annotations[k] == "" {
				t.Errorf("%s has no %s annotation", r.Alert, k)
			}
		}
		if s := r.Labels["severity"]; s != "critical" && s != "warning" {
			t.Errorf("%s: severity %q, want critical or warning", r.Alert, s)
		}
	}
}

// runIn runs a promtool command with the .yml arguments taken relative to dir.
func runIn(dir, bin string, args ...string) (string, error) {
	abs := make([]string, len(args))
	for i, a := range args {
		if strings.HasSuffix(a, ".yml") {
			a = filepath.Join(dir, a)
		}
		abs[i] = a
	}
	return run(30*time.Second, "", bin, abs...)
}

// rule is one rule of a Prometheus rule file.
type rule struct {
	Alert       string            `yaml:"alert"`
	Record      string            `yaml:"record"`
	Expr        string            `yaml:"expr"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func loadRules(t *testing.T, path string) []rule {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []rule `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var out []rule
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	if len(out) == 0 {
		t.Fatalf("%s has no rules", path)
	}
	return out
}

// dashboard is the part of a Grafana dashboard the test reads.
type dashboard struct {
	SchemaVersion int     `json:"schemaVersion"`
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Datasource *datasource     `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
	Annotations struct {
		List []struct {
			Name       string      `json:"name"`
			Expr       string      `json:"expr"`
			Datasource *datasource `json:"datasource"`
		} `json:"list"`
	} `json:"annotations"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID         int         `json:"id"`
	Type       string      `json:"type"`
	Title      string      `json:"title"`
	Datasource *datasource `json:"datasource"`
	GridPos    *struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		RefID      string      `json:"refId"`
		Expr       string      `json:"expr"`
		Datasource *datasource `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's panels
}

// query is one PromQL expression of the dashboard or the rules.
type query struct {
	where string // "panel \"Logins/s by outcome\" A", "alert DassetGatewayDown"
	expr  string // as written
	panel bool   // a dashboard expression, that must return data
}

const dsUID = "${DS_PROMETHEUS}"

// loadDashboard reads the dashboard, checks its shape and returns its
// queries and the metric of its instance variable.
func loadDashboard(t *testing.T, path string) ([]query, string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if d.SchemaVersion < 36 || d.UID == "" || d.Title == "" {
		t.Errorf("dashboard: schemaVersion %d, uid %q, title %q", d.SchemaVersion, d.UID, d.Title)
	}
	vars := map[string]string{}
	instanceMetric := ""
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
		if v.Name == "instance" {
			var q struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &q); err != nil {
				t.Fatalf("instance variable query: %v", err)
			}
			m := regexp.MustCompile(`^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*instance\s*\)$`).FindStringSubmatch(q.Query)
			if m == nil {
				t.Fatalf("instance variable query %q is not label_values(METRIC, instance)", q.Query)
			}
			instanceMetric = m[1]
			if v.Datasource == nil || v.Datasource.UID != dsUID {
				t.Errorf("instance variable datasource %+v, want uid %s", v.Datasource, dsUID)
			}
		}
	}
	if vars["DS_PROMETHEUS"] != "datasource" || vars["instance"] != "query" {
		t.Fatalf("dashboard variables %v: want DS_PROMETHEUS (datasource) and instance (query)", vars)
	}
	var qs []query
	ids := map[int]string{}
	checkLayout(t, d.Panels)
	var walk func(ps []panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if prev, dup := ids[p.ID]; dup || p.ID == 0 {
				t.Errorf("panel %q: id %d missing or also used by %q", p.Title, p.ID, prev)
			}
			ids[p.ID] = p.Title
			if p.GridPos == nil || p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
				t.Errorf("panel %q: bad gridPos %+v", p.Title, p.GridPos)
			}
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if p.Datasource == nil || p.Datasource.UID != dsUID {
				t.Errorf("panel %q: datasource %+v, want uid %s", p.Title, p.Datasource, dsUID)
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no targets", p.Title)
			}
			for _, tg := range p.Targets {
				if tg.Datasource != nil && tg.Datasource.UID != dsUID {
					t.Errorf("panel %q %s: datasource %+v, want uid %s", p.Title, tg.RefID, tg.Datasource, dsUID)
				}
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("panel %q %s: empty expr", p.Title, tg.RefID)
					continue
				}
				qs = append(qs, query{where: fmt.Sprintf("panel %q %s", p.Title, tg.RefID), expr: tg.Expr, panel: true})
			}
		}
	}
	walk(d.Panels)
	for _, a := range d.Annotations.List {
		if a.Expr != "" {
			qs = append(qs, query{where: fmt.Sprintf("annotation %q", a.Name), expr: a.Expr})
		}
	}
	return qs, instanceMetric
}

// checkLayout reports top-level panels that overlap on Grafana's 24-column
// grid.
func checkLayout(t *testing.T, panels []panel) {
	t.Helper()
	cells := map[[2]int]string{} // grid cell → the panel on it
	for _, p := range panels {
		if p.GridPos == nil {
			continue
		}
		if other := claim(cells, p); other != "" {
			t.Errorf("panel %q overlaps panel %q", p.Title, other)
		}
	}
}

// claim marks p's cells as taken, or returns the title of a panel that
// already holds one of them.
func claim(cells map[[2]int]string, p panel) string {
	g := p.GridPos
	for x := g.X; x < g.X+g.W && x < 24; x++ {
		for y := g.Y; y < g.Y+min(g.H, 100); y++ {
			if other, taken := cells[[2]int{x, y}]; taken {
				return other
			}
			cells[[2]int{x, y}] = p.Title
		}
	}
	return ""
}

// substitute replaces Grafana's variables as Grafana would for one gateway.
func substitute(expr, instance string) (string, error) {
	r := strings.NewReplacer(
		"$__rate_interval", "1m", "${__rate_interval}", "1m",
		"$__interval", "1s", "${__interval}", "1s",
		"$__range", "5m", "${__range}", "5m",
		"${instance}", instance, "$instance", instance,
	)
	out := r.Replace(expr)
	if strings.Contains(out, "$") {
		return "", fmt.Errorf("unknown variable left in %q", out)
	}
	return out, nil
}

// promAPI talks to a Prometheus server's HTTP API.
type promAPI struct{ base string }

type apiResponse struct {
	Status    string          `json:"status"`
	Data      json.RawMessage `json:"data"`
	ErrorType string          `json:"errorType"`
	Error     string          `json:"error"`
	Warnings  []string        `json:"warnings"`
}

func (p promAPI) get(path string, params url.Values) (json.RawMessage, []string, error) {
	u := p.base + path
	if params != nil {
		u += "?" + params.Encode()
	}
	resp, err := httpClient.Get(u)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	var r apiResponse
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, nil, fmt.Errorf("GET %s: %s: %w", path, resp.Status, err)
	}
	if r.Status != "success" {
		return nil, r.Warnings, fmt.Errorf("%s: %s", r.ErrorType, r.Error)
	}
	return r.Data, r.Warnings, nil
}

// instantResult is an instant query's answer: its series (or one scalar),
// how many of them hold a number (not NaN).
type instantResult struct {
	series, numbers int
}

func (p promAPI) query(expr string) (instantResult, []string, error) {
	data, warn, err := p.get("/api/v1/query", url.Values{"query": {expr}})
	if err != nil {
		return instantResult{}, warn, err
	}
	var d struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return instantResult{}, warn, err
	}
	var values [][2]any
	switch d.ResultType {
	case "vector":
		var v []struct {
			Value [2]any `json:"value"`
		}
		if err := json.Unmarshal(d.Result, &v); err != nil {
			return instantResult{}, warn, err
		}
		for _, s := range v {
			values = append(values, s.Value)
		}
	case "scalar":
		var v [2]any
		if err := json.Unmarshal(d.Result, &v); err != nil {
			return instantResult{}, warn, err
		}
		values = append(values, v)
	default:
		return instantResult{}, warn, fmt.Errorf("result type %s, want vector or scalar", d.ResultType)
	}
	r := instantResult{series: len(values)}
	for _, v := range values {
		s, _ := v[1].(string)
		if f, err := strconv.ParseFloat(s, 64); err == nil && !math.IsNaN(f) {
			r.numbers++
		}
	}
	return r, warn, nil
}

// value is the single number of a query, or an error.
func (p promAPI) value(expr string) (float64, error) {
	data, _, err := p.get("/api/v1/query", url.Values{"query": {expr}})
	if err != nil {
		return 0, err
	}
	var d struct {
		Result []struct {
			Value [2]any `json:"value"`
		} `json:"result"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return 0, err
	}
	if len(d.Result) != 1 {
		return 0, fmt.Errorf("%s: %d series, want 1", expr, len(d.Result))
	}
	s, _ := d.Result[0].Value[1].(string)
	return strconv.ParseFloat(s, 64)
}

// exposedNames parses a /metrics body: the series names it holds (with
// _bucket/_sum/_count for histograms and summaries) and each family.
func exposedNames(t *testing.T, body []byte) (map[string]bool, map[string]*dto.MetricFamily) {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	names := map[string]bool{}
	for n, f := range fams {
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			names[n+"_bucket"], names[n+"_sum"], names[n+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			names[n], names[n+"_sum"], names[n+"_count"] = true, true, true
		default:
			names[n] = true
		}
	}
	return names, fams
}

// counterValue sums a counter family's series whose label lbl is val.
func counterValue(fams map[string]*dto.MetricFamily, name, lbl, val string) float64 {
	f := fams[name]
	if f == nil {
		return 0
	}
	var sum float64
	for _, m := range f.GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == lbl && l.GetValue() == val {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// gatewayConfig is a netstack gateway on free loopback ports with its data
// in dir and a pruner that runs every second.
func gatewayConfig(dir, grpcAddr, metricsAddr string, wgPort int) string {
	return fmt.Sprintf(`data_dir: %s
log:
  level: info
  format: json
tunnel:
  mode: netstack
  interface: dprom0
  listen_port: %d
  uapi: false
grpc:
  listen: %q
admin:
  socket: %s
metrics:
  listen: %q
retention:
  interval: 1s
`, filepath.Join(dir, "data"), wgPort, grpcAddr, filepath.Join(dir, "admin.sock"), metricsAddr)
}

// prometheusConfig is configs/prometheus/prometheus.yml with 1s intervals,
// absolute rule_files, and the one gateway as the dasset-gateway target.
func prometheusConfig(t *testing.T, promDir, target string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(promDir, "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatalf("prometheus.yml: %v", err)
	}
	cfg["global"] = map[string]any{"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"}
	files, _ := cfg["rule_files"].([]any)
	if len(files) == 0 {
		t.Fatal("prometheus.yml has no rule_files")
	}
	for i, f := range files {
		files[i] = filepath.Join(promDir, f.(string))
	}
	found := false
	scs, _ := cfg["scrape_configs"].([]any)
	for _, sc := range scs {
		m := sc.(map[string]any)
		if m["job_name"] == job {
			m["static_configs"] = []any{map[string]any{"targets": []any{target}}}
			found = true
		}
	}
	if !found {
		t.Fatalf("prometheus.yml has no job %q", job)
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// fingerprint reads the self-made certificate's SHA-256 from the gateway's
// JSON log.
func fingerprint(logPath string) (string, error) {
	f, err := os.Open(logPath)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) != nil {
			continue
		}
		if fp, ok := line["sha256"].(string); ok && fp != "" {
			return fp, nil
		}
	}
	return "", fmt.Errorf("no sha256 in the gateway log yet")
}

func TestPrometheusAgainstGateway(t *testing.T) {
	prometheus := tool(t, "prometheus", needPromPkgs)
	promtool := tool(t, "promtool", needPromPkgs)
	root := netnstest.RepoRoot(t)
	promDir := filepath.Join(root, "configs", "prometheus")
	bin := netnstest.FindBinaries(context.Background(), t)
	dir := t.TempDir()

	// The gateway.
	grpcAddr, metricsAddr := netnstest.FreeTCP(t), netnstest.FreeTCP(t)
	cfgPath := filepath.Join(dir, "gateway.yaml")
	if err := os.WriteFile(cfgPath, []byte(gatewayConfig(dir, grpcAddr, metricsAddr, netnstest.FreeUDPPort(t))), 0o600); err != nil {
		t.Fatal(err)
	}
	gw := startProc(t, "gateway", dir, filepath.Join(bin, "dasset-gateway"), "serve", "--config", cfgPath)
	metricsURL := "http://" + metricsAddr
	if err := waitFor(30*time.Second, func() error {
		if gw.Exited() {
			return fmt.Errorf("gateway exited: %v", gw.Err())
		}
		_, err := httpGet(metricsURL + "/readyz")
		return err
	}); err != nil {
		t.Fatalf("gateway not ready: %v", err)
	}
	if _, err := httpGet(metricsURL + "/healthz"); err != nil {
		t.Fatalf("healthz: %v", err)
	}
	var pin string
	if err := waitFor(5*time.Second, func() (err error) { pin, err = fingerprint(gw.Log); return err }); err != nil {
		t.Fatal(err)
	}

	// Prometheus, scraping it every second with the shipped rules.
	promCfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(promCfg, prometheusConfig(t, promDir, metricsAddr), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := run(30*time.Second, "", promtool, "check", "config", promCfg); err != nil {
		t.Fatalf("promtool check config (generated): %v\n%s", err, out)
	}
	promAddr := netnstest.FreeTCP(t)
	prom := startProc(t, "prometheus", dir, prometheus,
		"--config.file="+promCfg, "--storage.tsdb.path="+filepath.Join(dir, "tsdb"),
		"--web.listen-address="+promAddr, "--log.level=info")
	api := promAPI{base: "http://" + promAddr}
	var instance string
	if err := waitFor(30*time.Second, func() error {
		if prom.Exited() {
			return fmt.Errorf("prometheus exited: %v", prom.Err())
		}
		data, _, err := api.get("/api/v1/targets", nil)
		if err != nil {
			return err
		}
		var d struct {
			ActiveTargets []struct {
				Labels    map[string]string `json:"labels"`
				Health    string            `json:"health"`
				LastError string            `json:"lastError"`
			} `json:"activeTargets"`
		}
		if err := json.Unmarshal(data, &d); err != nil {
			return err
		}
		for _, tg := range d.ActiveTargets {
			if tg.Labels["job"] == job && tg.Health == "up" {
				instance = tg.Labels["instance"]
				return nil
			}
		}
		return fmt.Errorf("target not up yet: %+v", d.ActiveTargets)
	}); err != nil {
		t.Fatalf("prometheus: %v", err)
	}
	t.Logf("prometheus %s scrapes %s (instance %q)", promAddr, metricsAddr, instance)

	// Three devices enrolled and logged in, and three refused logins.
	socket := filepath.Join(dir, "admin.sock")
	csv := "serial_number,hardware_id\nDS-PROM-0001,HW-0001-PROMTEST\nDS-PROM-0002,HW-0002-PROMTEST\nDS-PROM-0003,HW-0003-PROMTEST\n"
	if out, err := run(20*time.Second, csv, filepath.Join(bin, "dassetctl"), "--socket", socket, "enroll", "--file", "-"); err != nil {
		t.Fatalf("dassetctl enroll: %v\n%s", err, out)
	}
	agentArgs := func(n int, serial, hwid string) []string {
		return []string{"up", "--gateway", grpcAddr, "--pin", pin, "--netstack",
			"--serial", serial, "--hwid", hwid, "--interface", fmt.Sprintf("dpa%d", n),
			"--state-dir", filepath.Join(dir, fmt.Sprintf("agent%d", n)), "--log-format", "json"}
	}
	var agents []*netnstest.Proc
	for i := 1; i <= 3; i++ {
		agents = append(agents, startProc(t, fmt.Sprintf("agent%d", i), dir, filepath.Join(bin, "dasset-agent"),
			agentArgs(i, fmt.Sprintf("DS-PROM-%04d", i), fmt.Sprintf("HW-%04d-PROMTEST", i))...))
	}
	var fams map[string]*dto.MetricFamily
	if err := waitFor(30*time.Second, func() error {
		for _, a := range agents {
			if a.Exited() {
				return fmt.Errorf("%s exited: %v", a.Name, a.Err())
			}
		}
		body, err := httpGet(metricsURL + "/metrics")
		if err != nil {
			return err
		}
		_, fams = exposedNames(t, body)
		if ok := counterValue(fams, "dasset_gateway_logins_total", "outcome", "ok"); ok < 3 {
			return fmt.Errorf("%v successful logins, want 3", ok)
		}
		return nil
	}); err != nil {
		t.Fatalf("agents: %v", err)
	}
	refused := [][2]string{
		{"DS-PROM-0001", "HW-WRONG-PROMTEST"}, // wrong hardware id
		{"DS-PROM-0002", "HW-WRONG-PROMTEST"},
		{"DS-PROM-9999", "HW-9999-PROMTEST"}, // not enrolled
	}
	for i, r := range refused {
		out, err := run(30*time.Second, "", filepath.Join(bin, "dasset-agent"), agentArgs(10+i, r[0], r[1])...)
		if err == nil || !exitError(err) {
			t.Fatalf("agent %s with a wrong hardware id: err %v, want a refusal\n%s", r[0], err, out)
		}
	}

	// Wait until Prometheus saw it all: logins, online devices, handshakes.
	for _, c := range []struct {
		expr string
		min  float64
	}{
		{fmt.Sprintf(`sum(dasset_gateway_logins_total{job=%q, outcome="ok"})`, job), 3},
		{fmt.Sprintf(`sum(dasset_gateway_logins_total{job=%q, outcome=~"denied|invalid"})`, job), float64(len(refused))},
		{fmt.Sprintf(`sum(dasset_gateway_online_devices{job=%q})`, job), 3},
		{fmt.Sprintf(`sum(dasset_gateway_wireguard_peers_by_handshake_age{job=%q, age=~"le_2m|le_5m"})`, job), 3},
	} {
		if err := waitFor(30*time.Second, func() error {
			v, err := api.value(c.expr)
			if err != nil {
				return err
			}
			if v < c.min {
				return fmt.Errorf("%s = %v, want >= %v", c.expr, v, c.min)
			}
			return nil
		}); err != nil {
			t.Fatalf("prometheus: %v", err)
		}
	}
	// A few more scrapes (and so rule evaluations), so that every rate() in
	// the dashboard has samples to work on: wait until Prometheus has
	// recorded three more scrapes of the gateway.
	scrapes := fmt.Sprintf(`count_over_time(up{job=%q}[10m])`, job)
	seen, err := api.value(scrapes)
	if err != nil {
		t.Fatalf("prometheus: %s: %v", scrapes, err)
	}
	if err := waitFor(30*time.Second, func() error {
		v, err := api.value(scrapes)
		if err != nil {
			return err
		}
		if v < seen+3 {
			return fmt.Errorf("%s = %v, want >= %v", scrapes, v, seen+3)
		}
		return nil
	}); err != nil {
		t.Fatalf("prometheus: %v", err)
	}

	// /metrics passes promtool's lint, and what names it exposes.
	body, err := httpGet(metricsURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := run(30*time.Second, string(body), promtool, "check", "metrics"); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	exposed, _ := exposedNames(t, body)
	// Every dashboard and rule expression: valid, known metrics, and (for
	// the dashboard) data.
	qs, instanceMetric := loadDashboard(t, filepath.Join(root, "configs", "grafana", "dasset-gateway.json"))
	if !exposed[instanceMetric] {
		t.Errorf("instance variable: label_values(%s, instance): the gateway does not export %s", instanceMetric, instanceMetric)
	}
	data, _, err := api.get("/api/v1/series", url.Values{"match[]": {instanceMetric}})
	if err != nil || !strings.Contains(string(data), strconv.Quote(instance)) {
		t.Errorf("instance variable: series of %s lack instance %q: %v %s", instanceMetric, instance, err, data)
	}
	rules := loadRules(t, filepath.Join(promDir, "alerts.yml"))
	for _, r := range rules {
		qs = append(qs, query{where: "alert " + r.Alert, expr: r.Expr})
	}
	for _, q := range qs {
		expr, err := substitute(q.expr, instance)
		if err != nil {
			t.Errorf("%s: %v", q.where, err)
			continue
		}
		var unknown []string
		for _, n := range metricNames(expr) {
			if !exposed[n] && !scrapeMetrics[n] {
				unknown = append(unknown, n)
			}
		}
		if len(unknown) > 0 {
			t.Errorf("%s uses metrics the gateway does not export: %v\n  %s", q.where, unknown, expr)
		}
		res, warn, err := api.query(expr)
		if err != nil {
			t.Errorf("%s: query error: %v\n  %s", q.where, err, expr)
			continue
		}
		if len(warn) > 0 {
			t.Errorf("%s: query warnings: %v", q.where, warn)
		}
		if !q.panel {
			continue
		}
		switch {
		case res.numbers > 0:
		case res.series == 0:
			t.Errorf("%s: no data\n  %s", q.where, expr)
		default:
			t.Errorf("%s: only NaN (%d series)\n  %s", q.where, res.series, expr)
		}
	}
	t.Logf("evaluated %d expressions (%d dashboard targets and annotations, %d alert rules)", len(qs), len(qs)-len(rules), len(rules))

	// Prometheus evaluates every rule without error, and a healthy gateway
	// raises no alert.
	if err := waitFor(10*time.Second, func() error {
		data, _, err := api.get("/api/v1/rules", nil)
		if err != nil {
			return err
		}
		var d struct {
			Groups []struct {
				Rules []struct {
					Name           string `json:"name"`
					Health         string `json:"health"`
					LastError      string `json:"lastError"`
					State          string `json:"state"`
					LastEvaluation string `json:"lastEvaluation"`
				} `json:"rules"`
			} `json:"groups"`
		}
		if err := json.Unmarshal(data, &d); err != nil {
			return err
		}
		n := 0
		var bad []string
		for _, g := range d.Groups {
			for _, r := range g.Rules {
				n++
				if r.Health != "ok" || r.LastError != "" {
					bad = append(bad, fmt.Sprintf("%s: health %q %s", r.Name, r.Health, r.LastError))
				}
				if r.State != "" && r.State != "inactive" {
					bad = append(bad, fmt.Sprintf("%s is %s on a healthy gateway", r.Name, r.State))
				}
			}
		}
		if n != len(rules) {
			bad = append(bad, fmt.Sprintf("prometheus loaded %d rules, alerts.yml has %d", n, len(rules)))
		}
		if len(bad) > 0 {
			return fmt.Errorf("%s", strings.Join(bad, "; "))
		}
		return nil
	}); err != nil {
		t.Errorf("rules: %v", err)
	}
}
