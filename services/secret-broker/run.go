package main

import (
	"context"
	"os"

	"github.com/piggysec/piggy/libs/daemon"
	"github.com/piggysec/piggy/libs/flagenv"
	"github.com/piggysec/piggy/libs/serve"
	"github.com/piggysec/piggy/services/secret-broker/internal/config"
)

// run wires the secret-broker and serves until ctx ends.
func run(ctx context.Context, args []string, lookup flagenv.Lookup) error {
	cfg, err := config.Load(args, lookup, os.Stderr)
	if err != nil {
		return err
	}
	d, err := daemon.New(ctx, "secret-broker", version, cfg.Settings, os.Stderr, lookup.Getenv)
	if err != nil {
		return err
	}
	grpcServer, health, err := d.NewGRPCServer()
	if err != nil {
		return d.Abort(err)
	}
	if err := d.ServeGRPC("grpc", cfg.GRPCAddress, grpcServer, health); err != nil {
		return d.Abort(err)
	}
	if err := d.ServeHTTPS("gateway", cfg.ListenAddress, serve.Probes(d.Ready)); err != nil {
		return d.Abort(err)
	}
	if err := d.ServeMetrics(); err != nil {
		return d.Abort(err)
	}
	return d.Wait()
}
