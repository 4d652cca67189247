package ctl

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// VersionInfo is what dassetctl version prints.
type VersionInfo struct {
	Version string `json:"version"`
	Commit  string `json:"commit,omitempty"`
	Go      string `json:"go"`
}

func buildVersion(override string) VersionInfo {
	v := VersionInfo{Version: override, Go: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v.Version == "" {
			v.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				v.Commit = s.Value
			}
		}
	}
	if v.Version == "" {
		v.Version = "(devel)"
	}
	return v
}

func (a *app) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "Print dassetctl's version",
		Example: `  dassetctl version`,
		Args:    exactArgs(),
		RunE: run(func(cmd *cobra.Command, _ []string) error {
			v := buildVersion(a.env.Version)
			return a.printPlain(cmd, v, func(w io.Writer) {
				commit := ""
				if v.Commit != "" {
					commit = " commit " + v.Commit
				}
				fmt.Fprintf(w, "dassetctl %s%s %s\n", v.Version, commit, v.Go)
			})
		}),
	}
}
