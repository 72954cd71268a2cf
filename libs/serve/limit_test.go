package serve

import (
	"net"
	"testing"
	"time"
)

// dialFrom connects to addr from the loopback address src (any 127/8
// address works on Linux), so one test can be several peers.
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedByServer reports whether the server closed c (a read returns EOF
// rather than timing out).
func closedByServer(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	ne, ok := err.(net.Error)
	return err != nil && !(ok && ne.Timeout())
}

func TestLimitListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := LimitListener(inner, ConnLimits{Total: 3, PerPeer: 2})
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	addr := inner.Addr().String()

	// A peer gets two connections; its third is closed at once.
	dialFrom(t, "127.0.0.1", addr)
	dialFrom(t, "127.0.0.1", addr)
	first := <-accepted
	<-accepted
	a3 := dialFrom(t, "127.0.0.1", addr)
	if !closedByServer(a3) {
		t.Error("the peer's third connection was not closed")
	}
	// Another peer takes the last slot; a fourth connection waits for one.
	dialFrom(t, "127.0.0.2", addr)
	<-accepted
	b2 := dialFrom(t, "127.0.0.2", addr)
	select {
	case c := <-accepted:
		t.Fatalf("accepted %v over the total", c.RemoteAddr())
	case <-time.After(200 * time.Millisecond):
	}
	first.Close() // frees a slot and the first peer's count
	select {
	case c := <-accepted:
		if c.RemoteAddr().String() != b2.LocalAddr().String() {
			t.Errorf("accepted %v, want the waiting %v", c.RemoteAddr(), b2.LocalAddr())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting connection was not accepted after a slot freed")
	}
	// Close ends an Accept waiting for a slot.
	ln.Close()
	select {
	case _, ok := <-accepted:
		if ok {
			t.Error("accepted after Close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept still waiting after Close")
	}
}
