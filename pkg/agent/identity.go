package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
)

// Where the platform keeps a device's identity, relative to the root.
const (
	DMISerialPath  = "/sys/class/dmi/id/product_serial"
	DMIUUIDPath    = "/sys/class/dmi/id/product_uuid"
	MachineIDPath  = "/etc/machine-id"
	maxIdentityLen = 4096 // bytes read of an identity file
)

// IdentitySources says where to read the device's serial number and
// hardware id. An empty file means the platform's: the DMI serial number for
// the serial; the DMI product UUID, else /etc/machine-id, for the hardware id.
type IdentitySources struct {
	// Serial and HWID are the values themselves, when given (labs: from a
	// command line); they win over files.
	Serial, HWID string
	SerialFile   string
	HWIDFile     string
	// Root prefixes the platform paths (tests); "" is "/".
	Root string
}

// Identity is what ReadIdentity found, and where.
type Identity struct {
	Serial       string
	HardwareID   string
	SerialSource string // the file read, or SourceGiven
	HWIDSource   string
}

// SourceGiven is the source of a value given in IdentitySources itself.
const SourceGiven = "given"

// placeholders are values firmware puts in DMI fields it leaves unset.
var placeholders = []string{
	"", "none", "default string", "not specified", "not applicable", "not available",
	"to be filled by o.e.m.", "system serial number", "0", "00000000", "0123456789",
	"03000200-0400-0500-0006-000700080009", "00000000-0000-0000-0000-000000000000",
	"ffffffff-ffff-ffff-ffff-ffffffffffff",
}

// ReadIdentity reads the device's serial number and hardware id from the
// files src names, or from the platform. Each value is checked as the gateway
// checks it; errors name the file and the problem, never the value.
func ReadIdentity(src IdentitySources) (Identity, error) {
	var id Identity
	var err error
	switch {
	case src.Serial != "":
		id.Serial, id.SerialSource = src.Serial, SourceGiven
	case src.SerialFile != "":
		id.Serial, err = readIdentityFile(src.SerialFile, "serial_number")
		id.SerialSource = src.SerialFile
	default:
		p := filepath.Join(src.rootDir(), DMISerialPath)
		id.Serial, err = readPlatform(p, "serial_number")
		if err != nil {
			// Unset, absent, or readable by root only (DMI serials are 0400).
			err = fmt.Errorf("%w; give the device's serial number with --serial-file FILE", err)
		}
		id.SerialSource = p
	}
	if err != nil {
		return Identity{}, err
	}
	if _, err := privacy.ParseSerialNumber(id.Serial); err != nil {
		return Identity{}, fmt.Errorf("%s: %w", id.SerialSource, err)
	}

	switch {
	case src.HWID != "":
		id.HardwareID, id.HWIDSource = src.HWID, SourceGiven
	case src.HWIDFile != "":
		id.HardwareID, err = readIdentityFile(src.HWIDFile, "hardware_id")
		id.HWIDSource = src.HWIDFile
	default:
		var errs []error
		for _, p := range []string{DMIUUIDPath, MachineIDPath} {
			p = filepath.Join(src.rootDir(), p)
			id.HardwareID, err = readPlatform(p, "hardware_id")
			id.HWIDSource = p
			if err == nil {
				break
			}
			errs = append(errs, err)
		}
		if err != nil {
			err = fmt.Errorf("%w; give the device's hardware id with --hwid-file FILE", errors.Join(errs...))
		}
	}
	if err != nil {
		return Identity{}, err
	}
	if _, err := privacy.ParseHardwareID(id.HardwareID); err != nil {
		return Identity{}, fmt.Errorf("%s: %w", id.HWIDSource, err)
	}
	return id, nil
}

func (s IdentitySources) rootDir() string {
	if s.Root == "" {
		return "/"
	}
	return s.Root
}

var errNoValue = errors.New("no usable value")

// readIdentityFile reads one value: the file's only line, trimmed.
func readIdentityFile(path, field string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", field, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxIdentityLen+1))
	if err != nil {
		return "", fmt.Errorf("%s: %s: %w", field, path, err)
	}
	if len(b) > maxIdentityLen {
		return "", fmt.Errorf("%s: %s: longer than %d bytes", field, path, maxIdentityLen)
	}
	v := string(bytes.TrimSpace(b))
	if v == "" {
		return "", fmt.Errorf("%s: %s: %w: the file is empty", field, path, errNoValue)
	}
	if strings.ContainsAny(v, "\r\n") {
		return "", fmt.Errorf("%s: %s: more than one line", field, path)
	}
	return v, nil
}

// readPlatform reads a platform identity file, refusing a missing file and
// firmware placeholders as errNoValue.
func readPlatform(path, field string) (string, error) {
	v, err := readIdentityFile(path, field)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%s: %s: %w: the platform has no such file", field, path, errNoValue)
	}
	if err != nil {
		return "", err
	}
	for _, p := range placeholders {
		if strings.EqualFold(v, p) {
			return "", fmt.Errorf("%s: %s: %w: the firmware left it unset", field, path, errNoValue)
		}
	}
	return v, nil
}
