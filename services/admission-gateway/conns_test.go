package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/piggysec/piggy/libs/proctest"
	"github.com/piggysec/piggy/libs/registrytest"
)

// TestIdleConnectionsAreBounded is the faults issue's connection flood:
// one peer opens 3,000 TLS connections to the webhook port and leaves
// them idle. The gateway holds at most --max-connections-per-peer of
// them, so its memory stays bounded, and another peer's review is still
// answered.
func TestIdleConnectionsAreBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 3,000 connections to a real process")
	}
	const flood = 3000
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "http://%s"}}]
users: [{name: none, user: {}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
`, registrytest.ClosedPort(t)), 0o600); err != nil {
		t.Fatal(err)
	}
	pki := proctest.NewPKI(t)
	gw := proctest.Start(t, proctest.Build(t, "."), append(pki.TLSArgs(), "--listen-address=127.0.0.1:0", "--grpc-address=127.0.0.1:0",
		"--metrics-address=127.0.0.1:0", "--kubeconfig", kubeconfig), []string{"PIGGY_ADDRESS=" + brokerURL})
	addr := gw.Addresses(t, "webhook")["webhook"]
	before, err := gw.PeakRSS()
	if err != nil {
		t.Fatal(err)
	}

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pki.CA.CertPEM)
	tlsCfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", NextProtos: []string{"h2"}}
	var (
		mu    sync.Mutex
		held  []net.Conn
		wg    sync.WaitGroup
		limit = make(chan struct{}, 64)
	)
	for range flood {
		wg.Go(func() {
			limit <- struct{}{}
			defer func() { <-limit }()
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, tlsCfg)
			if err != nil {
				return
			}
			if _, err := c.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")); err != nil {
				c.Close()
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range held {
			c.Close()
		}
	})
	// Connections the gateway closed read EOF; the others stay open.
	open := 0
	for _, c := range held {
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		buf := make([]byte, 4096)
		for {
			if _, err := c.Read(buf); err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					open++
				}
				break
			}
		}
	}
	peak, err := gw.PeakRSS()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d of %d idle connections held; peak RSS %d MiB (%d MiB before)", open, flood, peak>>20, before>>20)
	if open > 128 {
		t.Errorf("%d idle connections from one peer held, want at most 128 (--max-connections-per-peer)", open)
	}

	// Another peer is still served.
	other := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext:     (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).DialContext,
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}, ForceAttemptHTTP2: true,
	}}
	start := time.Now()
	resp, err := other.Get("https://" + addr + "/healthz")
	if err != nil {
		t.Fatalf("another peer during the flood: %v", err)
	}
	resp.Body.Close()
	t.Logf("another peer answered %d in %s", resp.StatusCode, time.Since(start).Round(time.Millisecond))
}
