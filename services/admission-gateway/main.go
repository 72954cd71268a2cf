// Command admission-gateway is Piggy's mutating admission webhook for Pods.
// It serves AdmissionReview v1 over HTTPS and an mTLS gRPC port for health
// and diagnostics. Run it with --help for its settings.
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
	if daemon.PrintVersion(os.Stdout, "admission-gateway", version, os.Args[1:]) {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.LookupEnv)
	stop()
	os.Exit(daemon.Exit(os.Stderr, "admission-gateway", err))
}
