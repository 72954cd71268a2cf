package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/piggysec/piggy/libs/awslocal"
	"github.com/piggysec/piggy/libs/kubetest"
)

// The tests of this file reproduce, through the real broker process, the
// real apiserver's TokenReviews and awslocal over TLS, what a pod could make
// the broker ask of AWS and learn about other tenants' secrets from its
// refusals.

// negativeTTL is the broker's --negative-cache-ttl default; readBurst and
// readInterval are its --pod-aws-read-burst and --pod-aws-read-interval
// defaults.
const (
	negativeTTL  = 30 * time.Second
	readBurst    = 10
	readInterval = 6 * time.Second
)

// reads is the number of GetSecretValue calls awslocal has served.
func (w *world) reads() int {
	return w.aws.Calls(awslocal.ServiceSecretsManager, "GetSecretValue")
}

// podsAsking creates n pods of ns:sa whose one container references db
// from the secret name, each with its token.
func (w *world) podsAsking(t *testing.T, ns, sa, prefix, name string, n int) []caller {
	t.Helper()
	callers := make([]caller, n)
	forEach(t, n, 8, func(i int) error {
		pod, ctr, err := w.createLaunchedPod(ns, fmt.Sprintf("%s-%02d", prefix, i), sa, map[string]string{"aws-secret-name": name}, "db")
		if err != nil {
			return err
		}
		tok, err := kubetest.RequestPodToken(context.Background(), w.cs, pod, audience)
		callers[i] = caller{token: tok, ctr: ctr}
		return err
	})
	return callers
}

// caller is one pod's token and container identity.
type caller struct {
	token string
	ctr   container
}

// rawGetSecrets is getSecrets returning the status and the body bytes as
// the pod receives them.
func (w *world) rawGetSecrets(t testing.TB, c caller, keys ...string) (int, []byte) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"containerUid": c.ctr.uid, "signature": c.ctr.signature, "keys": keys})
	req, err := http.NewRequest(http.MethodPost, "https://"+w.addrs["gateway"]+"/v1/secrets", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.https.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, data
}

// TestDeniedNamesCostNoAWSReads: 50 pods of team-a ask for names outside
// their namespace's rules. With the default --allowed-sa-names (any
// secret's PIGGY_ALLOWED_SA may grant), a missing foreign name is read once
// per --negative-cache-ttl, not once per request (before: 50 reads); with
// the operator narrowing it, names no allow-list may grant are refused
// without any AWS read, while a name it covers is still granted by its
// PIGGY_ALLOWED_SA.
func TestDeniedNamesCostNoAWSReads(t *testing.T) {
	const n = 50
	t.Run("missing foreign name, every allow-list may grant", func(t *testing.T) {
		w := newWorld(t, worldOptions{})
		nsA := w.namespace("team-a-", "web")
		nsB := w.namespace("team-b-", "web")
		callers := w.podsAsking(t, nsA, "web", "probe", nsB+"/no-such-secret", n)
		before, start := w.reads(), time.Now()
		for i, c := range callers {
			got := w.getSecrets(t, c.token, c.ctr, "db")
			if got.Status != http.StatusForbidden || len(got.Values) != 0 {
				t.Fatalf("request %d: %+v, want 403", i, got)
			}
		}
		reads, took := w.reads()-before, time.Since(start)
		bound := 1 + int(took/negativeTTL)
		t.Logf("%d denied requests for a missing foreign secret in %s: %d AWS GetSecretValue calls (bound %d)", n, took.Round(time.Millisecond), reads, bound)
		if reads > bound {
			t.Errorf("AWS reads = %d for %d denied requests, want at most %d (one per %s)", reads, n, bound, negativeTTL)
		}
	})

	t.Run("names no allow-list may grant are not read", func(t *testing.T) {
		w := newWorld(t, worldOptions{args: []string{"--allowed-sa-names=team-shared-*/*"}})
		nsA := w.namespace("team-a-", "web")
		nsB := w.namespace("team-b-", "web")
		shared := w.namespace("team-shared-")
		w.seed(nsB+"/web", map[string]string{"db": secretValue("b")})
		sharedValue := secretValue("shared")
		w.seed(shared+"/db", map[string]string{"db": sharedValue, "PIGGY_ALLOWED_SA": nsA + ":web"})
		existing := w.podsAsking(t, nsA, "web", "existing", nsB+"/web", n/2)
		missing := w.podsAsking(t, nsA, "web", "missing", nsB+"/no-such-secret", n/2)
		before := w.reads()
		for i, c := range append(existing, missing...) {
			if got := w.getSecrets(t, c.token, c.ctr, "db"); got.Status != http.StatusForbidden || len(got.Values) != 0 {
				t.Fatalf("request %d: %+v, want 403", i, got)
			}
		}
		if reads := w.reads() - before; reads != 0 {
			t.Errorf("AWS reads = %d for %d denied requests, want 0", reads, n)
		}
		granted := w.podsAsking(t, nsA, "web", "granted", shared+"/db", 1)[0]
		if got := w.getSecrets(t, granted.token, granted.ctr, "db"); got.Status != http.StatusOK || got.Values["db"] != sharedValue {
			t.Errorf("a name --allowed-sa-names covers, granted by its PIGGY_ALLOWED_SA: %+v", got)
		}
	})
}

// TestCrashLoopOnAMissingSecret: a pod whose secret does not exist starts
// 50 times (its container status says so each
// time, as the kubelet's would) and asks each time. The missing secret is
// remembered for --negative-cache-ttl, so AWS is read once per TTL rather
// than once per start (before: 50 reads); the token is reviewed once.
func TestCrashLoopOnAMissingSecret(t *testing.T) {
	const starts = 50
	w := newWorld(t, worldOptions{})
	ns := w.namespace("team-loop-", "web")
	pod, ctr := w.launchedPod(ns, "loop", "web", nil, "db")
	tok := w.podToken(pod)
	reviewsBefore, readsBefore, start := w.apiserverTokenReviews(t), w.reads(), time.Now()
	for i := range starts {
		w.restart(t, pod)
		got := w.getSecrets(t, tok, ctr, "db")
		if got.Status != http.StatusNotFound || !strings.Contains(got.Message, ns+"/web") {
			t.Fatalf("start %d: %+v, want 404 naming the secret", i, got)
		}
	}
	took := time.Since(start)
	reads, reviews := w.reads()-readsBefore, w.apiserverTokenReviews(t)-reviewsBefore
	rss, err := w.proc.PeakRSS()
	if err != nil {
		t.Fatal(err)
	}
	bound := 1 + int(took/negativeTTL)
	t.Logf("%d starts of a pod whose secret is missing in %s: AWS GetSecretValue calls %d (bound %d), apiserver TokenReviews %.0f, broker peak RSS %.1f MiB",
		starts, took.Round(time.Millisecond), reads, bound, reviews, float64(rss)/(1<<20))
	if reads > bound {
		t.Errorf("AWS reads = %d for %d starts, want at most %d (one per %s)", reads, starts, bound, negativeTTL)
	}
	if reviews > 1 {
		t.Errorf("TokenReviews = %.0f, want at most 1 (the token's review is cached)", reviews)
	}
}

// TestCreatedSecretIsSeenAfterTheNegativeTTL: a missing secret is
// remembered only for --negative-cache-ttl; once created, it is served at
// the latest after that.
func TestCreatedSecretIsSeenAfterTheNegativeTTL(t *testing.T) {
	w := newWorld(t, worldOptions{args: []string{"--negative-cache-ttl=1s"}})
	ns := w.namespace("team-late-", "web")
	pod, ctr := w.launchedPod(ns, "late", "web", nil, "db")
	tok := w.podToken(pod)
	w.restart(t, pod)
	if got := w.getSecrets(t, tok, ctr, "db"); got.Status != http.StatusNotFound {
		t.Fatalf("before the secret exists: %+v, want 404", got)
	}
	value := secretValue("late")
	w.seed(ns+"/web", map[string]string{"db": value})
	deadline := time.Now().Add(60 * time.Second)
	for i := 1; ; i++ {
		w.restart(t, pod)
		got := w.getSecrets(t, tok, ctr, "db")
		if got.Status == http.StatusOK && got.Values["db"] == value {
			break
		}
		if got.Status != http.StatusNotFound || time.Now().After(deadline) {
			t.Fatalf("after the secret was created: %+v, want 404 then the value", got)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestPodAWSReadBudget: one pod that makes the broker read AWS on every
// request (here: a 1ns cache TTL) gets --pod-aws-read-burst reads, then one
// per --pod-aws-read-interval, and otherwise a 503 naming the limit with
// no AWS call (before: one AWS read per request); another pod is not
// starved.
func TestPodAWSReadBudget(t *testing.T) {
	const requests = 40
	w := newWorld(t, worldOptions{args: []string{"--secret-cache-ttl=1ns", "--stale-if-error=0s"}})
	ns := w.namespace("team-budget-", "web")
	value := secretValue("budget")
	w.seed(ns+"/web", map[string]string{"db": value})
	pod, ctr := w.launchedPod(ns, "greedy", "web", nil, "db")
	tok := w.podToken(pod)
	before, start := w.reads(), time.Now()
	limited := 0
	for i := range requests {
		w.restart(t, pod)
		got := w.getSecrets(t, tok, ctr, "db")
		switch {
		case got.Status == http.StatusOK && got.Values["db"] == value:
		case got.Status == http.StatusServiceUnavailable:
			want := fmt.Sprintf("pod %s/greedy has used its AWS reads: at most %d at once and one more every %s (the broker's --pod-aws-read-burst and --pod-aws-read-interval); retry later", ns, readBurst, readInterval)
			if got.Message != want || len(got.Values) != 0 {
				t.Fatalf("request %d: %+v, want 503 %q", i, got, want)
			}
			limited++
		default:
			t.Fatalf("request %d: %+v", i, got)
		}
	}
	reads, took := w.reads()-before, time.Since(start)
	bound := readBurst + int(took/readInterval) + 1
	t.Logf("%d requests each needing an AWS read in %s: %d AWS reads (bound %d), %d refused by the pod's budget", requests, took.Round(time.Millisecond), reads, bound, limited)
	if reads > bound || reads+limited != requests {
		t.Errorf("AWS reads = %d and %d refusals for %d requests, want at most %d reads and the rest refused", reads, limited, requests, bound)
	}
	other, otherCtr := w.launchedPod(ns, "other", "web", nil, "db")
	if got := w.getSecrets(t, w.podToken(other), otherCtr, "db"); got.Status != http.StatusOK {
		t.Errorf("another pod: %+v, want its own budget", got)
	}
}

// TestFakeRegionsDoNotLockOutARealRegion: before, the broker kept clients
// for the first 64 regions any pod named and refused every other, so 64
// pods with made-up aws-region values locked every tenant out of regions
// not yet used. Regions now come from the operator (the broker's own and
// --aws-regions): a made-up one is refused with InvalidArgument naming the
// allowed regions, without an AWS call, and the real region keeps working
// however many made-up ones were tried.
func TestFakeRegionsDoNotLockOutARealRegion(t *testing.T) {
	const fakes = 70
	w := newWorld(t, worldOptions{})
	ns := w.namespace("team-region-", "web")
	value := secretValue("region")
	w.seed(ns+"/web", map[string]string{"db": value})
	callers := make([]caller, fakes)
	forEach(t, fakes, 8, func(i int) error {
		region := fmt.Sprintf("zz-fake-%d", i)
		pod, ctr, err := w.createLaunchedPod(ns, fmt.Sprintf("fake-%02d", i), "web", map[string]string{"aws-region": region}, "db")
		if err != nil {
			return err
		}
		tok, err := kubetest.RequestPodToken(context.Background(), w.cs, pod, audience)
		callers[i] = caller{token: tok, ctr: ctr}
		return err
	})
	before, wrong := w.reads(), 0
	for i, c := range callers {
		got := w.getSecrets(t, c.token, c.ctr, "db")
		want := fmt.Sprintf("region %q is not served by this broker; it reads %s (the operator's --aws-regions and its own region)", fmt.Sprintf("zz-fake-%d", i), awsRegion)
		if got.Status != http.StatusBadRequest || got.Message != want || len(got.Values) != 0 {
			if wrong++; wrong == 1 {
				t.Errorf("made-up region %d: %+v, want 400 %q", i, got, want)
			}
		}
	}
	if wrong > 0 {
		t.Errorf("%d of %d made-up regions were not refused as such", wrong, fakes)
	}
	if reads := w.reads() - before; reads != 0 {
		t.Errorf("AWS reads for made-up regions = %d, want 0", reads)
	}
	pod, ctr := w.launchedPod(ns, "real", "web", nil, "db")
	if got := w.getSecrets(t, w.podToken(pod), ctr, "db"); got.Status != http.StatusOK || got.Values["db"] != value {
		t.Errorf("the broker's own region after %d made-up ones: %+v, want the value", fakes, got)
	}
}

// TestOneRefusalForForeignSecrets is the existence oracle closed: a pod of
// team-a asks for one name of team-b while it is a secret without
// PIGGY_ALLOWED_SA, one whose PIGGY_ALLOWED_SA lists someone else, one
// whose PIGGY_ALLOWED_SA is not a string, and missing. Each answer is
// byte-identical (before: "PIGGY_ALLOWED_SA does not list ..." told the
// allow-list apart); the broker's log says which it was.
func TestOneRefusalForForeignSecrets(t *testing.T) {
	// Every request reads AWS again, so each state below is the one AWS has.
	w := newWorld(t, worldOptions{args: []string{"--secret-cache-ttl=1ns", "--stale-if-error=0s"}})
	nsA := w.namespace("team-a-", "web")
	nsB := w.namespace("team-b-", "web")
	name := nsB + "/probed"
	b, _ := json.Marshal(map[string]any{"db": secretValue("probed"), "PIGGY_ALLOWED_SA": map[string]string{"not": "a string"}})
	states := []struct {
		name, detail string
		set          func()
	}{
		{"no PIGGY_ALLOWED_SA", "is neither the default secret", func() { w.seed(name, map[string]string{"db": secretValue("plain")}) }},
		{"PIGGY_ALLOWED_SA listing another", "PIGGY_ALLOWED_SA does not list " + nsA + ":web", func() {
			w.seed(name, map[string]string{"db": secretValue("listed"), "PIGGY_ALLOWED_SA": nsB + ":web"})
		}},
		{"PIGGY_ALLOWED_SA not a string", "PIGGY_ALLOWED_SA is not a string", func() {
			if _, err := w.aws.PutSecretString(name, string(b)); err != nil {
				t.Fatal(err)
			}
		}},
		{"missing", "not found", func() {
			if err := w.aws.InjectFault(awslocal.Fault{Service: awslocal.ServiceSecretsManager, Operation: "GetSecretValue", Kind: awslocal.FaultError,
				Code: "ResourceNotFoundException", Message: "Secrets Manager can't find the specified secret.", Times: 1}); err != nil {
				t.Fatal(err)
			}
		}},
	}
	callers := w.podsAsking(t, nsA, "web", "probe", name, len(states))
	var first []byte
	for i, st := range states {
		st.set()
		status, body := w.rawGetSecrets(t, callers[i], "db")
		t.Logf("%s: HTTP %d %s", st.name, status, body)
		if status != http.StatusForbidden {
			t.Errorf("%s: HTTP %d, want 403", st.name, status)
		}
		if first == nil {
			first = body
		} else if !bytes.Equal(body, first) {
			t.Errorf("%s: the refusal differs from the first:\n%s\n%s", st.name, body, first)
		}
		pod := fmt.Sprintf("probe-%02d", i)
		rec := w.proc.WaitForRecord(t, 10*time.Second, func(r map[string]any) bool {
			return r["pod_name"] == pod && r["reason"] == "policy_denied"
		})
		if e, _ := rec["error"].(string); !strings.Contains(e, st.detail) {
			t.Errorf("%s: the log line's error %q does not say %q", st.name, e, st.detail)
		}
	}
}

// TestSecretCacheByteBound: with --secret-cache-bytes, the cached values'
// sizes stay within the bound (least recently used first out) instead of
// only the entry count bounding them.
func TestSecretCacheByteBound(t *testing.T) {
	const (
		secrets = 8
		size    = 60 << 10 // just under Secrets Manager's 64 KiB
		bound   = 256 << 10
	)
	w := newWorld(t, worldOptions{args: []string{fmt.Sprintf("--secret-cache-bytes=%d", bound)}})
	ns := w.namespace("team-big-", "web")
	callers := make([]caller, secrets)
	for i := range secrets {
		name := fmt.Sprintf("%s/big-%d", ns, i)
		w.seed(name, map[string]string{"db": secretValue("big"), "filler": strings.Repeat("x", size)})
		callers[i] = w.podsAsking(t, ns, "web", fmt.Sprintf("big%d", i), name, 1)[0]
	}
	read := func(i int) {
		t.Helper()
		if got := w.getSecrets(t, callers[i].token, callers[i].ctr, "db"); got.Status != http.StatusOK {
			t.Fatalf("secret %d: %+v", i, got)
		}
	}
	for i := range secrets {
		read(i)
	}
	m := w.brokerMetrics(t)
	held := metric(m, "piggy_secret_broker_cache_bytes", "cache", "secrets")
	evictions := metric(m, "piggy_secret_broker_cache_evictions_total", "cache", "secrets")
	entries := metric(m, "piggy_secret_broker_cache_entries", "cache", "secrets")
	t.Logf("%d secrets of %d KiB read: cache holds %.0f entries, %.0f bytes (bound %d), %.0f evictions", secrets, size>>10, entries, held, bound, evictions)
	if held > bound || held < size || evictions < secrets-bound/size {
		t.Errorf("cache bytes %.0f, evictions %.0f; want at most %d bytes and at least %d evictions", held, evictions, bound, secrets-bound/size)
	}
	// The least recently used went first: the first secret is read again.
	before := w.reads()
	read(0)
	if n := w.reads() - before; n != 1 {
		t.Errorf("AWS reads of the evicted first secret = %d, want 1", n)
	}
}
