// Command image-resolver is Piggy's internal gRPC service that reads image
// ENTRYPOINT and CMD from OCI registries for the admission-gateway. Run it
// with --help for its settings.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/piggysec/piggy/libs/daemon"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if daemon.PrintVersion(os.Stdout, "image-resolver", version, os.Args[1:]) {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.LookupEnv)
	stop()
	os.Exit(daemon.Exit(os.Stderr, "image-resolver", err))
}
