package ctl

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// subjectFlags are the flags shared by subject export and erase.
type subjectFlags struct {
	serial, account, reason string
}

func (s *subjectFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&s.serial, "serial", "", "the device's serial number")
	f.StringVar(&s.account, "account", "", "the account's name")
	f.StringVar(&s.reason, "reason", "", "why (written to the audit log; required)")
	cmd.MarkFlagsMutuallyExclusive("serial", "account")
	cmd.MarkFlagsOneRequired("serial", "account")
}

// check validates the flags and returns how to name the subject to the
// operator.
func (s *subjectFlags) check() (string, error) {
	if s.reason == "" {
		return "", usagef("--reason is required (it is written to the audit log)")
	}
	if s.account != "" {
		return "account " + s.account, nil
	}
	sn, err := privacy.ParseSerialNumber(s.serial)
	if err != nil {
		return "", &usageError{err: err}
	}
	return "device " + sn.Masked(), nil
}

func (a *app) subjectCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "subject",
		Short: "Answer a data subject's request: export or erase their data",
		Example: `  dassetctl subject export --serial DS-000123 --reason "request 2024-17"
  dassetctl subject erase --account alice --reason "request 2024-18"`,
	}
	cmd.AddCommand(a.subjectExportCommand(), a.subjectEraseCommand())
	return cmd
}

func (a *app) subjectExportCommand() *cobra.Command {
	var s subjectFlags
	cmd := &cobra.Command{
		Use:   "export (--serial SN | --account NAME) --reason TEXT",
		Short: "Print every stored row about a device or an account, as JSON",
		Long: `Print every row the gateway stores about one device or one account, as one
JSON document (the same with -o table or -o json). Needs the privacy role; the
reason goes to the audit log.`,
		Example: `  dassetctl subject export --serial DS-000123 --reason "request 2024-17" > export.json
  dassetctl subject export --account alice --reason "request 2024-18"`,
		Args: exactArgs(),
		RunE: run(func(cmd *cobra.Command, _ []string) error {
			if _, err := s.check(); err != nil {
				return err
			}
			req := &gatewayv1.ExportSubjectRequest{Reason: s.reason}
			if s.account != "" {
				req.Subject = &gatewayv1.ExportSubjectRequest_Account{Account: s.account}
			} else {
				req.Subject = &gatewayv1.ExportSubjectRequest_SerialNumber{SerialNumber: s.serial}
			}
			ctx, client, conn, cancel, err := a.newClient(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			defer conn.Close()

			resp, err := client.ExportSubject(ctx, req)
			if err != nil {
				return err
			}
			// The export is already a JSON document: print it as it is
			// (indented), whatever --output says.
			out := []byte(resp.GetJson())
			var buf bytes.Buffer
			if json.Indent(&buf, out, "", "  ") == nil {
				out = buf.Bytes()
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s\n", out)
			return err
		}),
	}
	s.register(cmd)
	return cmd
}

func (a *app) subjectEraseCommand() *cobra.Command {
	var s subjectFlags
	var yes bool
	cmd := &cobra.Command{
		Use:   "erase (--serial SN | --account NAME) --reason TEXT [--yes]",
		Short: "Erase everything stored about a device or an account",
		Long: `Erase every row the gateway stores about one device or one account, and print
the receipt: the rows removed per table. It cannot be undone. On a terminal it
asks for confirmation; elsewhere (scripts) --yes is required.`,
		Example: `  dassetctl subject erase --serial DS-000123 --reason "request 2024-17"
  dassetctl subject erase --account alice --reason "request 2024-18" --yes -o json`,
		Args: exactArgs(),
		RunE: run(func(cmd *cobra.Command, _ []string) error {
			who, err := s.check()
			if err != nil {
				return err
			}
			if !yes {
				if err := confirm(cmd, fmt.Sprintf("Erase everything stored about %s? This cannot be undone.", who)); err != nil {
					return err
				}
			}
			req := &gatewayv1.EraseSubjectRequest{Reason: s.reason}
			if s.account != "" {
				req.Subject = &gatewayv1.EraseSubjectRequest_Account{Account: s.account}
			} else {
				req.Subject = &gatewayv1.EraseSubjectRequest_SerialNumber{SerialNumber: s.serial}
			}
			ctx, client, conn, cancel, err := a.newClient(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			defer conn.Close()

			resp, err := client.EraseSubject(ctx, req)
			if err != nil {
				return err
			}
			return a.print(cmd, resp, func(w io.Writer) {
				fmt.Fprintf(w, "Erased %s.\n", who)
				printCounts(w, "ROWS REMOVED", resp.GetRemoved())
			})
		}),
	}
	s.register(cmd)
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	return cmd
}
