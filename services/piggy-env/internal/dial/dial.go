// Package dial builds the net.Dialer behind every connection piggy-env
// makes, to the secret broker and to AWS alike.
package dial

import (
	"context"
	"net"
	"time"
)

// NewDialer returns a dialer with the given connect timeout. When
// resolverNetwork is set ("tcp", "udp", ...), host names are resolved by the
// pure Go resolver and every DNS query goes over that network, whatever the
// resolver would have chosen (useful where UDP DNS is unreliable, such as
// some service meshes).
func NewDialer(timeout time.Duration, resolverNetwork string) *net.Dialer {
	d := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
	if resolverNetwork != "" {
		d.Resolver = NewResolver(resolverNetwork)
	}
	return d
}

// NewResolver returns a pure Go resolver whose DNS queries all use network.
func NewResolver(network string) *net.Resolver {
	var d net.Dialer
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, _, address string) (net.Conn, error) {
			return d.DialContext(ctx, network, address)
		},
	}
}
