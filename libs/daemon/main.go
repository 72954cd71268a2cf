package daemon

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/piggysec/piggy/libs/buildinfo"
)

// PrintVersion answers --version: when args ask only for it, it prints the
// service's name and build to stdout and reports true, and the service
// exits 0 without reading any other setting.
func PrintVersion(stdout io.Writer, name, version string, args []string) bool {
	if !buildinfo.Requested(args) {
		return false
	}
	fmt.Fprintln(stdout, name, buildinfo.Read(version))
	return true
}

// Exit turns the error of a service's run function into a process exit
// code, printing a one-line message to stderr: 0 for nil and for --help,
// 2 for bad flags (the flag package has printed usage already), 1 otherwise.
func Exit(stderr io.Writer, name string, err error) int {
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, new(*UsageError)):
		fmt.Fprintf(stderr, "%s: %s\n", name, OneLine(err))
		return 2
	default:
		fmt.Fprintf(stderr, "%s: %s\n", name, OneLine(err))
		return 1
	}
}

// UsageError marks a configuration error (bad flag or environment value,
// missing setting).
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return "configuration: " + e.Err.Error() }

// Unwrap returns the underlying error.
func (e *UsageError) Unwrap() error { return e.Err }

// OneLine folds a (possibly joined, multi-line) error into one line.
func OneLine(err error) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
}
