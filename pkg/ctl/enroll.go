package ctl

import (
	"bufio"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

const utf8BOM = "\ufeff"

// enrollBatch bounds one EnrollDevices request (well under gRPC's 4 MiB).
const enrollBatch = 1000

func (a *app) enrollCommand() *cobra.Command {
	var serial, hwid, file string
	var afterErasure bool
	cmd := &cobra.Command{
		Use:   "enroll (--serial SN --hwid HWID | --file devices.csv)",
		Short: "Enroll devices (one, or a batch from a CSV file)",
		Long: `Enroll devices so that they may log in.

A CSV file has two columns, serial_number,hardware_id, and may start with that
header row; lines starting with '#' and blank lines are skipped. The whole file
is checked before anything is sent: a bad line stops the command with its line
number and reason, and no device is enrolled. "--file -" reads standard input.
"--hwid -" reads one device's hardware id from standard input: a command line
is visible to every local user (ps, /proc), standard input is not.

Enrolling a device again changes nothing (it is counted as unchanged), so a
batch can be re-run safely. Without the privacy role every device that already
exists counts as unchanged, whatever hardware id was given: the answer never
tells a right hardware id from a wrong one. The privacy role is told instead
when a device is enrolled with another hardware id, or was erased; only it may
enroll an erased device again, with --after-erasure.`,
		Example: `  dassetctl enroll --serial DS-000123 --hwid - < hwid.txt
  dassetctl enroll --file devices.csv
  dassetctl enroll --file returned.csv --after-erasure`,
		Args: exactArgs(),
		RunE: run(func(cmd *cobra.Command, _ []string) error {
			var devices []*gatewayv1.DeviceEnrollment
			if file != "" {
				var err error
				if devices, err = readDevicesFile(cmd, file); err != nil {
					return err
				}
			} else {
				if hwid == "-" {
					var err error
					if hwid, err = readHWID(cmd.InOrStdin()); err != nil {
						return &usageError{err: err}
					}
				}
				d, err := enrollment(serial, hwid)
				if err != nil {
					return &usageError{err: err}
				}
				devices = []*gatewayv1.DeviceEnrollment{d}
			}

			// Each batch has its own --timeout; the whole file has none.
			client, conn, err := a.dialAdmin(cmd)
			if err != nil {
				return err
			}
			defer conn.Close()

			total := &gatewayv1.EnrollDevicesResponse{}
			lastProgress := a.env.Now()
			for start := 0; start < len(devices); start += enrollBatch {
				end := min(start+enrollBatch, len(devices))
				ctx, cancel := context.WithTimeout(cmd.Context(), a.timeout)
				resp, err := client.EnrollDevices(ctx, &gatewayv1.EnrollDevicesRequest{Devices: devices[start:end], AfterErasure: afterErasure})
				cancel()
				if err != nil {
					if st := status.Convert(err); st.Code() == codes.FailedPrecondition && !afterErasure {
						err = status.Error(st.Code(), st.Message()+" (to enroll an erased device again, add --after-erasure)")
					}
					if start > 0 {
						fmt.Fprintf(cmd.ErrOrStderr(), "%d of %d devices were sent before this error (%d enrolled, %d unchanged); re-running the file is safe.\n",
							start, len(devices), total.Enrolled, total.Unchanged)
					}
					return err
				}
				total.Enrolled += resp.GetEnrolled()
				total.Unchanged += resp.GetUnchanged()
				// Progress on stderr for files of several batches, at most
				// once a second, and the last batch.
				if len(devices) > enrollBatch && (end == len(devices) || a.env.Now().Sub(lastProgress) >= time.Second) {
					lastProgress = a.env.Now()
					fmt.Fprintf(cmd.ErrOrStderr(), "sent %d of %d devices (%d%%)\n", end, len(devices), end*100/len(devices))
				}
			}
			return a.print(cmd, total, func(w io.Writer) {
				fmt.Fprintf(w, "%d enrolled, %d unchanged\n", total.Enrolled, total.Unchanged)
			})
		}),
	}
	f := cmd.Flags()
	f.StringVar(&serial, "serial", "", "serial number of one device")
	f.StringVar(&hwid, "hwid", "", "hardware id of that device; - reads it from standard input (keeps it off the command line, which every local user can read)")
	f.StringVarP(&file, "file", "f", "", "CSV file of serial_number,hardware_id lines (- for standard input)")
	f.BoolVar(&afterErasure, "after-erasure", false, "also enroll devices whose data was erased before")
	cmd.MarkFlagsRequiredTogether("serial", "hwid")
	cmd.MarkFlagsMutuallyExclusive("serial", "file")
	cmd.MarkFlagsMutuallyExclusive("hwid", "file")
	cmd.MarkFlagsOneRequired("serial", "file")
	return cmd
}

// readHWID reads a hardware id from r: its first line, trimmed; nothing may
// follow but blank lines.
func readHWID(r io.Reader) (string, error) {
	b, err := io.ReadAll(io.LimitReader(r, privacy.MaxHardwareIDLen+64))
	if err != nil {
		return "", fmt.Errorf("--hwid -: reading standard input: %w", err)
	}
	v := strings.TrimSpace(string(b))
	switch {
	case v == "":
		return "", errors.New("--hwid -: standard input holds no hardware id")
	case strings.ContainsAny(v, "\r\n"):
		return "", errors.New("--hwid -: standard input holds more than one line (use --file for a batch)")
	}
	return v, nil
}

// enrollment validates one serial number and hardware id with the same rules
// (and the same field errors) as the gateway.
func enrollment(serial, hwid string) (*gatewayv1.DeviceEnrollment, error) {
	sn, err := privacy.ParseSerialNumber(serial)
	if err != nil {
		return nil, err
	}
	hw, err := privacy.ParseHardwareID(hwid)
	if err != nil {
		return nil, err
	}
	return &gatewayv1.DeviceEnrollment{SerialNumber: sn.Reveal(), HardwareId: hw.Reveal()}, nil
}

func readDevicesFile(cmd *cobra.Command, path string) ([]*gatewayv1.DeviceEnrollment, error) {
	if path == "-" {
		return ParseDevicesCSV("<stdin>", cmd.InOrStdin())
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParseDevicesCSV(path, f)
}

// ParseDevicesCSV reads serial_number,hardware_id lines from r: an optional
// header row, '#' comments and blank lines are skipped. It checks every line
// and returns the first problem as "NAME:LINE: reason", or the whole list.
func ParseDevicesCSV(name string, r io.Reader) ([]*gatewayv1.DeviceEnrollment, error) {
	// Spreadsheet exports often start with a UTF-8 byte order mark.
	br := bufio.NewReader(r)
	if b, err := br.Peek(len(utf8BOM)); err == nil && string(b) == utf8BOM {
		_, _ = br.Discard(len(utf8BOM))
	}
	cr := csv.NewReader(br)
	cr.Comment = '#'
	cr.FieldsPerRecord = -1 // counted below, with a better message
	cr.TrimLeadingSpace = true
	cr.ReuseRecord = true

	var out []*gatewayv1.DeviceEnrollment
	seen := map[string]int{} // serial number → line
	first := true
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) {
				return nil, fmt.Errorf("%s:%d: %w", name, pe.Line, pe.Err)
			}
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		line, _ := cr.FieldPos(0)
		for i := range rec {
			rec[i] = strings.TrimSpace(rec[i])
		}
		if first {
			first = false
			if len(rec) == 2 && strings.EqualFold(rec[0], "serial_number") && strings.EqualFold(rec[1], "hardware_id") {
				continue
			}
		}
		if len(rec) != 2 {
			return nil, fmt.Errorf("%s:%d: want 2 fields (serial_number,hardware_id), got %d", name, line, len(rec))
		}
		d, err := enrollment(rec[0], rec[1])
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, line, err)
		}
		if prev, ok := seen[d.SerialNumber]; ok {
			return nil, fmt.Errorf("%s:%d: serial_number: same as on line %d", name, line, prev)
		}
		seen[d.SerialNumber] = line
		out = append(out, d)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no devices in it", name)
	}
	return out, nil
}
