package serve

import (
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// MaxReconnectDelay is the longest a Piggy gRPC client waits between two
// attempts to reach a server that is down. grpc-go's default (120 s) kept
// pods without a command denied for a minute after the image-resolver came
// back; a second costs a dead server one refused connection per second
// and gets a returning one used within about a second.
const MaxReconnectDelay = time.Second

// ClientDialOptions are the dial options every Piggy gRPC client between
// services uses: reconnection backoff from 100 ms, capped at
// MaxReconnectDelay.
func ClientDialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  100 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   MaxReconnectDelay,
			},
			MinConnectTimeout: 5 * time.Second,
		}),
	}
}

// IsTransportFailure reports whether err is a call that never reached the
// server, or lost it: grpc-go's own Unavailable status, whose text names
// the server's address and the dial error. Callers say what failed in
// their own words instead of passing that text on to pods; statuses a
// server sent are not transport failures.
func IsTransportFailure(err error) bool {
	s, ok := status.FromError(err)
	if !ok || s.Code() != codes.Unavailable {
		return false
	}
	for _, p := range []string{"connection error:", "error reading from server", "connection closed", "name resolver error", "last connection error", "transport is closing"} {
		if strings.Contains(s.Message(), p) {
			return true
		}
	}
	return false
}
