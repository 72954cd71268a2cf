package authn

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/piggysec/piggy/services/secret-broker/internal/cache"
	"github.com/piggysec/piggy/services/secret-broker/internal/fault"
)

// fakeReviewer answers TokenReviews from a table keyed by token.
type fakeReviewer struct {
	calls   atomic.Int64
	delay   time.Duration
	err     error
	answers map[string]authenticationv1.TokenReviewStatus
	gotAud  [][]string
	mu      sync.Mutex
}

func (f *fakeReviewer) Create(ctx context.Context, r *authenticationv1.TokenReview, _ metav1.CreateOptions) (*authenticationv1.TokenReview, error) {
	f.calls.Add(1)
	f.mu.Lock()
	f.gotAud = append(f.gotAud, r.Spec.Audiences)
	f.mu.Unlock()
	if f.delay > 0 {
		time.Sleep(f.delay)
	}
	if f.err != nil {
		return nil, f.err
	}
	out := r.DeepCopy()
	out.Status = f.answers[r.Spec.Token]
	return out, nil
}

// jwt returns an unsigned token with the given expiry (the broker only
// reads exp; the apiserver verifies).
func jwt(exp time.Time) string {
	enc := base64.RawURLEncoding.EncodeToString
	payload, _ := json.Marshal(map[string]any{"exp": exp.Unix(), "aud": []string{"piggy"}, "sub": "system:serviceaccount:team-a:web"})
	return enc([]byte(`{"alg":"RS256"}`)) + "." + enc(payload) + ".c2ln"
}

func boundStatus(ns, sa, pod, uid string) authenticationv1.TokenReviewStatus {
	return authenticationv1.TokenReviewStatus{
		Authenticated: true,
		Audiences:     []string{"piggy"},
		User: authenticationv1.UserInfo{
			Username: "system:serviceaccount:" + ns + ":" + sa,
			Extra:    map[string]authenticationv1.ExtraValue{ExtraPodName: {pod}, ExtraPodUID: {uid}},
		},
	}
}

type fixedClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fixedClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fixedClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newAuth(t *testing.T, r TokenReviewer, clk *fixedClock, mod ...func(*Options)) *Authenticator {
	t.Helper()
	o := Options{Audience: "piggy", CacheTTL: time.Minute, CacheSize: 100, Now: clk.now}
	for _, m := range mod {
		m(&o)
	}
	a, err := New(r, o)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestAuthenticate(t *testing.T) {
	clk := &fixedClock{t: time.Now()}
	good := jwt(clk.t.Add(time.Hour))
	unbound := jwt(clk.t.Add(time.Hour)) + "u"
	user := jwt(clk.t.Add(time.Hour)) + "user"
	wrongAud := jwt(clk.t.Add(time.Hour)) + "aud"
	rejected := jwt(clk.t.Add(time.Hour)) + "bad"
	r := &fakeReviewer{answers: map[string]authenticationv1.TokenReviewStatus{
		good:     boundStatus("team-a", "web", "web-1", "uid-1"),
		unbound:  {Authenticated: true, Audiences: []string{"piggy"}, User: authenticationv1.UserInfo{Username: "system:serviceaccount:team-a:web"}},
		user:     {Authenticated: true, Audiences: []string{"piggy"}, User: authenticationv1.UserInfo{Username: "alice"}},
		wrongAud: {Authenticated: true, Audiences: []string{"https://kubernetes.default.svc"}, User: boundStatus("team-a", "web", "p", "u").User},
		rejected: {Authenticated: false, Error: "token has been invalidated"},
	}}
	tests := []struct {
		name       string
		token      string
		allow      bool
		want       Identity
		wantKind   fault.Kind
		wantReason string
	}{
		{name: "bound", token: good, want: Identity{Namespace: "team-a", ServiceAccount: "web", PodName: "web-1", PodUID: "uid-1"}},
		{name: "missing", token: "", wantKind: fault.Unauthenticated, wantReason: "token_missing"},
		{name: "unbound refused", token: unbound, wantKind: fault.Unauthenticated, wantReason: "token_unbound"},
		{name: "unbound allowed", token: unbound, allow: true, want: Identity{Namespace: "team-a", ServiceAccount: "web"}},
		{name: "not a service account", token: user, wantKind: fault.Unauthenticated, wantReason: "token_not_service_account"},
		{name: "wrong audience", token: wrongAud, wantKind: fault.Unauthenticated, wantReason: "token_audience"},
		{name: "rejected", token: rejected, wantKind: fault.Unauthenticated, wantReason: "token_invalid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAuth(t, r, clk, func(o *Options) { o.AllowUnbound = tt.allow })
			got, _, err := a.Authenticate(t.Context(), tt.token)
			if tt.wantReason != "" {
				fe := fault.As(err)
				if err == nil || fe.Kind != tt.wantKind || fe.Reason != tt.wantReason {
					t.Fatalf("err = %v (%v/%s), want %v/%s", err, fe.Kind, fe.Reason, tt.wantKind, tt.wantReason)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("identity (-want +got):\n%s", diff)
			}
		})
	}
	for _, aud := range r.gotAud {
		if diff := cmp.Diff([]string{"piggy"}, aud); diff != "" {
			t.Errorf("review audiences (-want +got):\n%s", diff)
		}
	}
}

func TestPrecheckSavesReviews(t *testing.T) {
	clk := &fixedClock{t: time.Now()}
	enc := base64.RawURLEncoding.EncodeToString
	tok := func(claims string) string {
		return enc([]byte(`{"alg":"RS256"}`)) + "." + enc([]byte(claims)) + ".c2ln"
	}
	exp := clk.t.Add(time.Hour).Unix()
	tests := []struct {
		name, token, reason string
	}{
		{"not a jwt", "opaque", "token_invalid"},
		{"bad payload", "a.!!!.c", "token_invalid"},
		{"no signature", tok(`{"exp":1}`)[:len(tok(`{"exp":1}`))-4], "token_invalid"},
		{"expired", tok(fmt.Sprintf(`{"exp":%d,"aud":["piggy"]}`, clk.t.Add(-time.Minute).Unix())), "token_invalid"},
		{"no exp", tok(`{"aud":["piggy"]}`), "token_invalid"},
		{"other audience", tok(fmt.Sprintf(`{"exp":%d,"aud":["https://kubernetes.default.svc"]}`, exp)), "token_audience"},
		{"no audience", tok(fmt.Sprintf(`{"exp":%d}`, exp)), "token_audience"},
	}
	r := &fakeReviewer{}
	a := newAuth(t, r, clk)
	for _, tt := range tests {
		if _, _, err := a.Authenticate(t.Context(), tt.token); fault.ReasonOf(err) != tt.reason {
			t.Errorf("%s: err = %v, want %s", tt.name, err, tt.reason)
		}
	}
	if r.calls.Load() != 0 {
		t.Errorf("TokenReviews = %d, want none", r.calls.Load())
	}
	// A string audience is accepted like an array.
	r.answers = map[string]authenticationv1.TokenReviewStatus{}
	single := tok(fmt.Sprintf(`{"exp":%d,"aud":"piggy"}`, exp))
	r.answers[single] = boundStatus("team-a", "web", "p", "u")
	if _, _, err := a.Authenticate(t.Context(), single); err != nil {
		t.Errorf("string aud: %v", err)
	}
}

func TestAPIErrors(t *testing.T) {
	clk := &fixedClock{t: time.Now()}
	tests := []struct {
		name     string
		err      error
		wantKind fault.Kind
	}{
		{"unreachable", errors.New("dial tcp: connection refused"), fault.Unavailable},
		{"throttled", apierrors.NewTooManyRequests("slow down", 1), fault.Unavailable},
		{"forbidden", apierrors.NewForbidden(schema.GroupResource{Group: "authentication.k8s.io", Resource: "tokenreviews"}, "", errors.New("rbac")), fault.Internal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &fakeReviewer{err: tt.err}
			a := newAuth(t, r, clk)
			_, _, err := a.Authenticate(t.Context(), jwt(clk.t.Add(time.Hour)))
			if k := fault.KindOf(err); k != tt.wantKind {
				t.Errorf("kind = %v (%v), want %v", k, err, tt.wantKind)
			}
			// Failures are not cached: the next call reviews again.
			_, _, _ = a.Authenticate(t.Context(), jwt(clk.t.Add(time.Hour)))
			if r.calls.Load() != 2 {
				t.Errorf("reviews = %d, want 2", r.calls.Load())
			}
		})
	}
}

func TestCacheBoundedByTokenExpiry(t *testing.T) {
	clk := &fixedClock{t: time.Now()}
	short := jwt(clk.t.Add(20 * time.Second))
	long := jwt(clk.t.Add(time.Hour))
	noExp := "eyJhbGciOiJSUzI1NiJ9." + base64.RawURLEncoding.EncodeToString([]byte(`{"aud":"piggy"}`)) + ".c2ln"
	r := &fakeReviewer{answers: map[string]authenticationv1.TokenReviewStatus{
		short: boundStatus("team-a", "web", "p", "u"),
		long:  boundStatus("team-a", "web", "p", "u"),
	}}
	a := newAuth(t, r, clk)
	review := func(token string) cache.Result {
		t.Helper()
		_, res, err := a.Authenticate(t.Context(), token)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	review(short)
	review(long)
	// A token without exp is refused before any review.
	if _, _, err := a.Authenticate(t.Context(), noExp); fault.ReasonOf(err) != "token_invalid" || r.calls.Load() != 2 {
		t.Errorf("token without exp: %v after %d reviews", err, r.calls.Load())
	}
	if got := []cache.Result{review(short), review(long)}; !cmp.Equal(got, []cache.Result{cache.Hit, cache.Hit}) {
		t.Errorf("second lookups = %v, want hits", got)
	}
	clk.advance(21 * time.Second) // short expired; long still inside the 1m cap
	if _, _, err := a.Authenticate(t.Context(), short); fault.ReasonOf(err) != "token_invalid" {
		t.Errorf("expired token: %v, want refused", err)
	}
	if got := review(long); got != cache.Hit {
		t.Errorf("after 21s = %v, want hit", got)
	}
	clk.advance(40 * time.Second) // long is past the 1m cap
	if got := review(long); got != cache.Miss {
		t.Errorf("after 61s = %v, want miss (cache cap)", got)
	}
}

func TestConcurrentReviewsOfOneTokenCoalesce(t *testing.T) {
	clk := &fixedClock{t: time.Now()}
	tok := jwt(clk.t.Add(time.Hour))
	r := &fakeReviewer{delay: 50 * time.Millisecond, answers: map[string]authenticationv1.TokenReviewStatus{tok: boundStatus("team-a", "web", "p", "u")}}
	a := newAuth(t, r, clk)
	var wg sync.WaitGroup
	for range 100 {
		wg.Go(func() {
			if _, _, err := a.Authenticate(t.Context(), tok); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if r.calls.Load() != 1 {
		t.Errorf("TokenReviews = %d, want 1", r.calls.Load())
	}
}

func TestExpiry(t *testing.T) {
	exp := time.Unix(1893456000, 0)
	if got, ok := expiry(jwt(exp)); !ok || !got.Equal(exp) {
		t.Errorf("expiry = %v, %v", got, ok)
	}
	for _, bad := range []string{"", "a.b", "a.!!!.c", "a." + base64.RawURLEncoding.EncodeToString([]byte(`{"exp":"soon"}`)) + ".c", "a." + base64.RawURLEncoding.EncodeToString([]byte(`{}`)) + ".c"} {
		if _, ok := expiry(bad); ok {
			t.Errorf("expiry(%q) ok, want not", bad)
		}
	}
}

func TestReviewSpan(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	clk := &fixedClock{t: time.Now()}
	tok := jwt(clk.t.Add(time.Hour))
	r := &fakeReviewer{answers: map[string]authenticationv1.TokenReviewStatus{tok: boundStatus("team-a", "web", "web-1", "uid-1")}}
	a := newAuth(t, r, clk, func(o *Options) { o.Tracer = tp.Tracer("test") })
	if _, _, err := a.Authenticate(t.Context(), tok); err != nil {
		t.Fatal(err)
	}
	spans := rec.Ended()
	if len(spans) != 1 || spans[0].Name() != "TokenReview" {
		t.Fatalf("spans = %v, want one TokenReview span", spans)
	}
	for _, kv := range spans[0].Attributes() {
		if strings.Contains(kv.Value.Emit(), tok) || strings.Contains(kv.Value.Emit(), strings.Split(tok, ".")[1]) {
			t.Errorf("span attribute %s holds the token", kv.Key)
		}
	}
}

func FuzzExpiry(f *testing.F) {
	f.Add(jwt(time.Unix(1893456000, 0)))
	f.Add("a.e30.c")
	f.Add("a." + base64.RawURLEncoding.EncodeToString([]byte(`{"exp":1e400}`)) + ".c")
	f.Add("a." + base64.RawURLEncoding.EncodeToString([]byte(`{"exp":-1}`)) + ".c")
	f.Fuzz(func(t *testing.T, token string) {
		exp, ok := expiry(token) // must not panic
		if ok && exp.Unix() <= 0 {
			t.Errorf("expiry(%q) = %v, ok for a non-positive time", token, exp)
		}
	})
}

func TestRejectionsAreCachedBriefly(t *testing.T) {
	clk := &fixedClock{t: time.Now()}
	junk := jwt(clk.t.Add(time.Hour)) + "forged"
	good := jwt(clk.t.Add(time.Hour))
	r := &fakeReviewer{answers: map[string]authenticationv1.TokenReviewStatus{
		junk: {Authenticated: false, Error: "invalid bearer token"},
		good: boundStatus("team-a", "web", "web-1", "uid-1"),
	}}
	a := newAuth(t, r, clk, func(o *Options) { o.RejectionTTL, o.RejectionSize = 10*time.Second, 100 })
	first, _, err := a.Authenticate(t.Context(), junk)
	if fault.ReasonOf(err) != "token_invalid" {
		t.Fatalf("junk token: %v, %v", first, err)
	}
	for range 50 {
		_, _, again := a.Authenticate(t.Context(), junk)
		if fault.ReasonOf(again) != "token_invalid" || fault.As(again).Message != fault.As(err).Message {
			t.Fatalf("cached rejection = %v, want the same refusal as the first (%v)", again, err)
		}
	}
	if n := r.calls.Load(); n != 1 {
		t.Errorf("TokenReviews for one junk token sent 51 times = %d, want 1", n)
	}
	// Another token is reviewed.
	if _, _, err := a.Authenticate(t.Context(), good); err != nil {
		t.Fatal(err)
	}
	// Briefly: after the TTL the token is reviewed again.
	clk.advance(10 * time.Second)
	if _, _, err := a.Authenticate(t.Context(), junk); fault.ReasonOf(err) != "token_invalid" {
		t.Fatal(err)
	}
	if n := r.calls.Load(); n != 3 {
		t.Errorf("TokenReviews after the rejection expired = %d, want 3", n)
	}
}

func TestRejectionCacheKeepsNoTokenAndIsBounded(t *testing.T) {
	clk := &fixedClock{t: time.Now()}
	r := &fakeReviewer{answers: map[string]authenticationv1.TokenReviewStatus{}}
	a := newAuth(t, r, clk, func(o *Options) { o.RejectionTTL, o.RejectionSize = time.Minute, 8 })
	var tokens []string
	for i := range 20 {
		tok := jwt(clk.t.Add(time.Hour)) + fmt.Sprint(i)
		tokens = append(tokens, tok)
		if _, _, err := a.Authenticate(t.Context(), tok); fault.ReasonOf(err) != "token_invalid" {
			t.Fatal(err)
		}
	}
	if n := a.rejected.len(); n != 8 {
		t.Errorf("rejections held = %d, want the bound 8", n)
	}
	// The oldest were dropped, the newest are still refused without a review.
	before := r.calls.Load()
	for _, tok := range tokens[12:] {
		a.Authenticate(t.Context(), tok)
	}
	if r.calls.Load() != before {
		t.Errorf("the newest 8 rejections were reviewed again")
	}
	a.Authenticate(t.Context(), tokens[0])
	if r.calls.Load() != before+1 {
		t.Errorf("the oldest rejection was not dropped")
	}
	// Keys are hashes: no token, or a part of one, is held in clear.
	a.rejected.mu.Lock()
	defer a.rejected.mu.Unlock()
	for key, e := range a.rejected.entries {
		for _, tok := range tokens {
			if strings.Contains(string(key[:]), strings.Split(tok, ".")[1][:16]) || strings.Contains(e.err.Error(), tok) {
				t.Fatal("a rejection entry holds the token")
			}
		}
	}
}

func TestFailuresToAnswerAreNotCachedAsRejections(t *testing.T) {
	clk := &fixedClock{t: time.Now()}
	tok := jwt(clk.t.Add(time.Hour))
	r := &fakeReviewer{err: apierrors.NewTooManyRequests("slow down", 1)}
	a := newAuth(t, r, clk, func(o *Options) { o.RejectionTTL, o.RejectionSize = time.Minute, 100 })
	if _, _, err := a.Authenticate(t.Context(), tok); fault.KindOf(err) != fault.Unavailable {
		t.Fatal(err)
	}
	// The apiserver recovers: the same token is reviewed and accepted.
	r.err = nil
	r.answers = map[string]authenticationv1.TokenReviewStatus{tok: boundStatus("team-a", "web", "p", "u")}
	if _, _, err := a.Authenticate(t.Context(), tok); err != nil {
		t.Errorf("after an unavailable apiserver: %v, want the token accepted", err)
	}
	// Off when not configured.
	off := newAuth(t, &fakeReviewer{}, clk)
	for range 3 {
		off.Authenticate(t.Context(), tok)
	}
	if off.rejected != nil {
		t.Error("rejection cache on without a TTL and size")
	}
}

// TestAPIAudiences is the review of the original piggy-env's token: the
// pod's default token, for the API server's own audiences. The review asks
// for no audience (the API server's), and a token not bound to a pod is
// refused.
func TestAPIAudiences(t *testing.T) {
	clk := &fixedClock{t: time.Now()}
	enc := base64.RawURLEncoding.EncodeToString
	apiToken := func(tag string) string {
		payload, _ := json.Marshal(map[string]any{"exp": clk.t.Add(time.Hour).Unix(), "aud": []string{"https://kubernetes.default.svc"}})
		return enc([]byte(`{"alg":"RS256"}`)) + "." + enc(payload) + ".c2ln" + tag
	}
	bound, unbound, rejected := apiToken("b"), apiToken("u"), apiToken("r")
	apiStatus := func(st authenticationv1.TokenReviewStatus) authenticationv1.TokenReviewStatus {
		st.Audiences = []string{"https://kubernetes.default.svc"}
		return st
	}
	r := &fakeReviewer{answers: map[string]authenticationv1.TokenReviewStatus{
		bound:    apiStatus(boundStatus("team-a", "web", "web-1", "uid-1")),
		unbound:  apiStatus(authenticationv1.TokenReviewStatus{Authenticated: true, User: authenticationv1.UserInfo{Username: "system:serviceaccount:team-a:web"}}),
		rejected: {Authenticated: false, Error: "token is not for this audience"},
	}}
	a := newAuth(t, r, clk, func(o *Options) { o.Audience, o.APIAudiences = "", true })
	got, _, err := a.Authenticate(t.Context(), bound)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Identity{Namespace: "team-a", ServiceAccount: "web", PodName: "web-1", PodUID: "uid-1"}); got != want {
		t.Errorf("identity = %+v, want %+v", got, want)
	}
	for tok, reason := range map[string]string{unbound: "token_unbound", rejected: "token_invalid"} {
		_, _, err := a.Authenticate(t.Context(), tok)
		if fe := fault.As(err); err == nil || fe.Kind != fault.Unauthenticated || fe.Reason != reason {
			t.Errorf("Authenticate = %v, want %s", err, reason)
		}
	}
	for _, aud := range r.gotAud {
		if len(aud) != 0 {
			t.Errorf("review audiences = %q, want none (the API server's own)", aud)
		}
	}
	// The two modes do not mix.
	for _, o := range []Options{{APIAudiences: true, Audience: "piggy"}, {APIAudiences: true, AllowUnbound: true}} {
		if _, err := New(r, o); err == nil {
			t.Errorf("New(%+v) succeeded", o)
		}
	}
}
