package gateway

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	secretbrokerv1 "github.com/piggysec/piggy/libs/gen/piggy/secretbroker/v1"
	"github.com/piggysec/piggy/libs/logging"
	"github.com/piggysec/piggy/libs/serve"
	"github.com/piggysec/piggy/libs/testca"
	"github.com/piggysec/piggy/libs/tlsreload"
	"github.com/piggysec/piggy/services/secret-broker/internal/broker"
	"github.com/piggysec/piggy/services/secret-broker/internal/cache"
	"github.com/piggysec/piggy/services/secret-broker/internal/fault"
	"github.com/piggysec/piggy/services/secret-broker/internal/grpcapi"
	"github.com/piggysec/piggy/services/secret-broker/internal/throttle"
)

// fakeBroker answers by token: "ok" succeeds, "<kind>" fails with that kind,
// "hold" waits for hold to close, then succeeds.
type fakeBroker struct {
	got chan broker.Request
	// traces receives the trace ID of each request's context.
	traces chan trace.TraceID
	hold   chan struct{}
}

func (f *fakeBroker) GetSecrets(ctx context.Context, r broker.Request) (broker.Response, error) {
	f.traces <- trace.SpanContextFromContext(ctx).TraceID()
	f.got <- r
	if r.Token == "hold" {
		<-f.hold
	}
	kinds := map[string]fault.Kind{
		"invalid": fault.InvalidArgument, "precondition": fault.FailedPrecondition, "": fault.Unauthenticated,
		"denied": fault.PermissionDenied, "missing": fault.NotFound, "down": fault.Unavailable, "bug": fault.Internal,
	}
	if k, ok := kinds[r.Token]; ok {
		return broker.Response{}, fault.New(k, "test", `secret "team-a/web": %s`, k)
	}
	return broker.Response{Values: map[string]logging.Secret{"db": "pw"}, Missing: []string{"x"}, SourceName: "team-a/web"}, nil
}
func (f *fakeBroker) Explain(context.Context, broker.ExplainRequest) (broker.Explanation, error) {
	return broker.Explanation{}, nil
}
func (f *fakeBroker) CacheStats() (cache.Stats, cache.Stats) { return cache.Stats{}, cache.Stats{} }

type env struct {
	url      string
	client   *http.Client
	fb       *fakeBroker
	grpcAddr string
	dir      string
	src      *tlsreload.Source
}

// start serves the real gRPC API (mTLS) with a fake broker and the gateway
// (HTTPS) dialing it over loopback, as run.go wires them; with a limiter
// both admit requests with it, as in run.go.
func start(t *testing.T, limiter ...*throttle.Limiter) *env {
	t.Helper()
	ca, err := testca.New("gateway test CA")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files, err := ca.WriteFiles(dir, "broker", testca.Request{CommonName: "broker", Hosts: testca.LoopbackHosts, Usage: testca.Server | testca.Client})
	if err != nil {
		t.Fatal(err)
	}
	src, err := tlsreload.Load(files)
	if err != nil {
		t.Fatal(err)
	}
	fb := &fakeBroker{got: make(chan broker.Request, 10), traces: make(chan trace.TraceID, 10), hold: make(chan struct{})}
	var lim *throttle.Limiter
	var forwarders *throttle.Forwarders
	if len(limiter) > 0 {
		lim, forwarders = limiter[0], throttle.NewForwarders()
	}
	gs, health, err := serve.NewGRPCServer(serve.GRPCOptions{TLS: src.ServerConfig(true), Logger: slog.New(slog.DiscardHandler), Callers: serve.AnyVerifiedClient()})
	if err != nil {
		t.Fatal(err)
	}
	secretbrokerv1.RegisterSecretBrokerServiceServer(gs, grpcapi.New(fb, grpcapi.Options{Limiter: lim, Forwarders: forwarders}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve.GRPC(ctx, gs, health, ln, time.Second) }()
	t.Cleanup(func() { cancel(); <-done })

	conn, err := Dial(LoopbackTarget(ln.Addr()), src.ClientConfig(""), forwarders)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	mux := http.NewServeMux()
	if err := Register(t.Context(), mux, conn, lim); err != nil {
		t.Fatal(err)
	}
	// The trace middleware of serve.NewHTTPServer, which run.go uses.
	hs := httptest.NewTLSServer(otelhttp.NewHandler(mux, "gateway"))
	t.Cleanup(hs.Close)
	return &env{url: hs.URL, client: hs.Client(), fb: fb, grpcAddr: ln.Addr().String(), dir: dir, src: src}
}

func (e *env) post(t *testing.T, auth, body string) (int, map[string]any) {
	t.Helper()
	code, _, out := e.postHeader(t, auth, body)
	return code, out
}

// postHeader is post that also returns the response headers.
func (e *env) postHeader(t *testing.T, auth, body string) (int, http.Header, map[string]any) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, e.url+"/v1/secrets", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatalf("body %q: %v", data, err)
	}
	return resp.StatusCode, resp.Header, out
}

func TestGatewayJSON(t *testing.T) {
	e := start(t)
	code, got := e.post(t, "Bearer ok", `{"containerUid":"u1","signature":"s1","keys":["db","x"],"futureField":1}`)
	if code != http.StatusOK {
		t.Fatalf("status = %d, body %v", code, got)
	}
	want := map[string]any{"values": map[string]any{"db": "pw"}, "missingKeys": []any{"x"}, "sourceName": "team-a/web"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("body (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(broker.Request{Token: "ok", ContainerUID: "u1", Signature: "s1", Keys: []string{"db", "x"}}, <-e.fb.got); diff != "" {
		t.Errorf("broker request (-want +got):\n%s", diff)
	}
}

func TestGatewayPassesTheTraceOn(t *testing.T) {
	// What telemetry.Setup installs.
	prev := otel.GetTextMapPropagator()
	otel.SetTextMapPropagator(propagation.TraceContext{})
	t.Cleanup(func() { otel.SetTextMapPropagator(prev) })

	e := start(t)
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, e.url+"/v1/secrets", strings.NewReader(`{"keys":["db"]}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	<-e.fb.got
	if got := (<-e.fb.traces).String(); got != traceID {
		t.Errorf("trace ID in the broker = %s, want the caller's %s", got, traceID)
	}
}

func TestGatewayForwardsOnlyAuthorization(t *testing.T) {
	e := start(t)
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, e.url+"/v1/secrets", strings.NewReader(`{"keys":["db"]}`))
	if err != nil {
		t.Fatal(err)
	}
	// A client-chosen token smuggled as gRPC metadata must not reach the
	// broker, alone or next to the real header.
	req.Header.Set("Grpc-Metadata-Authorization", "Bearer smuggled")
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := <-e.fb.got; got.Token != "" {
		t.Errorf("token = %q, want none", got.Token)
	}
	req, _ = http.NewRequestWithContext(t.Context(), http.MethodPost, e.url+"/v1/secrets", strings.NewReader(`{"keys":["db"]}`))
	req.Header.Set("Authorization", "Bearer real")
	req.Header.Set("Grpc-Metadata-Authorization", "Bearer smuggled")
	resp, err = e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := <-e.fb.got; got.Token != "real" {
		t.Errorf("token = %q, want the Authorization header's", got.Token)
	}
}

func TestGatewayErrors(t *testing.T) {
	e := start(t)
	tests := []struct {
		auth       string
		wantStatus int
		wantCode   codes.Code
	}{
		{"Bearer invalid", http.StatusBadRequest, codes.InvalidArgument},
		{"Bearer precondition", http.StatusBadRequest, codes.FailedPrecondition},
		{"", http.StatusUnauthorized, codes.Unauthenticated},
		{"Bearer denied", http.StatusForbidden, codes.PermissionDenied},
		{"Bearer missing", http.StatusNotFound, codes.NotFound},
		{"Bearer down", http.StatusServiceUnavailable, codes.Unavailable},
		{"Bearer bug", http.StatusInternalServerError, codes.Internal},
	}
	for _, tt := range tests {
		t.Run(tt.wantCode.String(), func(t *testing.T) {
			status, body := e.post(t, tt.auth, `{"containerUid":"u","signature":"s","keys":["db"]}`)
			<-e.fb.got
			if status != tt.wantStatus || body["code"] != float64(tt.wantCode) {
				t.Errorf("got %d %v, want %d code %d", status, body, tt.wantStatus, tt.wantCode)
			}
			if msg, _ := body["message"].(string); !strings.Contains(msg, `secret "team-a/web"`) {
				t.Errorf("message %q does not name the secret", msg)
			}
			if _, ok := body["details"]; !ok {
				t.Errorf("body %v has no details", body)
			}
		})
	}
}

func TestGatewayRejectsBadBodies(t *testing.T) {
	e := start(t)
	for _, tt := range []struct {
		body   string
		status int
	}{
		{`{`, http.StatusBadRequest},
		{`{"keys":"db"}`, http.StatusBadRequest},
		{`{"keys":["` + strings.Repeat("k", MaxBodyBytes) + `"]}`, http.StatusRequestEntityTooLarge},
	} {
		status, out := e.post(t, "Bearer ok", tt.body)
		if status != tt.status || out["code"] != float64(codes.InvalidArgument) {
			t.Errorf("body of %d bytes: got %d %v, want %d InvalidArgument", len(tt.body), status, out, tt.status)
		}
	}
	select {
	case r := <-e.fb.got:
		t.Errorf("a malformed body reached the broker: %+v", r)
	default:
	}
}

func TestGRPCRequiresClientCertificate(t *testing.T) {
	e := start(t)
	caOnly, err := tlsreload.Load(tlsreload.Files{CAFile: filepath.Join(e.dir, "ca.crt")})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := Dial(e.grpcAddr, caOnly.ClientConfig("127.0.0.1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	_, err = secretbrokerv1.NewSecretBrokerServiceClient(conn).GetCacheStats(ctx, &secretbrokerv1.GetCacheStatsRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("GetCacheStats without a client certificate = %v, want the handshake refused (Unavailable)", err)
	}
}

// TestGatewayHidesItsOwnAddress: when the loopback hop to the broker's
// gRPC server fails (here: nothing listens), the client gets 503 with a
// message that names no internal address.
func TestGatewayHidesItsOwnAddress(t *testing.T) {
	e := start(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	src, err := tlsreload.Load(tlsreload.Files{CAFile: filepath.Join(e.dir, "ca.crt")})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := Dial(closed, src.ClientConfig(""), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	mux := http.NewServeMux()
	if err := Register(t.Context(), mux, conn, nil); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewTLSServer(mux)
	t.Cleanup(hs.Close)
	e.url, e.client = hs.URL, hs.Client()
	status, out := e.post(t, "Bearer ok", `{"keys":["db"]}`)
	msg, _ := out["message"].(string)
	if status != http.StatusServiceUnavailable || msg != unreachable {
		t.Errorf("got %d %v, want 503 %q", status, out, unreachable)
	}
	if strings.Contains(msg, "127.0.0.1") || strings.Contains(msg, "dial") {
		t.Errorf("message %q names the broker's internals", msg)
	}
}

// retryDelay is the RetryInfo detail of a grpc-gateway error body.
func retryDelay(body map[string]any) string {
	details, _ := body["details"].([]any)
	for _, d := range details {
		m, _ := d.(map[string]any)
		if m["@type"] == "type.googleapis.com/google.rpc.RetryInfo" {
			s, _ := m["retryDelay"].(string)
			return s
		}
	}
	return ""
}

// TestGatewayThrottlesPerSource: past its burst a source gets 429 with
// Retry-After and the RetryInfo detail, and its requests do not reach the
// broker; the gateway's own hop to gRPC is not admitted a second time
// (the HTTP client and the hop have the same loopback address here, so a
// second admission would refuse the burst's second request).
func TestGatewayThrottlesPerSource(t *testing.T) {
	lim, err := throttle.New(throttle.Options{PerSourceRate: 1.0 / 3600, PerSourceBurst: 2})
	if err != nil {
		t.Fatal(err)
	}
	e := start(t, lim)
	for i := range 2 {
		if code, body := e.post(t, "Bearer ok", `{"keys":["db"]}`); code != http.StatusOK {
			t.Fatalf("request %d of the burst: %d %v", i, code, body)
		}
		<-e.fb.got
	}
	code, header, body := e.postHeader(t, "Bearer ok", `{"keys":["db"]}`)
	if code != http.StatusTooManyRequests || body["code"] != float64(codes.ResourceExhausted) {
		t.Fatalf("past the burst: %d %v, want 429 ResourceExhausted", code, body)
	}
	if got := header.Get("Retry-After"); got != "3600" {
		t.Errorf("Retry-After = %q, want 3600 (one request per hour)", got)
	}
	if got := retryDelay(body); got != "3600s" {
		t.Errorf("RetryInfo retryDelay = %q in %v, want 3600s", got, body)
	}
	if msg, _ := body["message"].(string); !strings.Contains(msg, "overloaded") || strings.Contains(msg, "127.0.0.1") {
		t.Errorf("message %q: want it to say the broker is overloaded, without an address", msg)
	}
	select {
	case r := <-e.fb.got:
		t.Errorf("a throttled request reached the broker: %+v", r)
	default:
	}

	// The same limiter guards direct gRPC callers, by their own address.
	conn, err := Dial(e.grpcAddr, e.src.ClientConfig(""), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = secretbrokerv1.NewSecretBrokerServiceClient(conn).GetSecrets(t.Context(), &secretbrokerv1.GetSecretsRequest{Keys: []string{"db"}})
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted {
		t.Fatalf("direct gRPC from the throttled address = %v, want ResourceExhausted", err)
	}
	if d, ok := grpcapi.RetryAfter(st); !ok || d != time.Hour {
		t.Errorf("gRPC retry hint = %v, %v, want 1h", d, ok)
	}
}

// TestGatewayCapsRequestsInFlight: with one request in the broker, a second
// one from any source gets 429 with a retry hint; once it finishes, the
// next is served.
func TestGatewayCapsRequestsInFlight(t *testing.T) {
	lim, err := throttle.New(throttle.Options{MaxInFlight: 1})
	if err != nil {
		t.Fatal(err)
	}
	e := start(t, lim)
	held := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, e.url+"/v1/secrets", strings.NewReader(`{"keys":["db"]}`))
		req.Header.Set("Authorization", "Bearer hold")
		resp, err := e.client.Do(req)
		if err != nil {
			held <- 0
			return
		}
		resp.Body.Close()
		held <- resp.StatusCode
	}()
	<-e.fb.got // the held request is in the broker
	code, header, body := e.postHeader(t, "Bearer ok", `{"keys":["db"]}`)
	if code != http.StatusTooManyRequests || header.Get("Retry-After") != "1" || retryDelay(body) != "1s" {
		t.Errorf("second request in flight: %d Retry-After %q %v, want 429 with a 1s hint", code, header.Get("Retry-After"), body)
	}
	// Direct gRPC shares the cap.
	conn, err := Dial(e.grpcAddr, e.src.ClientConfig(""), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = secretbrokerv1.NewSecretBrokerServiceClient(conn).GetSecrets(t.Context(), &secretbrokerv1.GetSecretsRequest{Keys: []string{"db"}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("direct gRPC while the cap is reached = %v, want ResourceExhausted", err)
	}
	close(e.fb.hold)
	if got := <-held; got != http.StatusOK {
		t.Fatalf("held request = %d", got)
	}
	if code, body := e.post(t, "Bearer ok", `{"keys":["db"]}`); code != http.StatusOK {
		t.Errorf("after the held request finished: %d %v", code, body)
	}
	<-e.fb.got
	if n := lim.InFlight(); n != 0 {
		t.Errorf("in flight after every request finished = %d", n)
	}
}
