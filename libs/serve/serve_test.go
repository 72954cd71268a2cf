package serve_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	"github.com/piggysec/piggy/libs/serve"
	"github.com/piggysec/piggy/libs/testca"
	"github.com/piggysec/piggy/libs/tlsreload"
)

type pki struct{ server, client *tlsreload.Source }

func newPKI(t *testing.T) pki {
	t.Helper()
	ca, err := testca.New("serve test CA")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sf, err := ca.WriteFiles(dir, "server", testca.Request{CommonName: "server", Hosts: testca.LoopbackHosts, Usage: testca.Server})
	if err != nil {
		t.Fatal(err)
	}
	cf, err := ca.WriteFiles(dir, "client", testca.Request{CommonName: "client", Usage: testca.Client})
	if err != nil {
		t.Fatal(err)
	}
	s, err := tlsreload.Load(sf)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tlsreload.Load(cf)
	if err != nil {
		t.Fatal(err)
	}
	return pki{server: s, client: c}
}

func TestGRPCHealthReflectionAndGracefulStop(t *testing.T) {
	p := newPKI(t)
	srv, health, err := serve.NewGRPCServer(serve.GRPCOptions{TLS: p.server.ServerConfig(true), Callers: serve.AnyVerifiedClient()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := serve.Listen(t.Context(), "grpc", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- serve.GRPC(ctx, srv, health, ln, 5*time.Second) }()

	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(p.client.ClientConfig("127.0.0.1"))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(t.Context(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatalf("health check: %v", err)
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health = %v, want SERVING", resp.GetStatus())
	}
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	r, err := stream.Recv()
	if err != nil {
		t.Fatalf("reflection: %v", err)
	}
	var names []string
	for _, s := range r.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	if !strings.Contains(strings.Join(names, ","), "grpc.health.v1.Health") {
		t.Errorf("reflection lists %v, want grpc.health.v1.Health", names)
	}
	_ = stream.CloseSend()

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("GRPC() = %v, want nil after shutdown", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("gRPC server did not stop")
	}
}

func TestGRPCRefusesClientWithoutCertificate(t *testing.T) {
	p := newPKI(t)
	srv, health, err := serve.NewGRPCServer(serve.GRPCOptions{TLS: p.server.ServerConfig(true), Callers: serve.AnyVerifiedClient()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := serve.Listen(t.Context(), "grpc", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = serve.GRPC(t.Context(), srv, health, ln, time.Second) }()

	cfg := p.client.ClientConfig("127.0.0.1")
	cfg.GetClientCertificate = nil
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err == nil {
		t.Fatal("health check without a client certificate succeeded")
	}
}

func TestNewGRPCServerNeedsTLSAndCallers(t *testing.T) {
	p := newPKI(t)
	tests := []struct {
		name string
		opts serve.GRPCOptions
		want string
	}{
		{"no TLS", serve.GRPCOptions{Callers: serve.AnyVerifiedClient()}, "needs a TLS configuration"},
		{"client certificates not verified", serve.GRPCOptions{TLS: p.server.ServerConfig(false), Callers: serve.AnyVerifiedClient()}, "verifies client certificates"},
		{"no callers", serve.GRPCOptions{TLS: p.server.ServerConfig(true)}, "needs its callers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := serve.NewGRPCServer(tt.opts); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewGRPCServer() error = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestHTTPGracefulShutdownFinishesInFlight(t *testing.T) {
	p := newPKI(t)
	started := make(chan struct{})
	mux := serve.Probes(func(context.Context) error { return nil })
	mux.HandleFunc("GET /slow", func(w http.ResponseWriter, _ *http.Request) {
		close(started)
		time.Sleep(300 * time.Millisecond)
		_, _ = io.WriteString(w, "done")
	})
	mux.HandleFunc("GET /panic", func(http.ResponseWriter, *http.Request) { panic("boom") })
	srv := serve.NewHTTPServer(serve.HTTPOptions{Handler: mux, TLS: p.server.ServerConfig(false), Name: "test", Logger: slog.New(slog.DiscardHandler)})
	ln, err := serve.Listen(t.Context(), "https", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- serve.HTTP(ctx, srv, ln, 5*time.Second) }()

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: p.client.ClientConfig("127.0.0.1"), ForceAttemptHTTP2: true}, Timeout: 10 * time.Second}
	base := "https://" + ln.Addr().String()
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/panic": 500} {
		resp, err := client.Get(base + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s = %d, want %d", path, resp.StatusCode, want)
		}
		if resp.ProtoMajor != 2 {
			t.Errorf("GET %s used %s, want HTTP/2", path, resp.Proto)
		}
	}

	body := make(chan string, 1)
	go func() {
		resp, err := client.Get(base + "/slow")
		if err != nil {
			body <- "error: " + err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body <- string(b)
	}()
	<-started
	cancel()
	if got := <-body; got != "done" {
		t.Errorf("in-flight request got %q, want done", got)
	}
	if err := <-done; err != nil {
		t.Errorf("HTTP() = %v", err)
	}
}

func TestProbesNotReady(t *testing.T) {
	mux := serve.Probes(func(context.Context) error { return errors.New("resolver unreachable") })
	srv := serve.NewHTTPServer(serve.HTTPOptions{Handler: mux, Name: "probe"})
	ln, err := serve.Listen(t.Context(), "http", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = serve.HTTP(t.Context(), srv, ln, time.Second) }()
	resp, err := http.Get("http://" + ln.Addr().String() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(b), "resolver unreachable") {
		t.Errorf("/readyz = %d %q, want 503 with the reason", resp.StatusCode, b)
	}
}

func TestListenBadAddress(t *testing.T) {
	_, err := serve.Listen(t.Context(), "webhook", "not-an-address")
	if err == nil || !strings.Contains(err.Error(), `webhook: listen on "not-an-address"`) {
		t.Errorf("Listen error = %v", err)
	}
}
