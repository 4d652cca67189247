package ctl

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	outputTable = "table"
	outputJSON  = "json"
)

// none marks an empty cell.
const none = "–"

// jsonOptions: proto field names (snake_case, as in the .proto file) and
// every field present, so scripts can rely on the keys.
var jsonOptions = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true, Multiline: true, Indent: "  "}

// print writes msg as one JSON document with -o json, or calls table with a
// tabwriter otherwise.
func (a *app) print(cmd *cobra.Command, msg proto.Message, table func(w io.Writer)) error {
	out := cmd.OutOrStdout()
	if a.output == outputJSON {
		b, err := jsonOptions.Marshal(msg)
		if err != nil {
			return fmt.Errorf("encode JSON: %w", err)
		}
		_, err = fmt.Fprintf(out, "%s\n", b)
		return err
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

// printPlain is print for output that is not a proto message (status,
// version): v is encoded with encoding/json.
func (a *app) printPlain(cmd *cobra.Command, v any, table func(w io.Writer)) error {
	out := cmd.OutOrStdout()
	if a.output == outputJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

// row writes one tab-separated table row.
func row(w io.Writer, cells ...string) {
	fmt.Fprintln(w, strings.Join(cells, "\t"))
}

func orNone(s string) string {
	if s == "" {
		return none
	}
	return s
}

func joinOrNone(ss []string) string { return orNone(strings.Join(ss, ",")) }

// ago formats the time since t like "12s ago", or "never" for a zero or
// missing timestamp.
func ago(now time.Time, ts *timestamppb.Timestamp) string {
	if ts == nil || (ts.GetSeconds() == 0 && ts.GetNanos() == 0) {
		return "never"
	}
	d := now.Sub(ts.AsTime())
	if d < 0 {
		return "in " + shortDuration(-d)
	}
	return shortDuration(d) + " ago"
}

// until formats the time left before t like "in 55m".
func until(now time.Time, ts *timestamppb.Timestamp) string {
	if ts == nil || (ts.GetSeconds() == 0 && ts.GetNanos() == 0) {
		return none
	}
	d := ts.AsTime().Sub(now)
	if d < 0 {
		return shortDuration(-d) + " ago"
	}
	return "in " + shortDuration(d)
}

// shortDuration is d in its largest whole unit: 12s, 5m, 3h, 2d.
func shortDuration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	default:
		return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
	}
}

// bytesHuman formats a byte count like "1.2 MiB".
func bytesHuman(n uint64) string { return humanize.IBytes(n) }

// shortKey is the first characters of a WireGuard key's base64 form, enough
// to tell peers apart in a table ("Vb3XoF2m…").
func shortKey(k []byte) string {
	if len(k) == 0 {
		return none
	}
	s := base64.StdEncoding.EncodeToString(k)
	if len(s) > 10 {
		return s[:10] + "…"
	}
	return s
}

// printCounts writes a map of table → rows as a sorted two-column table.
func printCounts(w io.Writer, header string, counts map[string]int64) {
	names := make([]string, 0, len(counts))
	for n := range counts {
		names = append(names, n)
	}
	sort.Strings(names)
	row(w, "TABLE", header)
	var total int64
	for _, n := range names {
		row(w, n, fmt.Sprint(counts[n]))
		total += counts[n]
	}
	row(w, "total", fmt.Sprint(total))
}
