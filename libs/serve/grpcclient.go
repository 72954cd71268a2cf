package serve

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
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
