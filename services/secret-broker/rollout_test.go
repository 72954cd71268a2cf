package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/piggysec/piggy/libs/awslocal"
	"github.com/piggysec/piggy/libs/kubetest"
)

// TestRolloutOf500Pods is issue 4's second benchmark, as a test with
// assertions on counts (never on time): 500 new pods of one workload ask for
// the same secret at once, each over its own connection with its own
// pod-bound token. AWS must be read once and the apiserver asked for at
// most one TokenReview per token; a second wave costs neither.
func TestRolloutOf500Pods(t *testing.T) {
	const pods = 500
	w := newWorld(t, worldOptions{})
	ns := w.namespace("rollout-", "web")
	value := secretValue("rollout")
	w.seed(ns+"/web", map[string]string{"db": value})

	type caller struct {
		token string
		ctr   container
	}
	callers := make([]caller, pods)
	start := time.Now()
	forEach(t, pods, 16, func(i int) error {
		pod, ctr, err := w.createLaunchedPod(ns, fmt.Sprintf("web-%03d", i), "web", nil, "db")
		if err != nil {
			return err
		}
		tok, err := kubetest.RequestPodToken(context.Background(), w.cs, pod, audience)
		callers[i] = caller{token: tok, ctr: ctr}
		return err
	})
	t.Logf("created %d pods and tokens in %s", pods, time.Since(start).Round(time.Millisecond))

	wave := func(name string) {
		t.Helper()
		reviewsBefore := w.apiserverTokenReviews(t)
		leasesBefore := w.apiserverLeaseRequests(t)
		readsBefore := w.aws.Calls(awslocal.ServiceSecretsManager, "GetSecretValue")
		loadsBefore := metric(w.brokerMetrics(t), "piggy_secret_broker_cache_misses_total", "cache", "secrets")
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(w.ca.CertPEM)
		statuses := make([]int, pods)
		latencies := make([]time.Duration, pods)
		release := make(chan struct{})
		var wg sync.WaitGroup
		for i := range pods {
			wg.Go(func() {
				// One connection per pod, as each piggy-env process has its own.
				client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
				defer client.CloseIdleConnections()
				<-release
				t0 := time.Now()
				a, err := w.tryGetSecrets(client, callers[i].token, callers[i].ctr, "db")
				latencies[i] = time.Since(t0)
				if err != nil {
					t.Errorf("pod %d: %v", i, err)
					return
				}
				statuses[i] = a.Status
				if a.Status == http.StatusOK && a.Values["db"] != value {
					t.Errorf("pod %d got a wrong value", i)
				}
			})
		}
		t0 := time.Now()
		close(release)
		wg.Wait()
		took := time.Since(t0)
		ok := 0
		for _, s := range statuses {
			if s == http.StatusOK {
				ok++
			}
		}
		reads := w.aws.Calls(awslocal.ServiceSecretsManager, "GetSecretValue") - readsBefore
		reviews := w.apiserverTokenReviews(t) - reviewsBefore
		leases := w.apiserverLeaseRequests(t)
		for verb := range leases {
			leases[verb] -= leasesBefore[verb]
		}
		slices.Sort(latencies)
		rss := metric(w.brokerMetrics(t), "process_resident_memory_bytes") / (1 << 20)
		t.Logf("%s: %d/%d OK in %s; AWS GetSecretValue calls: %d; apiserver TokenReviews: %.0f for %d distinct tokens; start claim Leases: %.0f creates, %.0f gets, %.0f deletes; latency p50 %s p99 %s max %s; broker RSS after %.1f MiB",
			name, ok, pods, took.Round(time.Millisecond), reads, reviews, pods, leases["POST"], leases["GET"], leases["DELETE"],
			latencies[pods/2].Round(time.Millisecond), latencies[pods*99/100].Round(time.Millisecond), latencies[pods-1].Round(time.Millisecond), rss)
		if leases["POST"] != pods {
			t.Errorf("%s: %.0f Lease creates, want one per container start (%d)", name, leases["POST"], pods)
		}
		if ok != pods {
			t.Errorf("%s: %d of %d requests succeeded", name, ok, pods)
		}
		// One load of the secret for the whole wave (the SDK may retry an
		// attempt that outlasts its timeout on a busy machine, so AWS may
		// see two calls for that one load).
		loads := metric(w.brokerMetrics(t), "piggy_secret_broker_cache_misses_total", "cache", "secrets") - loadsBefore
		if want := map[bool]float64{true: 1, false: 0}[name == "first wave"]; loads != want || name != "first wave" && reads != 0 {
			t.Errorf("%s: secret loads = %.0f (AWS reads %d), want %.0f", name, loads, reads, want)
		}
		if maxReviews := map[bool]float64{true: pods, false: 0}[name == "first wave"]; reviews > maxReviews {
			t.Errorf("%s: TokenReviews = %.0f, want at most %.0f", name, reviews, maxReviews)
		}
	}
	wave("first wave")
	// Every container restarts (the kubelet reports restartCount 1) and its
	// new piggy-env process asks again: once-per-start answers a start
	// once, so the second wave is the next start of each pod.
	forEach(t, pods, 16, func(i int) error {
		pod, err := w.cs.CoreV1().Pods(ns).Get(context.Background(), fmt.Sprintf("web-%03d", i), metav1.GetOptions{})
		if err != nil {
			return err
		}
		w.restart(t, pod) // status reported: restart 0
		w.restart(t, pod) // restart 1
		callers[i].ctr = callers[i].ctr.nextFetch()
		return nil
	})
	wave("second wave (warm caches)")

	m := w.brokerMetrics(t)
	t.Logf("broker: TokenReviews %.0f, token cache hits %.0f coalesced %.0f, secret cache misses %.0f hits %.0f coalesced %.0f, pod lookups informer %.0f api %.0f",
		metric(m, "piggy_secret_broker_tokenreview_duration_seconds_count"),
		metric(m, "piggy_secret_broker_cache_hits_total", "cache", "token_reviews"),
		metric(m, "piggy_secret_broker_cache_coalesced_total", "cache", "token_reviews"),
		metric(m, "piggy_secret_broker_cache_misses_total", "cache", "secrets"),
		metric(m, "piggy_secret_broker_cache_hits_total", "cache", "secrets"),
		metric(m, "piggy_secret_broker_cache_coalesced_total", "cache", "secrets"),
		metric(m, "piggy_secret_broker_pod_lookups_total", "source", "informer"),
		metric(m, "piggy_secret_broker_pod_lookups_total", "source", "api"))
}

// forEach runs f(0..n-1) on workers goroutines and fails t on errors.
func forEach(t *testing.T, n, workers int, f func(i int) error) {
	t.Helper()
	next := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range workers {
		wg.Go(func() {
			for i := range next {
				if err := f(i); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		t.Fatal(firstErr)
	}
}
