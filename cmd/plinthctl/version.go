package main

import (
	"fmt"
	"runtime/debug"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/api/v3/version"
)

// buildVersion is plinthctl's version, set at release time with
// -ldflags "-X main.buildVersion=v1.2.3"; when empty the module version from
// the build information is used.
var buildVersion string

func plinthctlVersion() string {
	if buildVersion != "" {
		return buildVersion
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "unknown"
}

func (a *app) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Prints the version of plinthctl",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			fmt.Fprintf(a.out, "plinthctl version: %s\n", plinthctlVersion())
			fmt.Fprintf(a.out, "API version: %s\n", version.APIVersion)
			return nil
		},
	}
}
