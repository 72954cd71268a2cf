package dial

import (
	"net"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestResolverForcesNetwork(t *testing.T) {
	// Only a TCP listener exists; the resolver's Dial must use TCP even
	// when the Go resolver asks for UDP.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan struct{})
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
			close(accepted)
		}
	}()
	r := NewResolver("tcp")
	if !r.PreferGo {
		t.Error("resolver does not prefer the Go resolver")
	}
	c, err := r.Dial(t.Context(), "udp", l.Addr().String())
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	if diff := cmp.Diff("tcp", c.RemoteAddr().Network()); diff != "" {
		t.Errorf("network mismatch (-want +got):\n%s", diff)
	}
	<-accepted
}

func TestNewDialer(t *testing.T) {
	tests := []struct {
		network      string
		wantResolver bool
	}{{"", false}, {"tcp", true}, {"udp", true}}
	for _, tt := range tests {
		t.Run(tt.network, func(t *testing.T) {
			d := NewDialer(3*time.Second, tt.network)
			if d.Timeout != 3*time.Second || (d.Resolver != nil) != tt.wantResolver {
				t.Errorf("dialer timeout %v resolver %v, want 3s and resolver %v", d.Timeout, d.Resolver != nil, tt.wantResolver)
			}
		})
	}
}
