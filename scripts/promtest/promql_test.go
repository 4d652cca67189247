package promtest

import (
	"slices"
	"sort"
	"testing"
)

// promqlWords are PromQL keywords and aggregation operators: identifiers in
// an expression that are not metric names even when not followed by "(".
var promqlWords = map[string]bool{
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
	"limitk": true, "limit_ratio": true,
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"bool": true, "and": true, "or": true, "unless": true, "offset": true, "atan2": true,
	"inf": true, "nan": true,
}

// labelListWords are followed by a parenthesised list of label names.
var labelListWords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

// metricNames returns the metric names an expression selects, sorted and
// without duplicates. It skips string literals, label matchers ({...}),
// ranges and subqueries ([...]), numbers and durations, function names
// (identifiers followed by "("), keywords, and the label lists of
// by/without/on/ignoring/group_left/group_right. It does not handle
// {__name__="..."} selectors; the dashboard and rules do not use them.
func metricNames(expr string) []string {
	seen := map[string]bool{}
	s := expr
	i := 0
	skipString := func() {
		q := s[i]
		i++
		for i < len(s) && s[i] != q {
			if s[i] == '\\' && q != '`' {
				i++
			}
			i++
		}
		i++ // closing quote
	}
	skipUntil := func(open, close byte) {
		depth := 0
		for i < len(s) {
			switch c := s[i]; {
			case c == '"' || c == '\'' || c == '`':
				skipString()
				continue
			case c == open:
				depth++
			case c == close:
				depth--
				if depth == 0 {
					i++
					return
				}
			}
			i++
		}
	}
	isIdentStart := func(c byte) bool { return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	isIdent := func(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' }
	nextNonSpace := func(j int) int {
		for j < len(s) && (s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r') {
			j++
		}
		return j
	}
	for i < len(s) {
		c := s[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			skipString()
		case c == '{':
			skipUntil('{', '}')
		case c == '[':
			skipUntil('[', ']')
		case c == '#': // comment to end of line
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c >= '0' && c <= '9' || c == '.':
			for i < len(s) && (isIdent(s[i]) || s[i] == '.') {
				i++
			}
		case isIdentStart(c):
			j := i
			for j < len(s) && isIdent(s[j]) {
				j++
			}
			word := s[i:j]
			k := nextNonSpace(j)
			lower := toLower(word)
			switch {
			case labelListWords[lower] && k < len(s) && s[k] == '(':
				i = k
				skipUntil('(', ')')
				continue
			case promqlWords[lower]:
			case k < len(s) && s[k] == '(':
				// a function call
			default:
				seen[word] = true
			}
			i = j
		default:
			i++
		}
	}
	out := make([]string, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func toLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

func TestMetricNames(t *testing.T) {
	cases := []struct {
		expr string
		want []string
	}{
		{`up{job="dasset-gateway"} == 0`, []string{"up"}},
		{`sum by (outcome) (rate(dasset_gateway_logins_total{instance=~"a|b"}[1m]))`, []string{"dasset_gateway_logins_total"}},
		{`histogram_quantile(0.99, sum by (op, le) (rate(x_bucket{a="}{[("}[5m:1m])))`, []string{"x_bucket"}},
		{"a > 0\nand on (job, instance)\nsum without(age) (b{age=~\"le_2m|le_5m\"}) == 0", []string{"a", "b"}},
		{`time() - m_timestamp_seconds > 300`, []string{"m_timestamp_seconds"}},
		{`exp - time() < 14 * 86400 + 1e3 + 0x1f`, []string{"exp"}},
		{`a / on(instance) group_left(version) b offset 5m`, []string{"a", "b"}},
		{`SUM BY (x) (Rate(c[1m])) unless bool d # d2 is a comment`, []string{"c", "d"}},
		{`count_values("by", m) or vector(1)`, []string{"m"}},
		{`max(max by (table) (o) / max by (table) (l))`, []string{"l", "o"}},
	}
	for _, c := range cases {
		if got := metricNames(c.expr); !slices.Equal(got, c.want) {
			t.Errorf("metricNames(%q) = %q, want %q", c.expr, got, c.want)
		}
	}
}
