// Command piggy-env is the first process of every container Piggy injects.
// It fetches the values the container's "piggy:KEY" environment variables
// reference (from the secret broker, or straight from AWS in standalone
// mode), replaces them, removes its own PIGGY_* settings and execs the
// container's real command in its place. "piggy-env install <dir>" copies the
// binary into the shared volume from the init container.
package main

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"syscall"

	"github.com/piggysec/piggy/services/piggy-env/internal/jsonlog"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Environ())
	stop()
	if err != nil {
		jsonlog.New(os.Stderr, false).Error(err.Error())
		writeTerminationMessage(err.Error())
		code := 1
		if ec, ok := errors.AsType[interface {
			error
			ExitCode() int
		}](err); ok {
			code = ec.ExitCode()
		}
		os.Exit(code)
	}
}

// terminationMessagePath is the container's default terminationMessagePath,
// a file the kubelet mounts into every container and shows as the
// container's last state message in `kubectl describe pod`.
const terminationMessagePath = "/dev/termination-log"

// maxTerminationMessage is the kubelet's limit for that message.
const maxTerminationMessage = 4096

// writeTerminationMessage leaves msg, the final error (which names
// variables and keys, never a value), where the kubelet reads it:
// PIGGY_TERMINATION_MESSAGE_PATH, else the default path when the kubelet
// mounted it. It is best effort: the error is on stderr already.
func writeTerminationMessage(msg string) {
	path, set := os.LookupEnv("PIGGY_TERMINATION_MESSAGE_PATH")
	if !set || path == "" {
		path = terminationMessagePath
		if _, err := os.Stat(path); err != nil {
			return
		}
	}
	msg = "piggy-env: " + msg
	if len(msg) > maxTerminationMessage {
		msg = msg[:maxTerminationMessage]
	}
	_ = os.WriteFile(path, []byte(msg), 0o644)
}
