package main

import (
	"context"
	"os"

	"github.com/piggysec/piggy/libs/daemon"
	"github.com/piggysec/piggy/libs/flagenv"
	"github.com/piggysec/piggy/services/image-resolver/internal/config"
)

// run wires the image-resolver and serves until ctx ends.
func run(ctx context.Context, args []string, lookup flagenv.Lookup) error {
	cfg, err := config.Load(args, lookup, os.Stderr)
	if err != nil {
		return err
	}
	d, err := daemon.New(ctx, "image-resolver", version, cfg.Settings, os.Stderr, lookup.Getenv)
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
	if err := d.ServeMetrics(); err != nil {
		return d.Abort(err)
	}
	return d.Wait()
}
