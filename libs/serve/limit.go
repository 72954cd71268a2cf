package serve

import (
	"net"
	"sync"
)

// ConnLimits bound the connections a listener holds. An idle connection
// costs a server tens of KiB (TLS and HTTP/2 buffers, goroutines), so
// without a bound whoever can reach a port can make it hold thousands.
type ConnLimits struct {
	// Total is the most connections held at once; when reached, Accept
	// waits for one to close (new connections queue in the kernel's
	// backlog). Zero: no bound.
	Total int
	// PerPeer is the most connections held at once from one IP address;
	// more are closed at once, so one peer cannot take the Total for
	// everybody else. Zero: no bound.
	PerPeer int
}

// LimitListener returns ln bounded by l.
func LimitListener(ln net.Listener, l ConnLimits) net.Listener {
	if l.Total <= 0 && l.PerPeer <= 0 {
		return ln
	}
	lim := &limitListener{Listener: ln, limits: l, peers: map[string]int{}, closed: make(chan struct{})}
	if l.Total > 0 {
		lim.slots = make(chan struct{}, l.Total)
	}
	return lim
}

type limitListener struct {
	net.Listener
	limits ConnLimits
	slots  chan struct{} // one token per connection held; nil: no total bound
	closed chan struct{} // closed by Close: a waiting Accept returns
	close  sync.Once

	mu    sync.Mutex
	peers map[string]int
}

// Accept waits for a free slot, then returns the next connection whose
// peer is under its limit; connections over it are closed.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		if l.slots != nil {
			select {
			case l.slots <- struct{}{}:
			case <-l.closed:
				return nil, net.ErrClosed
			}
		}
		c, err := l.Listener.Accept()
		if err != nil {
			l.release()
			return nil, err
		}
		peer := peerIP(c)
		if !l.admit(peer) {
			_ = c.Close()
			l.release()
			continue
		}
		return &limitedConn{Conn: c, done: func() { l.leave(peer) }}, nil
	}
}

// Close closes the listener and ends an Accept waiting for a slot.
func (l *limitListener) Close() error {
	l.close.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

func (l *limitListener) admit(peer string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.limits.PerPeer > 0 && l.peers[peer] >= l.limits.PerPeer {
		return false
	}
	l.peers[peer]++
	return true
}

func (l *limitListener) leave(peer string) {
	l.mu.Lock()
	if l.peers[peer]--; l.peers[peer] <= 0 {
		delete(l.peers, peer)
	}
	l.mu.Unlock()
	l.release()
}

func (l *limitListener) release() {
	if l.slots != nil {
		<-l.slots
	}
}

func peerIP(c net.Conn) string {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	host, _, err := net.SplitHostPort(c.RemoteAddr().String())
	if err != nil {
		return c.RemoteAddr().String()
	}
	return host
}

// limitedConn gives its slot back on the first Close.
type limitedConn struct {
	net.Conn
	once sync.Once
	done func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.done)
	return err
}
