package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	secretbrokerv1 "github.com/piggysec/piggy/libs/gen/piggy/secretbroker/v1"
	"github.com/piggysec/piggy/libs/kubetest"
)

// forgedToken is a junk token that passes every check the broker can make
// without the apiserver: a JWT of the service-account issuer for audience
// "piggy", expiring in an hour, bound to a pod, with a random signature.
// Every call returns another token.
func forgedToken(ns string) string {
	enc := base64.RawURLEncoding.EncodeToString
	now := time.Now()
	jti := make([]byte, 16)
	sig := make([]byte, 256)
	_, _ = rand.Read(jti)
	_, _ = rand.Read(sig)
	payload, _ := json.Marshal(map[string]any{
		"aud": []string{audience}, "exp": now.Add(time.Hour).Unix(), "iat": now.Unix(), "nbf": now.Unix(),
		"iss": kubetest.ServiceAccountIssuer, "sub": "system:serviceaccount:" + ns + ":web", "jti": enc(jti),
		"kubernetes.io": map[string]any{"namespace": ns, "pod": map[string]string{"name": "web-0", "uid": "00000000-0000-0000-0000-000000000000"},
			"serviceaccount": map[string]string{"name": "web", "uid": "00000000-0000-0000-0000-000000000001"}},
	})
	return enc([]byte(`{"alg":"RS256","kid":"forged"}`)) + "." + enc(payload) + "." + enc(sig)
}

// dialFrom dials from the loopback address ip (any of 127.0.0.0/8), so
// that one test process can be many sources to the broker.
func dialFrom(ip string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 30 * time.Second}
	return d.DialContext
}

// httpsFrom is w.https with connections from ip.
func (w *world) httpsFrom(t testing.TB, ip string) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(w.ca.CertPEM)
	c := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		DialContext:     dialFrom(ip),
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 64,
	}}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// grpcFrom is w.grpcClient with connections from ip.
func (w *world) grpcFrom(t testing.TB, ip string) secretbrokerv1.SecretBrokerServiceClient {
	t.Helper()
	dial := dialFrom(ip)
	conn, err := grpc.NewClient(w.addrs["grpc"], grpc.WithTransportCredentials(credentials.NewTLS(w.client.ClientConfig("127.0.0.1"))),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return dial(ctx, "tcp", addr) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return secretbrokerv1.NewSecretBrokerServiceClient(conn)
}

// floodResult is what a flood of junk tokens got back.
type floodResult struct {
	mu       sync.Mutex
	statuses map[string]int // "HTTP 401", "gRPC ResourceExhausted", ...
	// httpHint and grpcHint are a retry hint seen with a 429 (the
	// Retry-After header) and with RESOURCE_EXHAUSTED (RetryInfo).
	httpHint, grpcHint string
	httpBodyHint       bool
	errors             []string
}

func (f *floodResult) add(key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.statuses[key]++
}

func (f *floodResult) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.errors) < 5 {
		f.errors = append(f.errors, err.Error())
	}
}

// flood sends n distinct junk tokens, httpsShare of them over HTTPS from
// one address and the rest over gRPC from another, all at once; answered
// counts the answers as they come.
func (w *world) flood(t *testing.T, ns string, n, httpsShare int, answered *atomic.Int64) *floodResult {
	t.Helper()
	https := w.httpsFrom(t, "127.0.0.2")
	rpc := w.grpcFrom(t, "127.0.0.3")
	res := &floodResult{statuses: map[string]int{}}
	ctr := container{uid: "junk", signature: "junk"}
	tokens := make([]string, n)
	for i := range tokens {
		tokens[i] = forgedToken(ns)
	}
	// One HTTP/2 connection up before the flood, as an attacker would
	// have: the requests share it instead of racing to dial their own.
	if resp, err := https.Get("https://" + w.addrs["gateway"] + "/healthz"); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
	}
	release := make(chan struct{})
	var wg sync.WaitGroup
	for i, tok := range tokens {
		wg.Go(func() {
			defer answered.Add(1)
			<-release
			if i < httpsShare {
				w.floodHTTPS(https, tok, ctr, res)
			} else {
				w.floodGRPC(rpc, tok, ctr, res)
			}
		})
	}
	close(release)
	wg.Wait()
	return res
}

func (w *world) floodHTTPS(client *http.Client, tok string, ctr container, res *floodResult) {
	body, _ := json.Marshal(map[string]any{"containerUid": ctr.uid, "signature": ctr.signature, "keys": []string{"db"}})
	req, _ := http.NewRequest(http.MethodPost, "https://"+w.addrs["gateway"]+"/v1/secrets", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		res.fail(err)
		return
	}
	defer resp.Body.Close()
	var a struct {
		Code    int               `json:"code"`
		Details []json.RawMessage `json:"details"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&a)
	res.add("HTTP " + strconv.Itoa(resp.StatusCode))
	if resp.StatusCode == http.StatusTooManyRequests {
		res.mu.Lock()
		defer res.mu.Unlock()
		if h := resp.Header.Get("Retry-After"); h != "" {
			res.httpHint = h
		}
		for _, d := range a.Details {
			var ri struct {
				Type  string `json:"@type"`
				Delay string `json:"retryDelay"`
			}
			if json.Unmarshal(d, &ri) == nil && ri.Type == "type.googleapis.com/google.rpc.RetryInfo" && ri.Delay != "" && a.Code == int(codes.ResourceExhausted) {
				res.httpBodyHint = true
			}
		}
	}
}

func (w *world) floodGRPC(client secretbrokerv1.SecretBrokerServiceClient, tok string, ctr container, res *floodResult) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ctx = metadata.NewOutgoingContext(ctx, metadata.Pairs("authorization", "Bearer "+tok))
	_, err := client.GetSecrets(ctx, &secretbrokerv1.GetSecretsRequest{ContainerUid: ctr.uid, Signature: ctr.signature, Keys: []string{"db"}})
	st := status.Convert(err)
	res.add("gRPC " + st.Code().String())
	if st.Code() == codes.ResourceExhausted {
		for _, d := range st.Details() {
			if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay().AsDuration() >= time.Second {
				res.mu.Lock()
				res.grpcHint = ri.GetRetryDelay().AsDuration().String()
				res.mu.Unlock()
			}
		}
	}
}

// settledTokenReviews is apiserverTokenReviews once two reads 100 ms apart
// agree: the apiserver counts a request just after answering it.
func (w *world) settledTokenReviews(t testing.TB) float64 {
	t.Helper()
	last := w.apiserverTokenReviews(t)
	for range 100 {
		time.Sleep(100 * time.Millisecond)
		n := w.apiserverTokenReviews(t)
		if n == last {
			return n
		}
		last = n
	}
	return last
}

// realPods creates n pods of one workload and returns their callers,
// each with its own source address (127.0.1.1, 127.0.1.2, ...), as pods
// have.
func (w *world) realPods(t *testing.T, ns string, n int) []func() (answer, error) {
	t.Helper()
	callers := make([]func() (answer, error), n)
	forEach(t, n, 8, func(i int) error {
		pod, ctr, err := w.createLaunchedPod(ns, fmt.Sprintf("real-%02d", i), "web", nil, "db")
		if err != nil {
			return err
		}
		tok, err := kubetest.RequestPodToken(context.Background(), w.cs, pod, audience)
		if err != nil {
			return err
		}
		client := w.httpsFrom(t, fmt.Sprintf("127.0.1.%d", i+1))
		callers[i] = func() (answer, error) { return w.tryGetSecrets(client, tok, ctr, "db") }
		return nil
	})
	return callers
}

// duringFlood runs the real pods' requests, all at once, once the flood has
// had answered answers, and returns how many got their value.
func duringFlood(t *testing.T, pods []func() (answer, error), value string, answered *atomic.Int64, after int64) (ok int, failures []string) {
	for answered.Load() < after {
		time.Sleep(time.Millisecond)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, call := range pods {
		wg.Go(func() {
			a, err := call()
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				failures = append(failures, fmt.Sprintf("pod %d: %v", i, err))
			case a.Status != http.StatusOK || a.Values["db"] != value:
				failures = append(failures, fmt.Sprintf("pod %d: HTTP %d %q", i, a.Status, a.Message))
			default:
				ok++
			}
		})
	}
	wg.Wait()
	return ok, failures
}

// TestJunkTokensCostNoTokenReviewsAndDoNotStarveRealPods floods the real
// broker with 1,000 distinct forged tokens (well-formed claims for
// audience "piggy" that expire in an hour, random signatures), 700 over
// HTTPS from one address and 300 over mTLS gRPC from another, while real
// pods ask for their secret, each from its own address. It counts the
// TokenReviews the apiserver served, from the apiserver's own metrics.
//
// Before the limits, every junk token cost a TokenReview and a slot of the
// one client-go rate limiter that pod reads and TokenReviews shared: 1,000
// tokens made about 1,000 reviews, no request was refused, and with the
// shared budget exhausted the real pods' reviews failed.
//
// Reproduce the figures: cd services/secret-broker && go test -count=1 -v
// -run TestJunkTokensCostNoTokenReviewsAndDoNotStarveRealPods .
func TestJunkTokensCostNoTokenReviewsAndDoNotStarveRealPods(t *testing.T) {
	const (
		junk       = 1000
		httpsShare = 700
		pods       = 20
		rate       = 20 // --per-source-rate default
		burst      = 50 // --per-source-burst default
	)
	check := func(t *testing.T, res *floodResult, ok int, failures []string, reviews float64, took time.Duration) {
		t.Helper()
		// (a) Each flooding source may cost its burst and its rate while
		// the flood lasts; the real pods one review each.
		bound := 2*(burst+rate*took.Seconds()) + pods
		if reviews > bound {
			t.Errorf("TokenReviews = %.0f for %d junk tokens and %d pods in %s, want at most %.0f (two sources' burst %d and %d/s, and one per pod)",
				reviews, junk, pods, took.Round(time.Millisecond), bound, burst, rate)
		}
		// (b) Real pods got their value during the flood.
		if ok != pods {
			t.Errorf("%d of %d real pods got their value during the flood: %v", ok, pods, failures)
		}
		// (c) The flood was refused with a retry hint on both transports,
		// and nothing else than 401 or 429 came back.
		if res.statuses["HTTP 429"] == 0 || res.httpHint == "" || !res.httpBodyHint {
			t.Errorf("no HTTP 429 with Retry-After and a RetryInfo detail: %v (Retry-After %q)", res.statuses, res.httpHint)
		}
		if res.statuses["gRPC ResourceExhausted"] == 0 || res.grpcHint == "" {
			t.Errorf("no gRPC RESOURCE_EXHAUSTED with a RetryInfo detail: %v", res.statuses)
		}
		for k, n := range res.statuses {
			switch k {
			case "HTTP 401", "HTTP 429", "gRPC Unauthenticated", "gRPC ResourceExhausted":
			default:
				t.Errorf("%d junk requests answered %s", n, k)
			}
		}
		if len(res.errors) > 0 {
			t.Errorf("junk requests without an answer: %v", res.errors)
		}
	}

	t.Run("with the default limits", func(t *testing.T) {
		// The harness turns the per-source limit off for the tests that
		// call from one address; these are its defaults.
		w := newWorld(t, worldOptions{env: []string{"PER_SOURCE_RATE=" + strconv.Itoa(rate), "PER_SOURCE_BURST=" + strconv.Itoa(burst)}})
		ns := w.namespace("team-junk-", "web")
		value := secretValue("junk")
		w.seed(ns+"/web", map[string]string{"db": value})
		real := w.realPods(t, ns, pods)

		rssBefore := metric(w.brokerMetrics(t), "process_resident_memory_bytes")
		before := w.settledTokenReviews(t)
		var answered atomic.Int64
		var (
			ok       int
			failures []string
			done     = make(chan struct{})
		)
		go func() {
			defer close(done)
			ok, failures = duringFlood(t, real, value, &answered, 100)
		}()
		start := time.Now()
		res := w.flood(t, ns, junk, httpsShare, &answered)
		<-done
		took := time.Since(start)
		reviews := w.settledTokenReviews(t) - before
		m := w.brokerMetrics(t)
		rss := metric(m, "process_resident_memory_bytes")
		peak, _ := w.proc.PeakRSS()
		t.Logf("%d junk tokens (%d HTTPS, %d gRPC) and %d real pods in %s: apiserver TokenReviews %.0f; answers %v; Retry-After %q, gRPC RetryInfo %s; real pods OK %d/%d; throttled (broker metric) per_source %.0f in_flight %.0f; broker RSS %.1f MiB before, %.1f MiB after (peak %.1f MiB)",
			junk, httpsShare, junk-httpsShare, pods, took.Round(time.Millisecond), reviews, res.statuses, res.httpHint, res.grpcHint, ok, pods,
			metric(m, "piggy_secret_broker_throttled_total", "limit", "per_source"), metric(m, "piggy_secret_broker_throttled_total", "limit", "in_flight"),
			rssBefore/(1<<20), rss/(1<<20), float64(peak)/(1<<20))
		check(t, res, ok, failures, reviews, took)

		// A junk token sent again is refused without another review (from
		// a fresh address, one request at a time, so that neither the
		// per-source limit nor coalescing explains it).
		// The broker's own count of the reviews it made is recorded before
		// it answers, so it is exact here (the apiserver's may be recorded
		// just after its answer).
		again := forgedToken(ns)
		client := w.httpsFrom(t, "127.0.0.4")
		brokerReviews := func() float64 {
			return metric(w.brokerMetrics(t), "piggy_secret_broker_tokenreview_duration_seconds_count")
		}
		before = brokerReviews()
		for i := range 4 {
			a, err := w.tryGetSecrets(client, again, container{uid: "junk", signature: "junk"}, "db")
			if err != nil || a.Status != http.StatusUnauthorized {
				t.Fatalf("repeated junk token, request %d: %+v, %v", i, a, err)
			}
		}
		if n := brokerReviews() - before; n != 1 {
			t.Errorf("TokenReviews for one junk token sent 4 times = %.0f, want 1", n)
		}
		if hits := metric(w.brokerMetrics(t), "piggy_secret_broker_token_rejections_cached_total"); hits < 3 {
			t.Errorf("rejection cache hits = %.0f, want at least 3", hits)
		}
	})

	t.Run("with a small Kubernetes API budget", func(t *testing.T) {
		// A pod-read budget small enough that, if TokenReviews shared it,
		// the flood would exhaust it within 1,000 tokens on any machine
		// (the defaults of 200/s and 400 take a faster attacker): the
		// real pods' reviews would not get a slot within their deadline.
		w := newWorld(t, worldOptions{env: []string{
			"PER_SOURCE_RATE=" + strconv.Itoa(rate), "PER_SOURCE_BURST=" + strconv.Itoa(burst),
			"KUBE_API_QPS=2", "KUBE_API_BURST=20",
		}})
		ns := w.namespace("team-junk-", "web")
		value := secretValue("junk-budget")
		w.seed(ns+"/web", map[string]string{"db": value})
		real := w.realPods(t, ns, pods)
		before := w.settledTokenReviews(t)
		var answered atomic.Int64
		var (
			ok       int
			failures []string
			done     = make(chan struct{})
		)
		go func() {
			defer close(done)
			ok, failures = duringFlood(t, real, value, &answered, 100)
		}()
		start := time.Now()
		res := w.flood(t, ns, junk, httpsShare, &answered)
		<-done
		took := time.Since(start)
		reviews := w.settledTokenReviews(t) - before
		t.Logf("small budget: %d junk tokens and %d real pods in %s: apiserver TokenReviews %.0f; answers %v; real pods OK %d/%d",
			junk, pods, took.Round(time.Millisecond), reviews, res.statuses, ok, pods)
		check(t, res, ok, failures, reviews, took)
	})
}
