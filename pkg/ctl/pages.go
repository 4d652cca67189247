package ctl

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// listPageSize is the page size dassetctl asks for: the gateway's maximum,
// so a fleet-size list takes few round trips; each page is far below gRPC's
// 4 MiB message limit.
const listPageSize = 5000

// pager is one paginated admin list.
type pager[T proto.Message] struct {
	field  string   // the list's JSON field name, as in the response ("devices")
	header []string // table header
	// fetch gets the page after token ("" = first) and the next token ("" = last).
	fetch func(ctx context.Context, c gatewayv1.AdminServiceClient, token string) (items []T, next string, err error)
	row   func(w io.Writer, item T)
}

// dialAdmin connects to the admin endpoint chosen by the global flags,
// without a deadline: commands of many calls bound each call instead.
func (a *app) dialAdmin(cmd *cobra.Command) (gatewayv1.AdminServiceClient, *grpc.ClientConn, error) {
	target, opts, err := a.dialOptions(cmd)
	if err != nil {
		return nil, nil, err
	}
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to %s: %w", a.dial.where, err)
	}
	return gatewayv1.NewAdminServiceClient(conn), conn, nil
}

// listPages fetches a list page by page (each call bounded by --timeout, the
// whole list by nothing) and prints each page as it arrives: table rows, or
// one JSON document {"<field>": [...]} written item by item, so memory does
// not grow with the fleet.
func listPages[T proto.Message](a *app, cmd *cobra.Command, p pager[T]) error {
	client, conn, err := a.dialAdmin(cmd)
	if err != nil {
		return err
	}
	defer conn.Close()
	out := cmd.OutOrStdout()
	var tw *tabwriter.Writer
	if a.output != outputJSON {
		tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	}
	n, token := 0, ""
	for {
		ctx, cancel := context.WithTimeout(cmd.Context(), a.timeout)
		items, next, err := p.fetch(ctx, client, token)
		cancel()
		if err != nil {
			if n > 0 && tw != nil {
				_ = tw.Flush()
			}
			return err
		}
		if tw != nil {
			if token == "" {
				row(tw, p.header...)
			}
			for _, it := range items {
				p.row(tw, it)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
		} else {
			for _, it := range items {
				b, err := jsonOptions.Marshal(it)
				if err != nil {
					return fmt.Errorf("encode JSON: %w", err)
				}
				sep := ",\n"
				if n == 0 {
					sep = fmt.Sprintf("{\n  %q: [\n", p.field)
				}
				if _, err := io.WriteString(out, sep+indent(string(b), "    ")); err != nil {
					return err
				}
				n++
			}
		}
		if next == "" {
			break
		}
		if next == token {
			return fmt.Errorf("the gateway sent the same page token twice")
		}
		token = next
	}
	if tw == nil {
		end := "\n  ]\n}\n"
		if n == 0 {
			end = fmt.Sprintf("{\n  %q: []\n}\n", p.field)
		}
		_, err := io.WriteString(out, end)
		return err
	}
	return nil
}

func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n"+prefix)
}
