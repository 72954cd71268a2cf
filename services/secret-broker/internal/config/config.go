// Package config loads the secret-broker's settings from flags and
// environment variables.
package config

import (
	"flag"
	"io"

	"github.com/piggysec/piggy/libs/daemon"
	"github.com/piggysec/piggy/libs/flagenv"
)

// Config is the secret-broker's complete configuration.
type Config struct {
	daemon.Settings
	// ListenAddress serves the HTTPS JSON gateway for piggy-env and probes.
	ListenAddress string
	// GRPCAddress serves SecretBrokerService, health and reflection over mTLS.
	GRPCAddress string
}

// Load parses args and the environment (flag names upper-cased, "-" → "_").
// Usage and errors of the flag package go to output.
func Load(args []string, lookup flagenv.Lookup, output io.Writer) (Config, error) {
	var c Config
	fs := flag.NewFlagSet("secret-broker", flag.ContinueOnError)
	fs.SetOutput(output)
	c.Settings.Register(fs)
	fs.StringVar(&c.ListenAddress, "listen-address", ":8443", "HTTPS address of the JSON gateway for piggy-env (/v1/secrets, /healthz, /readyz)")
	fs.StringVar(&c.GRPCAddress, "grpc-address", ":9443", "mTLS gRPC address of SecretBrokerService, health and reflection")
	if err := flagenv.Parse(fs, "", args, lookup); err != nil {
		return Config{}, &daemon.UsageError{Err: err}
	}
	if err := c.Settings.Validate(); err != nil {
		return Config{}, &daemon.UsageError{Err: err}
	}
	return c, nil
}
