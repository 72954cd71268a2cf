package resolverclient_test

import (
	"crypto/tls"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/piggysec/piggy/services/admission-gateway/internal/resolverclient"
)

// TestReconnectBackoffIsCapped keeps the resolver "down" (its port accepts
// connections and drops them at once) for 10 s and records when the client
// tries again: after the first attempts the gaps must stay near the cap
// (about a second), where grpc-go's default grows them to 2, 4, 6.5 s and
// on up to two minutes, so a resolver that comes back stays unused for up
// to that long.
func TestReconnectBackoffIsCapped(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var (
		mu      sync.Mutex
		accepts []time.Time
	)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			accepts = append(accepts, time.Now())
			mu.Unlock()
			c.Close()
		}
	}()
	conn, err := resolverclient.Dial(ln.Addr().String(), &tls.Config{MinVersion: tls.VersionTLS12, ServerName: "resolver"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Connect()
	time.Sleep(10 * time.Second)

	mu.Lock()
	defer mu.Unlock()
	var widest time.Duration
	for i := 1; i < len(accepts); i++ {
		widest = max(widest, accepts[i].Sub(accepts[i-1]))
	}
	t.Logf("%d connection attempts in 10s; widest gap %s", len(accepts), widest.Round(time.Millisecond))
	// The cap is 1 s plus 20 % jitter; the rest is room for a busy machine.
	// grpc-go's default backoff has a gap of at least 3.3 s by now.
	if widest > 3*time.Second || len(accepts) < 5 {
		t.Errorf("reconnect attempts: %d, widest gap %s; want the gaps capped near a second", len(accepts), widest)
	}
}
