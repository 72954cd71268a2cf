package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"

	imageresolverv1 "github.com/piggysec/piggy/libs/gen/piggy/imageresolver/v1"
	"github.com/piggysec/piggy/libs/logging"
	"github.com/piggysec/piggy/libs/proctest"
	"github.com/piggysec/piggy/libs/registrytest"
	"github.com/piggysec/piggy/libs/serve"
	"github.com/piggysec/piggy/libs/telemetry"
	"github.com/piggysec/piggy/services/admission-gateway/internal/mutate"
	"github.com/piggysec/piggy/services/admission-gateway/internal/resolverclient"
	"github.com/piggysec/piggy/services/admission-gateway/internal/webhook"
)

// BenchmarkReviewHTTPS measures admission reviews over HTTPS (HTTP/2,
// keep-alive, loopback) with 1 and 8 client connections, for a trivial
// handler returning a fixed AdmissionReview (the ceiling), a pod with an
// explicit command, and a pod without one answered through a real mTLS gRPC
// hop to a real image-resolver process with a warm cache. It reports
// reviews/s, p50 and p99, and the processor time per review of this process
// (HTTP clients and gateway) and of the resolver; compare the cases of one
// run as ratios:
//
//	go test -run '^$' -bench BenchmarkReviewHTTPS -benchtime 4000x .
func BenchmarkReviewHTTPS(b *testing.B) {
	pki := proctest.NewPKI(b)
	reg := registrytest.New(b, registrytest.Options{})
	reg.Push(b, "app:1", registrytest.Image(b, "linux/amd64", []string{"/app"}, []string{"serve"}))
	resolverProc := proctest.Start(b, proctest.Build(b, "../image-resolver"), append(pki.TLSArgs(),
		"--grpc-address=127.0.0.1:0", "--metrics-address=127.0.0.1:0", "--kubernetes=off", "--registry-ca-file", reg.CAFile(b),
		"--allow-internal-registries", reg.Host),
		benchEnv())
	addrs := resolverProc.Addresses(b, "grpc", "metrics")
	resolverAddr := addrs["grpc"]
	b.Logf("image-resolver metrics (and pprof with BENCH_RESOLVER_ENV=PROFILING=true): http://%s", addrs["metrics"])

	// The gateway's side runs with the logger and telemetry of the real
	// process (metrics kept for Prometheus, spans not recorded when nothing
	// exports them), so that their cost is measured too.
	tel, err := telemetry.Setup(b.Context(), telemetry.Options{ServiceName: "admission-gateway", Getenv: func(string) string { return "" }})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = tel.Shutdown(context.Background()) }()
	conn, err := resolverclient.Dial(resolverAddr, pki.Peer.ClientConfig("127.0.0.1"))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	mutator := mutate.New(mutate.Config{AllowedAddresses: []string{brokerURL}, EnvImage: "piggy-env:bench"},
		resolverclient.New(imageresolverv1.NewImageResolverServiceClient(conn)), noEnvSource{})
	log := logging.New(io.Discard, logging.Options{Level: slog.LevelInfo, Service: "admission-gateway"})
	hook, err := webhook.New(mutator, log, tel.MeterProvider.Meter("piggy/admission-gateway"))
	if err != nil {
		b.Fatal(err)
	}
	annotations := `{"piggysec.com/aws-secret-name": "team/app", "piggysec.com/piggy-address": "` + brokerURL + `"}`
	withCommand := reviewBody("web", annotations, `"command": ["/app", "serve"], `, reg.Ref("app:1"))
	withoutCommand := reviewBody("web", annotations, "", reg.Ref("app:1"))

	// The ceiling answers with a fixed AdmissionReview: the very response
	// the webhook gives for the pod with a command, computed once, so both
	// put the same bytes on the wire and the difference is the webhook's
	// own work.
	fixed := fixedResponse(b, hook, withCommand)
	ceiling := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(fixed)
	})

	cases := []struct {
		name    string
		handler http.Handler
		body    []byte
	}{
		{"ceiling", ceiling, withCommand},
		{"command", hook, withCommand},
		{"no-command-warm", hook, withoutCommand},
	}
	for _, c := range cases {
		addr := serveTLS(b, c.handler, pki.Service.CertFile, pki.Service.KeyFile)
		clientTLS := pki.Client.ClientConfig("127.0.0.1")
		// Warm the path (TLS, resolver cache) before measuring.
		if err := drive(addr, clientTLS, c.body, 1, 20, nil); err != nil {
			b.Fatalf("%s: %v", c.name, err)
		}
		for _, conns := range []int{1, 8} {
			b.Run(fmt.Sprintf("%s/conns=%d", c.name, conns), func(b *testing.B) {
				lat := make([]time.Duration, 0, b.N)
				self0, resolver0 := cpuTimes(b, resolverProc)
				b.ResetTimer()
				start := time.Now()
				if err := drive(addr, clientTLS, c.body, conns, b.N, &lat); err != nil {
					b.Fatal(err)
				}
				elapsed := time.Since(start)
				b.StopTimer()
				self1, resolver1 := cpuTimes(b, resolverProc)
				slices.Sort(lat)
				perReview := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 / float64(b.N) }
				b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "reviews/s")
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
				b.ReportMetric(perReview(self1-self0), "gateway-cpu-µs/review")
				b.ReportMetric(perReview(resolver1-resolver0), "resolver-cpu-µs/review")
			})
		}
	}
}

// cpuTimes returns the processor time used so far by this process (the
// HTTP clients and the webhook with its gRPC client) and by the resolver
// process. On a shared machine the time per review holds steadier than
// reviews/s.
func cpuTimes(b *testing.B, resolver *proctest.Process) (self, resolverCPU time.Duration) {
	b.Helper()
	resolverCPU, err := resolver.CPUTime()
	if err != nil {
		b.Fatal(err)
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), resolverCPU
}

// benchEnv passes BENCH_RESOLVER_ENV (space-separated NAME=value pairs, for
// example "PROFILING=true GOGC=200") to the image-resolver, to profile it or
// compare runtime settings.
func benchEnv() []string {
	return strings.Fields(os.Getenv("BENCH_RESOLVER_ENV"))
}

// fixedResponse is the webhook's answer to body.
func fixedResponse(b *testing.B, h http.Handler, body []byte) []byte {
	b.Helper()
	req, err := http.NewRequest(http.MethodPost, "/mutate", bytes.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	rec := &recorder{header: http.Header{}}
	h.ServeHTTP(rec, req)
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(rec.body.Bytes(), &out); err != nil || out.Response == nil || len(out.Response.Patch) == 0 {
		b.Fatalf("webhook answer for the ceiling: %v: %s", err, rec.body.String())
	}
	return rec.body.Bytes()
}

// recorder is a minimal http.ResponseWriter.
type recorder struct {
	header http.Header
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) Write(b []byte) (int, error) { return r.body.Write(b) }
func (r *recorder) WriteHeader(int)             {}

// drive sends n reviews over conns HTTP/2 connections (one transport each,
// so one connection each) in closed loops and collects the latencies.
func drive(addr string, cfg *tls.Config, body []byte, conns, n int, lat *[]time.Duration) error {
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		errc = make(chan error, conns)
		next = make(chan struct{}, n)
	)
	for range n {
		next <- struct{}{}
	}
	close(next)
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tr := &http.Transport{TLSClientConfig: cfg.Clone(), ForceAttemptHTTP2: true, MaxConnsPerHost: 1}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			local := make([]time.Duration, 0, n/conns+1)
			for range next {
				t0 := time.Now()
				resp, err := client.Post("https://"+addr+"/mutate", "application/json", bytes.NewReader(body))
				if err != nil {
					errc <- err
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
					errc <- fmt.Errorf("status %d over %s", resp.StatusCode, resp.Proto)
					return
				}
				local = append(local, time.Since(t0))
			}
			if lat != nil {
				mu.Lock()
				*lat = append(*lat, local...)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errc)
	return <-errc
}

// serveTLS serves h with the same server stack the gateway uses.
func serveTLS(b *testing.B, h http.Handler, certFile, keyFile string) string {
	b.Helper()
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		b.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/mutate", h)
	srv := serve.NewHTTPServer(serve.HTTPOptions{Handler: mux, TLS: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, Name: "bench"})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = serve.HTTP(ctx, srv, ln, time.Second); close(done) }()
	b.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String()
}

func reviewBody(name, annotations, command, image string) []byte {
	return []byte(fmt.Sprintf(`{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "bench",
		"kind": {"group": "", "version": "v1", "kind": "Pod"}, "namespace": "team", "operation": "CREATE",
		"object": {"metadata": {"name": %q, "annotations": %s}, "spec": {"containers": [{"name": "app", "image": %q, %s
			"env": [{"name": "DB_PASSWORD", "value": "piggy:DB_PASSWORD"}, {"name": "PLAIN", "value": "x"}]}]}}}}`, name, annotations, image, command))
}

// noEnvSource is never consulted: the benchmark pods use literal values.
type noEnvSource struct{}

func (noEnvSource) ConfigMap(context.Context, string, string) (map[string]string, error) {
	return nil, mutate.ErrNotFound
}

func (noEnvSource) Secret(context.Context, string, string) (map[string]string, error) {
	return nil, mutate.ErrNotFound
}
