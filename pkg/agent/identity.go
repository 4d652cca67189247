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
	id.Serial, id.SerialSource, err = readIdentity(src.Serial, src.SerialFile, src.rootDir(), "serial_number", "serial number", "--serial-file", DMISerialPath)
	if err != nil {
		return Identity{}, err
	}
	if _, err := privacy.ParseSerialNumber(id.Serial); err != nil {
		return Identity{}, fmt.Errorf("%s: %w", id.SerialSource, err)
	}
	id.HardwareID, id.HWIDSource, err = readIdentity(src.HWID, src.HWIDFile, src.rootDir(), "hardware_id", "hardware id", "--hwid-file", DMIUUIDPath, MachineIDPath)
	if err != nil {
		return Identity{}, err
	}
	if _, err := privacy.ParseHardwareID(id.HardwareID); err != nil {
		return Identity{}, fmt.Errorf("%s: %w", id.HWIDSource, err)
	}
	return id, nil
}

// readIdentity reads one identity value (field, "what" for people): given
// itself, else from file, else from the first of the platform paths (under
// root) that holds one. source is where it came from.
func readIdentity(given, file, root, field, what, fileFlag string, platform ...string) (v, source string, err error) {
	switch {
	case given != "":
		return given, SourceGiven, nil
	case file != "":
		v, err := readIdentityFile(file, field)
		return v, file, err
	}
	var errs []error
	for _, p := range platform {
		p = filepath.Join(root, p)
		v, err := readPlatform(p, field)
		if err == nil {
			return v, p, nil
		}
		errs = append(errs, err)
	}
	// Unset, absent, or readable by root only (DMI serials are 0400).
	return "", "", fmt.Errorf("%w; give the device's %s with %s FILE", errors.Join(errs...), what, fileFlag)
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
