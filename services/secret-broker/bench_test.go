package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	secretbrokerv1 "github.com/piggysec/piggy/libs/gen/piggy/secretbroker/v1"
	"github.com/piggysec/piggy/libs/serve"
	"github.com/piggysec/piggy/libs/testca"
	"github.com/piggysec/piggy/libs/tlsreload"
)

// benchConnections is the number of concurrent connections (issue 4).
const benchConnections = 16

// BenchmarkGateway measures GetSecrets through the HTTPS gateway with warm
// caches (token review and secret) at 16 concurrent HTTP/2 connections on
// loopback (HTTP/2 like piggy-env), next to two trivial HTTPS handlers
// measured in the same run:
//
//   - ceiling-fixed-response: the same POST with the same body and
//     headers, answered with the very bytes the broker returns, by a
//     handler that only drains the body, behind the same server wrappers
//     (serve.NewHTTPServer: TLS, HTTP/2, OpenTelemetry, panic recovery);
//     it runs in the benchmark process. The difference to GetSecrets is
//     the broker's own work: the loopback mTLS gRPC hop, JSON, token,
//     pod and policy checks, cache, log line and metrics.
//   - trivial-healthz: GET /healthz of the broker itself.
//
// and GetSecrets over mTLS gRPC without the gateway. Ratios are what
// matter; the processor time per request (server and client) holds up
// better than req/s on a busy machine:
//
//	go test -run '^$' -bench BenchmarkGateway -benchtime 4s .
func BenchmarkGateway(b *testing.B) {
	w := newWorld(b, worldOptions{env: benchEnv()})
	ns := w.namespace("bench-", "web")
	w.seed(ns+"/web", map[string]string{"db": secretValue("bench-db"), "api": secretValue("bench-api")})
	pod, ctr := w.piggyPod(ns, "web-1", "web", nil)
	token := w.podToken(pod)
	if a := w.getSecrets(b, token, ctr, "db", "api"); a.Status != http.StatusOK {
		b.Fatalf("warm-up: %+v", a)
	}
	// Every request is an attempt of the warm-up's fetch (the same fetch
	// id): the broker answers a container once per start, and retries
	// cost no API call.
	body, _ := json.Marshal(map[string]any{"containerUid": ctr.uid, "signature": ctr.signature, "keys": []string{"db", "api"}, "fetchId": ctr.fetchID})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(w.ca.CertPEM)
	secretsReq := func(base string) func() *http.Request {
		return func() *http.Request {
			r, _ := http.NewRequest(http.MethodPost, base+"/v1/secrets", bytes.NewReader(body))
			r.Header.Set("Authorization", "Bearer "+token)
			r.Header.Set("Content-Type", "application/json")
			return r
		}
	}
	gatewayBase := "https://" + w.addrs["gateway"]
	ceilingBase := w.ceiling(b, w.fixedResponse(b, secretsReq(gatewayBase)()))

	results := map[string]loadResult{}
	httpLoad := func(name string, serverCPU func() (time.Duration, error), newReq func() *http.Request) {
		b.Run(name, func(b *testing.B) {
			results[name] = runLoad(b, serverCPU, func() func() error {
				client := &http.Client{Transport: &http.Transport{ForceAttemptHTTP2: true, TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
				return func() error {
					resp, err := client.Do(newReq())
					if err != nil {
						return err
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						return &statusError{resp.StatusCode}
					}
					return nil
				}
			})
		})
	}
	// The ceiling's server is this process: its processor time is counted
	// with the client's.
	httpLoad("ceiling-fixed-response", func() (time.Duration, error) { return 0, nil }, secretsReq(ceilingBase))
	httpLoad("trivial-healthz", w.proc.CPUTime, func() *http.Request {
		r, _ := http.NewRequest(http.MethodGet, gatewayBase+"/healthz", nil)
		return r
	})
	httpLoad("GetSecrets-https", w.proc.CPUTime, secretsReq(gatewayBase))
	b.Run("GetSecrets-grpc", func(b *testing.B) {
		results["GetSecrets-grpc"] = runLoad(b, w.proc.CPUTime, func() func() error {
			client := w.grpcClient(b, w.client.ClientConfig("127.0.0.1"))
			ctx := metadata.NewOutgoingContext(b.Context(), metadata.Pairs("authorization", "Bearer "+token))
			req := &secretbrokerv1.GetSecretsRequest{ContainerUid: ctr.uid, Signature: ctr.signature, Keys: []string{"db", "api"}, FetchId: ctr.fetchID}
			return func() error {
				_, err := client.GetSecrets(ctx, req)
				return err
			}
		})
	})
	g := results["GetSecrets-https"]
	for _, name := range []string{"ceiling-fixed-response", "trivial-healthz"} {
		if t := results[name]; t.rps > 0 && g.rps > 0 {
			b.Logf("GetSecrets over HTTPS vs %s: %.0f%% of its req/s, p99 %.2fx its p99, cpu/req %.2fx (%s %.0f req/s p50 %s p99 %s cpu/req %s; GetSecrets %.0f req/s p50 %s p99 %s cpu/req %s)",
				name, 100*g.rps/t.rps, float64(g.p99)/float64(t.p99), float64(g.serverCPU+g.clientCPU)/float64(t.serverCPU+t.clientCPU),
				name, t.rps, t.p50, t.p99, t.serverCPU+t.clientCPU, g.rps, g.p50, g.p99, g.serverCPU+g.clientCPU)
		}
	}
}

// fixedResponse returns the body of the broker's answer to req.
func (w *world) fixedResponse(b *testing.B, req *http.Request) []byte {
	b.Helper()
	resp, err := w.https.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		b.Fatalf("fixed response: %d %v", resp.StatusCode, err)
	}
	return data
}

// ceiling serves POST /v1/secrets with fixed bytes, through the server
// wrappers every Piggy HTTPS server has, with a certificate of the
// broker's CA, and returns its base URL.
func (w *world) ceiling(b *testing.B, fixed []byte) string {
	b.Helper()
	files, err := w.ca.WriteFiles(w.dir, "ceiling", testca.Request{CommonName: "ceiling", Hosts: testca.LoopbackHosts, Usage: testca.Server})
	if err != nil {
		b.Fatal(err)
	}
	src, err := tlsreload.Load(files)
	if err != nil {
		b.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/secrets", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(fixed)
	})
	srv := serve.NewHTTPServer(serve.HTTPOptions{Handler: mux, TLS: src.ServerConfig(false), Name: "ceiling"})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve.HTTP(ctx, srv, ln, time.Second) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	})
	return "https://" + ln.Addr().String()
}

type statusError struct{ code int }

func (e *statusError) Error() string { return http.StatusText(e.code) }

type loadResult struct {
	rps      float64
	p50, p99 time.Duration
	// serverCPU and clientCPU are the processor time per request of the
	// server process and of this (client) process.
	serverCPU, clientCPU time.Duration
}

// runLoad sends b.N requests from benchConnections workers, each with its
// own connection (newWorker is called once per worker and makes one warm-up
// request before the timer starts), and reports req/s, p50 and p99, and the
// processor time per request of the server (serverCPU) and of this client
// process: on a shared machine, those hold steadier than req/s.
func runLoad(b *testing.B, serverCPU func() (time.Duration, error), newWorker func() func() error) loadResult {
	b.Helper()
	workers := make([]func() error, benchConnections)
	for i := range workers {
		workers[i] = newWorker()
		if err := workers[i](); err != nil {
			b.Fatalf("warm-up: %v", err)
		}
	}
	lat := make([]time.Duration, b.N)
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	server0, client0 := cpuTimes(b, serverCPU)
	b.ResetTimer()
	start := time.Now()
	for _, do := range workers {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				t0 := time.Now()
				if err := do(); err != nil {
					failed.Store(err)
					return
				}
				lat[i] = time.Since(t0)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	server1, client1 := cpuTimes(b, serverCPU)
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	slices.Sort(lat)
	r := loadResult{
		rps: float64(b.N) / elapsed.Seconds(), p50: lat[b.N/2], p99: lat[b.N*99/100],
		serverCPU: (server1 - server0) / time.Duration(b.N), clientCPU: (client1 - client0) / time.Duration(b.N),
	}
	b.ReportMetric(r.rps, "req/s")
	b.ReportMetric(float64(r.p50.Microseconds()), "p50-µs")
	b.ReportMetric(float64(r.p99.Microseconds()), "p99-µs")
	b.ReportMetric(float64(r.serverCPU.Nanoseconds())/1e3, "server-cpu-µs/req")
	b.ReportMetric(float64(r.clientCPU.Nanoseconds())/1e3, "client-cpu-µs/req")
	return r
}

// cpuTimes reads the server's and this process's processor time.
func cpuTimes(b *testing.B, serverCPU func() (time.Duration, error)) (server, client time.Duration) {
	b.Helper()
	server, err := serverCPU()
	if err != nil {
		b.Fatal(err)
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return server, time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchEnv passes BENCH_BROKER_ENV (space-separated NAME=value pairs, for
// example "GOGC=100 OTEL_TRACES_SAMPLER=always_off") to the broker, to
// compare runtime and telemetry settings.
func benchEnv() []string {
	return strings.Fields(os.Getenv("BENCH_BROKER_ENV"))
}
