package throttle

import (
	"context"
	"net"
	"sync"
)

// Forwarders are the connections the broker's own HTTPS gateway opened to
// its gRPC server. Requests arriving over them were admitted by the
// gateway under the HTTP client's address, so the gRPC server does not
// admit them again (the peer it sees is the gateway's loopback address,
// the same for every pod). A connection is known by its local address,
// which is the remote address the gRPC server sees, from the moment it is
// dialled until it is closed.
type Forwarders struct {
	mu    sync.Mutex
	conns map[string]int
}

// NewForwarders returns an empty set.
func NewForwarders() *Forwarders { return &Forwarders{conns: map[string]int{}} }

// Dial connects to addr over TCP and remembers the connection until it is
// closed; it has the signature of grpc.WithContextDialer.
func (f *Forwarders) Dial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	key := c.LocalAddr().String()
	f.mu.Lock()
	f.conns[key]++
	f.mu.Unlock()
	return &forwardedConn{Conn: c, done: func() { f.forget(key) }}, nil
}

// Has reports whether remote, the address a server sees, is one of the
// gateway's open connections.
func (f *Forwarders) Has(remote net.Addr) bool {
	if f == nil || remote == nil {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.conns[remote.String()] > 0
}

func (f *Forwarders) forget(key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns[key]--; f.conns[key] <= 0 {
		delete(f.conns, key)
	}
}

// forwardedConn forgets itself on the first Close.
type forwardedConn struct {
	net.Conn
	once sync.Once
	done func()
}

func (c *forwardedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.done)
	return err
}
