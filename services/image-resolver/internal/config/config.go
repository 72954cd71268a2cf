// Package config loads the image-resolver's settings from flags and
// environment variables.
package config

import (
	"flag"
	"io"

	"github.com/piggysec/piggy/libs/daemon"
	"github.com/piggysec/piggy/libs/flagenv"
)

// Config is the image-resolver's complete configuration.
type Config struct {
	daemon.Settings
	// GRPCAddress serves ImageResolverService, health and reflection over mTLS.
	GRPCAddress string
}

// Load parses args and the environment (flag names upper-cased, "-" → "_").
// Usage and errors of the flag package go to output.
func Load(args []string, lookup flagenv.Lookup, output io.Writer) (Config, error) {
	var c Config
	fs := flag.NewFlagSet("image-resolver", flag.ContinueOnError)
	fs.SetOutput(output)
	c.Settings.Register(fs)
	fs.StringVar(&c.GRPCAddress, "grpc-address", ":9443", "mTLS gRPC address of ImageResolverService, health and reflection")
	if err := flagenv.Parse(fs, "", args, lookup); err != nil {
		return Config{}, &daemon.UsageError{Err: err}
	}
	if err := c.Settings.Validate(); err != nil {
		return Config{}, &daemon.UsageError{Err: err}
	}
	return c, nil
}
