// Package flagenv lets every flag of a flag.FlagSet also be set from an
// environment variable, with the same strict parsing: a value that does not
// parse is an error naming the variable, never a silent default.
//
// Precedence: command-line flag, then environment variable, then the flag's
// default. The variable of each flag is listed in the --help output.
package flagenv

import (
	"errors"
	"flag"
	"fmt"
	"strings"
)

// Lookup reads one environment variable; os.LookupEnv in production.
type Lookup func(string) (string, bool)

// EnvName is the variable of a flag: upper case, "-" → "_", with prefix
// (for example prefix "" and flag "tls-cert-file" give TLS_CERT_FILE).
func EnvName(prefix, flagName string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Parse parses args into fs after applying environment variables for every
// flag that args do not set. Flag usage strings gain "(env NAME)".
func Parse(fs *flag.FlagSet, prefix string, args []string, lookup Lookup) error {
	fs.VisitAll(func(f *flag.Flag) {
		f.Usage = fmt.Sprintf("%s (env %s)", f.Usage, EnvName(prefix, f.Name))
	})
	if err := fs.Parse(args); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		name := EnvName(prefix, f.Name)
		v, ok := lookup(name)
		if !ok {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Errorf("invalid value %q for %s: %w", v, name, unwrapParse(err)))
		}
	})
	return errors.Join(errs...)
}

// unwrapParse shortens strconv errors ("strconv.ParseBool: parsing "x":
// invalid syntax" → "invalid syntax").
func unwrapParse(err error) error {
	var ne interface{ Unwrap() error }
	if errors.As(err, &ne) && ne.Unwrap() != nil {
		return ne.Unwrap()
	}
	return err
}

// Getenv adapts lookup to the os.Getenv shape.
func (lookup Lookup) Getenv(name string) string {
	v, _ := lookup(name)
	return v
}

// List is a flag.Value holding a comma-separated list; blanks around items
// and empty items are dropped.
type List []string

// String joins the list with commas.
func (l *List) String() string { return strings.Join(*l, ",") }

// Set replaces the list with the items of v.
func (l *List) Set(v string) error {
	*l = nil
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			*l = append(*l, item)
		}
	}
	return nil
}
