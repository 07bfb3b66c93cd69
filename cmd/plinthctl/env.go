package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"
)

// envName is the environment variable etcdctl reads a global flag from:
// ETCDCTL_, then the flag's name in capitals with "-" as "_".
func envName(flag string) string {
	return "ETCDCTL_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// flagsFromEnv sets each flag of fs that the command line left unset from
// its environment variable, as etcdctl does (ETCDCTL_ENDPOINTS=... for
// --endpoints). A flag given both ways is an error, as in etcdctl: a script
// would not know which one counted.
func flagsFromEnv(fs *pflag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		v := os.Getenv(envName(f.Name))
		if v == "" || err != nil {
			return // unset or empty: as if not there, as in etcdctl
		}
		if f.Changed {
			err = withCode(exitError, fmt.Errorf("conflicting environment variable %s is shadowed by the flag --%s (unset one of them)", envName(f.Name), f.Name))
			return
		}
		if serr := fs.Set(f.Name, v); serr != nil {
			err = badArgs("invalid value %q of %s: %v", v, envName(f.Name), serr)
		}
	})
	return err
}

// watchKeyFromEnv returns the key and range end of a watch: args, or, when
// args are empty, ETCDCTL_WATCH_KEY and ETCDCTL_WATCH_RANGE_END, with
// etcdctl's refusals of a key given both ways and of a range end without a
// key.
func watchKeyFromEnv(args []string) ([]string, error) {
	key, end := os.Getenv("ETCDCTL_WATCH_KEY"), os.Getenv("ETCDCTL_WATCH_RANGE_END")
	switch {
	case key == "" && end != "":
		return nil, badArgs("ETCDCTL_WATCH_KEY is empty but got ETCDCTL_WATCH_RANGE_END=%q", end)
	case key == "":
		return args, nil
	case len(args) > 0:
		return nil, badArgs("bad number of arguments (found conflicting environment key)")
	case end != "":
		return []string{key, end}, nil
	}
	return []string{key}, nil
}
