package ctl

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// terminalFD returns the file descriptor of r when it is a terminal.
func terminalFD(r io.Reader) (int, bool) {
	f, ok := r.(interface{ Fd() uintptr })
	if !ok {
		return 0, false
	}
	fd := int(f.Fd())
	return fd, term.IsTerminal(fd)
}

// readNewPassword asks twice on the terminal, without echo.
func readNewPassword(cmd *cobra.Command) (string, error) {
	return readSecret(cmd, "password", "--password-stdin", true)
}

// readSecret asks for a password or passphrase (what) on the terminal,
// without echo: twice when it is new (twice), once to open something made
// with it. Without a terminal it names the flag (stdinFlag) that reads it
// from standard input instead.
func readSecret(cmd *cobra.Command, what, stdinFlag string, twice bool) (string, error) {
	fd, ok := terminalFD(cmd.InOrStdin())
	if !ok {
		return "", usagef("standard input is not a terminal: pass the %s with %s", what, stdinFlag)
	}
	ask := func(prompt string) (string, error) {
		fmt.Fprint(cmd.ErrOrStderr(), prompt)
		b, err := term.ReadPassword(fd)
		fmt.Fprintln(cmd.ErrOrStderr())
		if err != nil {
			return "", fmt.Errorf("read %s: %w", what, err)
		}
		return string(b), nil
	}
	title := strings.ToUpper(what[:1]) + what[1:]
	p1, err := ask(title + ": ")
	if err != nil {
		return "", err
	}
	if p1 == "" {
		return "", fmt.Errorf("%s: must not be empty", what)
	}
	if !twice {
		return p1, nil
	}
	p2, err := ask("Repeat " + what + ": ")
	if err != nil {
		return "", err
	}
	if p1 != p2 {
		return "", fmt.Errorf("%s: the two entries differ", what)
	}
	return p1, nil
}

// readPasswordStdin reads the whole of standard input, less one trailing
// newline.
func readPasswordStdin(cmd *cobra.Command) (string, error) {
	b, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 4096))
	if err != nil {
		return "", fmt.Errorf("read password from standard input: %w", err)
	}
	p := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if p == "" {
		return "", errors.New("password: standard input was empty")
	}
	return p, nil
}

// confirm asks a yes/no question on the terminal; anything but "yes" is no.
// Without a terminal it refuses, so that scripts must say --yes.
func confirm(cmd *cobra.Command, question string) error {
	if _, ok := terminalFD(cmd.InOrStdin()); !ok {
		return usagef("standard input is not a terminal: confirm with --yes")
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "%s Type 'yes' to go on: ", question)
	line, err := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read answer: %w", err)
	}
	if strings.TrimSpace(line) != "yes" {
		return errors.New("not confirmed: nothing was changed")
	}
	return nil
}
