// Package config loads the admission-gateway's settings from flags and
// environment variables.
package config

import (
	"flag"
	"io"

	"github.com/piggysec/piggy/libs/daemon"
	"github.com/piggysec/piggy/libs/flagenv"
)

// Config is the admission-gateway's complete configuration.
type Config struct {
	daemon.Settings
	// ListenAddress serves the webhook (/mutate) and probes over HTTPS.
	ListenAddress string
	// GRPCAddress serves health, reflection and diagnostics over mTLS.
	GRPCAddress string
}

// Load parses args and the environment (flag names upper-cased, "-" → "_").
// Usage and errors of the flag package go to output.
func Load(args []string, lookup flagenv.Lookup, output io.Writer) (Config, error) {
	var c Config
	fs := flag.NewFlagSet("admission-gateway", flag.ContinueOnError)
	fs.SetOutput(output)
	c.Settings.Register(fs)
	fs.StringVar(&c.ListenAddress, "listen-address", ":8443", "HTTPS address of the webhook (/mutate, /healthz, /readyz)")
	fs.StringVar(&c.GRPCAddress, "grpc-address", ":9443", "mTLS gRPC address for health, reflection and diagnostics")
	if err := flagenv.Parse(fs, "", args, lookup); err != nil {
		return Config{}, &daemon.UsageError{Err: err}
	}
	if err := c.Settings.Validate(); err != nil {
		return Config{}, &daemon.UsageError{Err: err}
	}
	return c, nil
}
