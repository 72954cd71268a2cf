// Command secret-broker is Piggy's secret service: it authenticates the
// calling container, authorises the secret and fetches the referenced keys
// from AWS. It serves mTLS gRPC and an HTTPS JSON gateway for piggy-env. Run
// it with --help for its settings.
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
	if daemon.PrintVersion(os.Stdout, "secret-broker", version, os.Args[1:]) {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.LookupEnv)
	stop()
	os.Exit(daemon.Exit(os.Stderr, "secret-broker", err))
}
