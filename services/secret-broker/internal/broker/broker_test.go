package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/piggysec/piggy/libs/logging"
	"github.com/piggysec/piggy/libs/podgrant"
	"github.com/piggysec/piggy/libs/podidentity"
	"github.com/piggysec/piggy/libs/podsettings"
	"github.com/piggysec/piggy/services/secret-broker/internal/authn"
	"github.com/piggysec/piggy/services/secret-broker/internal/awssecrets"
	"github.com/piggysec/piggy/services/secret-broker/internal/cache"
	"github.com/piggysec/piggy/services/secret-broker/internal/fault"
	"github.com/piggysec/piggy/services/secret-broker/internal/podcheck"
	"github.com/piggysec/piggy/services/secret-broker/internal/policy"
)

// Values seeded in the fake AWS; none may appear in a log line.
const (
	valueDB   = "db-password-7f3a"
	valueAPI  = "api-key-91bc"
	valueTeam = "team-b-secret-55d2"
)

// fakeAuth maps tokens to identities ("pod:<ns>:<sa>:<pod>").
type fakeAuth struct{}

func (fakeAuth) Authenticate(_ context.Context, token string) (authn.Identity, cache.Result, error) {
	parts := strings.Split(token, ":")
	if len(parts) != 4 || parts[0] != "pod" {
		return authn.Identity{}, cache.Miss, fault.New(fault.Unauthenticated, "token_invalid", "bad token")
	}
	return authn.Identity{Namespace: parts[1], ServiceAccount: parts[2], PodName: parts[3], PodUID: "uid-" + parts[3]}, cache.Hit, nil
}
func (fakeAuth) Stats() cache.Stats { return cache.Stats{} }

// grantedKeys are the keys fakeChecker's containers were admitted with.
var grantedKeys = []string{"db", "port", "missing", "PIGGY_UID"}

// Admitted grants a container the keys of its literal piggy: env values;
// one without is not launched.
func (f fakeChecker) Admitted(pod *corev1.Pod, container string) (podgrant.Grant, error) {
	var keys []string
	for _, c := range append(slices.Clone(pod.Spec.InitContainers), pod.Spec.Containers...) {
		for _, e := range c.Env {
			if k, ok := podgrant.Reference(e.Name, e.Value); ok && c.Name == container {
				keys = append(keys, k)
			}
		}
	}
	if len(keys) == 0 {
		return podgrant.Grant{}, fault.New(fault.PermissionDenied, "container_uid_mismatch", "not launched")
	}
	s := podsettings.Read(pod.Annotations, f.defaults).Settings
	return podgrant.New(s.GrantSource(pod.Namespace, pod.Spec.ServiceAccountName), s.EnforceIntegrity, s.EnforceServiceAccount, keys), nil
}

// fakeChecker returns the settings of pods by name from their annotations.
type fakeChecker struct {
	annotations map[string]map[string]string
	defaults    podsettings.Defaults
}

func (f fakeChecker) Check(_ context.Context, id authn.Identity, ctr podcheck.Container) (podcheck.Result, error) {
	if ctr.UID != "good-uid" {
		return podcheck.Result{}, fault.New(fault.PermissionDenied, "container_uid_mismatch", "bad uid")
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: id.Namespace, Name: id.PodName}}
	s := podsettings.Read(f.annotations[id.PodName], f.defaults).Settings
	grant := podgrant.New(s.GrantSource(id.Namespace, id.ServiceAccount), s.EnforceIntegrity, s.EnforceServiceAccount, grantedKeys)
	return podcheck.Result{Pod: pod, ContainerName: "app", Settings: s, Grant: grant}, nil
}

// fakeFetcher serves secrets by source key and counts reads.
type fakeFetcher struct {
	mu      sync.Mutex
	secrets map[string]*awssecrets.Secret
	errs    map[string]error
	reads   atomic.Int64
	delay   time.Duration
}

func (f *fakeFetcher) Fetch(ctx context.Context, src awssecrets.Source) (*awssecrets.Secret, error) {
	f.reads.Add(1)
	if f.delay > 0 {
		select {
		case <-time.After(f.delay):
		case <-ctx.Done():
			return nil, fault.Wrap(ctx.Err(), fault.Unavailable, "aws_timeout", "timeout")
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err, ok := f.errs[src.Name()]; ok {
		return nil, err
	}
	if s, ok := f.secrets[src.Name()]; ok {
		return s, nil
	}
	return nil, fault.New(fault.NotFound, "secret_not_found", "%s not found in region %s", src, src.Region)
}

func secretOf(kv map[string]string) *awssecrets.Secret {
	s := &awssecrets.Secret{Values: map[string]logging.Secret{}, Invalid: map[string]string{}}
	for k, v := range kv {
		s.Values[k] = logging.Secret(v)
	}
	return s
}

type setup struct {
	b       *Broker
	fetcher *fakeFetcher
	checker fakeChecker
	logs    *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func (s *syncBuffer) records(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(s.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

func newSetup(t *testing.T, mod ...func(*Options, *fakeChecker)) *setup {
	t.Helper()
	f := &fakeFetcher{secrets: map[string]*awssecrets.Secret{
		"team-a/web":    secretOf(map[string]string{"db": valueDB, "api": valueAPI, "PIGGY_UID": "x", "port": "5432"}),
		"team-a/shared": secretOf(map[string]string{"db": valueDB, "PIGGY_ALLOWED_SA": "team-a:api"}),
		"team-b/web":    secretOf(map[string]string{"db": valueTeam}),
		"team-b/grant":  secretOf(map[string]string{"db": valueTeam, "PIGGY_ALLOWED_SA": " team-c:x , team-a:web"}),
		"/team-a/app":   secretOf(map[string]string{"db": valueDB}),
	}, errs: map[string]error{}}
	checker := fakeChecker{annotations: map[string]map[string]string{}}
	opts := Options{
		Rules:         policy.Rules{SecretsManager: policy.DefaultSecretsManagerPatterns, SSM: policy.DefaultSSMPatterns, AllowListGrants: policy.DefaultAllowListGrants},
		Regions:       []string{"eu-west-3", "us-east-1"},
		DefaultRegion: "eu-west-3",
		Cache:         cache.Options{Capacity: 100, TTL: time.Minute},
	}
	for _, m := range mod {
		m(&opts, &checker)
	}
	logs := &syncBuffer{}
	opts.Log = logging.New(logs, logging.Options{})
	b, err := New(fakeAuth{}, checker, f, nil, opts)
	if err != nil {
		t.Fatal(err)
	}
	return &setup{b: b, fetcher: f, checker: checker, logs: logs}
}

func annotate(pod string, kv ...string) func(*Options, *fakeChecker) {
	return func(_ *Options, c *fakeChecker) {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[podsettings.Prefix+kv[i]] = kv[i+1]
		}
		c.annotations[pod] = m
	}
}

func req(token string, keys ...string) Request {
	return Request{Token: token, ContainerUID: "good-uid", Signature: "sig", Keys: keys}
}

func TestGetSecrets(t *testing.T) {
	tests := []struct {
		name       string
		mod        []func(*Options, *fakeChecker)
		req        Request
		want       Response
		wantKind   fault.Kind
		wantReason string
	}{
		{
			name: "default secret, only the requested keys",
			req:  req("pod:team-a:web:web-1", "db", "port", "missing", "PIGGY_UID"),
			want: Response{Values: map[string]logging.Secret{"db": valueDB, "port": "5432"}, Missing: []string{"PIGGY_UID", "missing"}, SourceName: "team-a/web"},
		},
		{
			name: "annotated secret inside the namespace policy",
			mod:  []func(*Options, *fakeChecker){annotate("web-1", podsettings.AWSSecretName, "team-a/shared")},
			req:  req("pod:team-a:api:web-1", "db"),
			want: Response{Values: map[string]logging.Secret{"db": valueDB}, SourceName: "team-a/shared"},
		},
		{
			name: "PIGGY_ALLOWED_SA restricts a secret of the namespace",
			mod:  []func(*Options, *fakeChecker){annotate("web-1", podsettings.AWSSecretName, "team-a/shared")},
			req:  req("pod:team-a:web:web-1", "db"), wantKind: fault.PermissionDenied, wantReason: "policy_denied",
		},
		{
			name: "secret of another namespace",
			mod:  []func(*Options, *fakeChecker){annotate("web-1", podsettings.AWSSecretName, "team-b/web")},
			req:  req("pod:team-a:web:web-1", "db"), wantKind: fault.PermissionDenied, wantReason: "policy_denied",
		},
		{
			name: "missing secret of another namespace looks denied, not missing",
			mod:  []func(*Options, *fakeChecker){annotate("web-1", podsettings.AWSSecretName, "team-b/nothing")},
			req:  req("pod:team-a:web:web-1", "db"), wantKind: fault.PermissionDenied, wantReason: "policy_denied",
		},
		{
			name: "PIGGY_ALLOWED_SA grants a secret of another namespace",
			mod:  []func(*Options, *fakeChecker){annotate("web-1", podsettings.AWSSecretName, "team-b/grant")},
			req:  req("pod:team-a:web:web-1", "db"),
			want: Response{Values: map[string]logging.Secret{"db": valueTeam}, SourceName: "team-b/grant"},
		},
		{
			name: "enforce-service-account without a list",
			mod:  []func(*Options, *fakeChecker){annotate("web-1", podsettings.EnforceServiceAccount, "true")},
			req:  req("pod:team-a:web:web-1", "db"), wantKind: fault.PermissionDenied, wantReason: "policy_denied",
		},
		{
			name: "enforce-service-account with a listing list",
			mod:  []func(*Options, *fakeChecker){annotate("web-1", podsettings.AWSSecretName, "team-b/grant", podsettings.EnforceServiceAccount, "true")},
			req:  req("pod:team-a:web:web-1", "db"),
			want: Response{Values: map[string]logging.Secret{"db": valueTeam}, SourceName: "team-b/grant"},
		},
		{
			name: "a pod-chosen prefix does not widen the default name",
			mod:  []func(*Options, *fakeChecker){annotate("web-1", podsettings.DefaultSecretNamePrefix, "team-b/")},
			req:  req("pod:team-a:web:web-1", "db"), wantKind: fault.PermissionDenied, wantReason: "policy_denied",
		},
		{
			name: "missing secret of the namespace",
			mod:  []func(*Options, *fakeChecker){annotate("web-1", podsettings.AWSSecretName, "team-a/nothing")},
			req:  req("pod:team-a:web:web-1", "db"), wantKind: fault.NotFound, wantReason: "secret_not_found",
		},
		{
			name: "ssm path of the namespace",
			mod:  []func(*Options, *fakeChecker){annotate("web-1", podsettings.AWSSSMParameterPath, "/team-a/app")},
			req:  req("pod:team-a:web:web-1", "db"),
			want: Response{Values: map[string]logging.Secret{"db": valueDB}, SourceName: "/team-a/app"},
		},
		{
			name: "ssm path of another namespace",
			mod:  []func(*Options, *fakeChecker){annotate("web-1", podsettings.AWSSSMParameterPath, "/team-b/app")},
			req:  req("pod:team-a:web:web-1", "db"), wantKind: fault.PermissionDenied, wantReason: "policy_denied",
		},
		{name: "bad token", req: req("nope", "db"), wantKind: fault.Unauthenticated, wantReason: "token_invalid"},
		{name: "no keys", req: req("pod:team-a:web:web-1"), wantKind: fault.InvalidArgument, wantReason: "invalid_request"},
		{name: "empty key", req: req("pod:team-a:web:web-1", ""), wantKind: fault.InvalidArgument, wantReason: "invalid_request"},
		{name: "key the container was not admitted with", req: req("pod:team-a:web:web-1", "db", "api"), wantKind: fault.PermissionDenied, wantReason: "key_not_granted"},
		{name: "wrong container", req: Request{Token: "pod:team-a:web:web-1", ContainerUID: "bad", Keys: []string{"db"}}, wantKind: fault.PermissionDenied, wantReason: "container_uid_mismatch"},
		{
			name: "bad region annotation",
			mod:  []func(*Options, *fakeChecker){annotate("web-1", podsettings.AWSRegion, "mars")},
			req:  req("pod:team-a:web:web-1", "db"), wantKind: fault.InvalidArgument, wantReason: "invalid_region",
		},
		{
			name: "no region at all",
			mod:  []func(*Options, *fakeChecker){func(o *Options, _ *fakeChecker) { o.DefaultRegion = "" }},
			req:  req("pod:team-a:web:web-1", "db"), wantKind: fault.InvalidArgument, wantReason: "invalid_region",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSetup(t, tt.mod...)
			got, err := s.b.GetSecrets(t.Context(), tt.req)
			if tt.wantReason != "" {
				fe := fault.As(err)
				if err == nil || fe.Kind != tt.wantKind || fe.Reason != tt.wantReason {
					t.Fatalf("err = %v (%v/%s), want %v/%s", err, fe.Kind, fe.Reason, tt.wantKind, tt.wantReason)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(tt.want, got); diff != "" {
					t.Errorf("response (-want +got):\n%s", diff)
				}
			}
			for _, v := range []string{valueDB, valueAPI, valueTeam} {
				if strings.Contains(s.logs.String(), v) || err != nil && strings.Contains(err.Error(), v) {
					t.Errorf("a secret value leaked into the logs or the error:\n%s\n%v", s.logs, err)
				}
			}
		})
	}
}

func TestRequestLogLines(t *testing.T) {
	s := newSetup(t, annotate("web-2", podsettings.AWSSecretName, "team-b/web"))
	if _, err := s.b.GetSecrets(t.Context(), req("pod:team-a:web:web-1", "db")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.b.GetSecrets(t.Context(), req("pod:team-a:web:web-2", "db")); err == nil {
		t.Fatal("team-b/web was served to team-a")
	}
	recs := s.logs.records(t)
	if len(recs) != 2 {
		t.Fatalf("log records = %d, want 2:\n%s", len(recs), s.logs)
	}
	pick := func(r map[string]any, keys ...string) map[string]any {
		out := map[string]any{}
		for _, k := range keys {
			out[k] = r[k]
		}
		return out
	}
	keys := []string{"level", "message", "namespace", "pod_name", "service_account", "secret_name", "reason"}
	want := []map[string]any{
		{"level": "info", "message": "Request from [sa=team-a:web], [pod=web-1] was successful", "namespace": "team-a", "pod_name": "web-1", "service_account": "web", "secret_name": "team-a/web", "reason": nil},
		{"level": "warn", "message": "Request from [sa=team-a:web], [pod=web-2] failed", "namespace": "team-a", "pod_name": "web-2", "service_account": "web", "secret_name": "team-b/web", "reason": "policy_denied"},
	}
	for i := range want {
		if diff := cmp.Diff(want[i], pick(recs[i], keys...)); diff != "" {
			t.Errorf("record %d (-want +got):\n%s", i, diff)
		}
	}
}

func TestAuthorisationRunsOnEveryRequest(t *testing.T) {
	// team-a reads team-a/web into the cache; team-b asking for the same
	// name must still be refused.
	s := newSetup(t, annotate("intruder", podsettings.AWSSecretName, "team-a/web"))
	if _, err := s.b.GetSecrets(t.Context(), req("pod:team-a:web:web-1", "db")); err != nil {
		t.Fatal(err)
	}
	_, err := s.b.GetSecrets(t.Context(), req("pod:team-b:web:intruder", "db"))
	if fault.ReasonOf(err) != "policy_denied" {
		t.Errorf("err = %v, want policy_denied from a warm cache", err)
	}
	if s.fetcher.reads.Load() != 1 {
		t.Errorf("AWS reads = %d, want 1", s.fetcher.reads.Load())
	}
}

func TestConcurrentRequestsShareOneRead(t *testing.T) {
	s := newSetup(t)
	s.fetcher.delay = 50 * time.Millisecond
	var wg sync.WaitGroup
	for i := range 500 {
		wg.Go(func() {
			if _, err := s.b.GetSecrets(t.Context(), req("pod:team-a:web:web-"+string(rune('a'+i%26)), "db")); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := s.fetcher.reads.Load(); n != 1 {
		t.Errorf("AWS reads = %d, want 1", n)
	}
	sec, _ := s.b.CacheStats()
	if sec.Misses != 1 || sec.Hits+sec.Coalesced != 499 {
		t.Errorf("cache stats = %+v", sec)
	}
}

func TestTransientErrorsAreNotHidden(t *testing.T) {
	s := newSetup(t, annotate("web-1", podsettings.AWSSecretName, "team-b/web"))
	s.fetcher.errs["team-b/web"] = fault.New(fault.Unavailable, "aws_throttled", "throttled")
	_, err := s.b.GetSecrets(t.Context(), req("pod:team-a:web:web-1", "db"))
	if fault.KindOf(err) != fault.Unavailable {
		t.Errorf("err = %v, want Unavailable (retryable)", err)
	}
}

func TestStaleIfError(t *testing.T) {
	now := time.Now()
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s := newSetup(t, func(o *Options, _ *fakeChecker) {
		o.Now = clock
		o.Cache.StaleIfError = time.Minute
	})
	if _, err := s.b.GetSecrets(t.Context(), req("pod:team-a:web:web-1", "db")); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	now = now.Add(90 * time.Second)
	mu.Unlock()
	s.fetcher.errs["team-a/web"] = fault.New(fault.Unavailable, "aws_unavailable", "down")
	got, err := s.b.GetSecrets(t.Context(), req("pod:team-a:web:web-1", "db"))
	if err != nil || got.Values["db"].Reveal() != valueDB {
		t.Errorf("stale answer = %+v, %v", got, err)
	}
	// Final errors (the secret was deleted) are never answered with stale data.
	s.fetcher.errs["team-a/web"] = fault.New(fault.NotFound, "secret_not_found", "gone")
	if _, err := s.b.GetSecrets(t.Context(), req("pod:team-a:web:web-1", "db")); fault.KindOf(err) != fault.NotFound {
		t.Errorf("err = %v, want NotFound", err)
	}
}

// TestStaleWhenAWSOutlastsTheRequest has AWS answer only after the
// request's deadline (here the caller's, shorter than RequestTimeout): the
// stale value answers, whether the read's own deadline or the caller's
// passes first.
func TestStaleWhenAWSOutlastsTheRequest(t *testing.T) {
	now := time.Now()
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s := newSetup(t, func(o *Options, _ *fakeChecker) {
		o.Now = clock
		o.RequestTimeout = 400 * time.Millisecond // the read's deadline: 300ms
		o.Cache.StaleIfError = time.Minute
	})
	if _, err := s.b.GetSecrets(t.Context(), req("pod:team-a:web:web-1", "db")); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	now = now.Add(90 * time.Second)
	mu.Unlock()
	s.fetcher.delay = time.Hour
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	got, err := s.b.GetSecrets(ctx, req("pod:team-a:web:web-1", "db"))
	if err != nil || got.Values["db"].Reveal() != valueDB {
		t.Errorf("answer = %v, %v; want the stale value", got.SourceName, err)
	}
	if sec, _ := s.b.CacheStats(); sec.StaleServed != 1 {
		t.Errorf("stale served = %d, want 1", sec.StaleServed)
	}
}

func TestRequestTimeout(t *testing.T) {
	s := newSetup(t, func(o *Options, _ *fakeChecker) { o.RequestTimeout = 50 * time.Millisecond })
	s.fetcher.delay = time.Second
	start := time.Now()
	_, err := s.b.GetSecrets(t.Context(), req("pod:team-a:web:web-1", "db"))
	if fault.KindOf(err) != fault.Unavailable || time.Since(start) > 900*time.Millisecond {
		t.Errorf("err = %v after %s, want Unavailable well before the read ends", err, time.Since(start))
	}
}

// fakeGetter serves whole pods for Explain.
type fakeGetter map[string]*corev1.Pod

func (f fakeGetter) GetPod(_ context.Context, ns, name string) (*corev1.Pod, error) {
	if p, ok := f[ns+"/"+name]; ok {
		return p, nil
	}
	return nil, fault.New(fault.NotFound, "pod_not_found", "pod %s/%s not found", ns, name)
}

func TestExplain(t *testing.T) {
	ids := podidentity.Identities{"app": {UID: "u1", Signature: "s1"}}.Format()
	mk := func(name string, ann map[string]string) *corev1.Pod {
		a := map[string]string{podidentity.AnnotationKey: ids}
		for k, v := range ann {
			a[podsettings.Prefix+k] = v
		}
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: name, Annotations: a},
			Spec: corev1.PodSpec{ServiceAccountName: "web", Containers: []corev1.Container{
				{Name: "app", Env: []corev1.EnvVar{{Name: "DB", Value: "piggy:db"}, {Name: "API", Value: "piggy:api"}, {Name: "X", Value: "plain"}}},
				{Name: "sidecar"},
			}},
		}
	}
	getter := fakeGetter{
		"team-a/default": mk("default", nil),
		"team-a/other":   mk("other", map[string]string{podsettings.AWSSecretName: "team-b/web", podsettings.AWSRegion: "us-east-1"}),
		"team-a/ssm":     mk("ssm", map[string]string{podsettings.AWSSSMParameterPath: "/team-a/app"}),
	}
	b, err := New(fakeAuth{}, fakeChecker{}, &fakeFetcher{}, getter, Options{
		Rules:         policy.Rules{SecretsManager: policy.DefaultSecretsManagerPatterns, SSM: policy.DefaultSSMPatterns, AllowListGrants: policy.DefaultAllowListGrants},
		Regions:       []string{"eu-west-3", "us-east-1"},
		DefaultRegion: "eu-west-3",
		Cache:         cache.Options{Capacity: 10, TTL: time.Minute},
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name        string
		req         ExplainRequest
		wantSource  awssecrets.Source
		wantAllowed bool
		wantKeys    []string
		wantKind    fault.Kind
	}{
		{name: "default secret", req: ExplainRequest{Namespace: "team-a", PodName: "default", ContainerName: "app"},
			wantSource: awssecrets.Source{Region: "eu-west-3", SecretName: "team-a/web"}, wantAllowed: true, wantKeys: []string{"api", "db"}},
		{name: "explicit keys", req: ExplainRequest{Namespace: "team-a", PodName: "default", ContainerName: "app", Keys: []string{"db"}},
			wantSource: awssecrets.Source{Region: "eu-west-3", SecretName: "team-a/web"}, wantAllowed: true, wantKeys: []string{"db"}},
		{name: "a key the container was not admitted with", req: ExplainRequest{Namespace: "team-a", PodName: "default", ContainerName: "app", Keys: []string{"x"}},
			wantSource: awssecrets.Source{Region: "eu-west-3", SecretName: "team-a/web"}, wantAllowed: false, wantKeys: []string{"x"}},
		{name: "other namespace's secret", req: ExplainRequest{Namespace: "team-a", PodName: "other", ContainerName: "app"},
			wantSource: awssecrets.Source{Region: "us-east-1", SecretName: "team-b/web"}, wantAllowed: false, wantKeys: []string{"api", "db"}},
		{name: "ssm", req: ExplainRequest{Namespace: "team-a", PodName: "ssm", ContainerName: "app"},
			wantSource: awssecrets.Source{Region: "eu-west-3", SSMParameterPath: "/team-a/app"}, wantAllowed: true, wantKeys: []string{"api", "db"}},
		{name: "container without identity", req: ExplainRequest{Namespace: "team-a", PodName: "default", ContainerName: "sidecar"},
			wantSource: awssecrets.Source{Region: "eu-west-3", SecretName: "team-a/web"}, wantAllowed: false},
		{name: "no such container", req: ExplainRequest{Namespace: "team-a", PodName: "default", ContainerName: "nope"}, wantKind: fault.NotFound},
		{name: "no such pod", req: ExplainRequest{Namespace: "team-a", PodName: "nope", ContainerName: "app"}, wantKind: fault.NotFound},
		{name: "missing fields", req: ExplainRequest{Namespace: "team-a"}, wantKind: fault.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := b.Explain(t.Context(), tt.req)
			if tt.wantKind != fault.Internal {
				if fault.KindOf(err) != tt.wantKind {
					t.Fatalf("err = %v, want %v", err, tt.wantKind)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.wantSource, got.Source); diff != "" {
				t.Errorf("source (-want +got):\n%s", diff)
			}
			if got.Allowed != tt.wantAllowed || got.ServiceAccount != "web" || len(got.Reasons) == 0 {
				t.Errorf("explanation = %+v, want allowed=%v with reasons", got, tt.wantAllowed)
			}
			if diff := cmp.Diff(tt.wantKeys, got.Keys); diff != "" {
				t.Errorf("keys (-want +got):\n%s", diff)
			}
		})
	}
}

// TestOneRefusalOutsideTheRules is the existence oracle closed: for a name
// outside the caller's rules, a secret without an allow-list, one whose
// PIGGY_ALLOWED_SA lists others, one whose list is not a string, a missing
// one, one AWS will not let the broker read and one that is not JSON give
// the same kind, reason and message (up to the name asked for); the log
// line says which it was.
func TestOneRefusalOutsideTheRules(t *testing.T) {
	s := newSetup(t)
	s.fetcher.secrets["team-b/listed"] = secretOf(map[string]string{"db": valueTeam, "PIGGY_ALLOWED_SA": "team-c:x"})
	s.fetcher.secrets["team-b/badlist"] = &awssecrets.Secret{Values: map[string]logging.Secret{"db": valueTeam}, Invalid: map[string]string{"PIGGY_ALLOWED_SA": "holds a JSON object"}}
	s.fetcher.errs["team-b/denied"] = fault.New(fault.PermissionDenied, "aws_access_denied", "AWS does not let the broker read secret \"team-b/denied\"")
	s.fetcher.errs["team-b/raw"] = fault.New(fault.FailedPrecondition, "secret_binary", "secret \"team-b/raw\" holds a binary value")
	details := map[string]string{
		"team-b/web":     "",
		"team-b/listed":  "PIGGY_ALLOWED_SA does not list team-a:web",
		"team-b/badlist": "PIGGY_ALLOWED_SA is not a string",
		"team-b/nothing": "not found",
		"team-b/denied":  "AWS does not let the broker read",
		"team-b/raw":     "holds a binary value",
	}
	var first string
	for name, detail := range details {
		pod := "probe-" + strings.TrimPrefix(name, "team-b/")
		annotate(pod, podsettings.AWSSecretName, name)(nil, &fakeChecker{annotations: s.checker.annotations})
		_, err := s.b.GetSecrets(t.Context(), req("pod:team-a:web:"+pod, "db"))
		fe := fault.As(err)
		if fe.Kind != fault.PermissionDenied || fe.Reason != "policy_denied" {
			t.Errorf("%s: %v (%v/%s), want PermissionDenied/policy_denied", name, err, fe.Kind, fe.Reason)
		}
		msg := strings.ReplaceAll(fe.Message, name, "NAME")
		if first == "" {
			first = msg
		} else if msg != first {
			t.Errorf("%s: message %q differs from %q", name, msg, first)
		}
		for _, leak := range []string{"PIGGY_ALLOWED_SA does not", "not a string", "not found", "binary", "AWS does not", "team-c"} {
			if strings.Contains(fe.Message, leak) {
				t.Errorf("%s: message %q says %q", name, fe.Message, leak)
			}
		}
		if detail != "" {
			found := false
			for _, r := range s.logs.records(t) {
				if r["pod_name"] == pod && strings.Contains(r["error"].(string), detail) {
					found = true
				}
			}
			if !found {
				t.Errorf("%s: no log line of pod %s holds %q:\n%s", name, pod, detail, s.logs)
			}
		}
	}
	want := `service account team-a:web may not read secret "NAME": Secrets Manager secret "NAME" is neither the default secret "team-a/web" nor matched by the broker policy for namespace "team-a", and no PIGGY_ALLOWED_SA grants it`
	if first != want {
		t.Errorf("message = %q, want %q", first, want)
	}
	// Inside the caller's own rules the reason is the caller's business.
	annotate("own", podsettings.AWSSecretName, "team-a/shared")(nil, &fakeChecker{annotations: s.checker.annotations})
	if _, err := s.b.GetSecrets(t.Context(), req("pod:team-a:web:own", "db")); !strings.Contains(fault.As(err).Message, "PIGGY_ALLOWED_SA does not list team-a:web") {
		t.Errorf("own namespace's secret: %v, want the allow-list reason", err)
	}
}

// TestNamesNoAllowListMayGrantAreNotRead: with AllowListGrants narrowed, a
// name outside the caller's rules and the grants is refused without an AWS
// read, with the same message as any other refusal outside the rules; a
// name the grants match is still read, and its PIGGY_ALLOWED_SA decides.
func TestNamesNoAllowListMayGrantAreNotRead(t *testing.T) {
	s := newSetup(t, func(o *Options, _ *fakeChecker) { o.Rules.AllowListGrants = []string{"shared/*"} })
	s.fetcher.secrets["shared/db"] = secretOf(map[string]string{"db": valueTeam, "PIGGY_ALLOWED_SA": "team-a:web"})
	for i := range 50 {
		pod := "probe-" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		annotate(pod, podsettings.AWSSecretName, "team-b/web")(nil, &fakeChecker{annotations: s.checker.annotations})
		_, err := s.b.GetSecrets(t.Context(), req("pod:team-a:web:"+pod, "db"))
		want := `service account team-a:web may not read secret "team-b/web": Secrets Manager secret "team-b/web" is neither the default secret "team-a/web" nor matched by the broker policy for namespace "team-a", and no PIGGY_ALLOWED_SA grants it`
		if fe := fault.As(err); fe.Reason != "policy_denied" || fe.Message != want {
			t.Fatalf("err = %v, want %q", err, want)
		}
	}
	if n := s.fetcher.reads.Load(); n != 0 {
		t.Errorf("AWS reads for 50 refused requests = %d, want 0", n)
	}
	annotate("shared", podsettings.AWSSecretName, "shared/db")(nil, &fakeChecker{annotations: s.checker.annotations})
	if got, err := s.b.GetSecrets(t.Context(), req("pod:team-a:web:shared", "db")); err != nil || got.Values["db"].Reveal() != valueTeam {
		t.Errorf("shared/db granted by its PIGGY_ALLOWED_SA: %v", err)
	}
	// The caller's own names are read as before.
	if _, err := s.b.GetSecrets(t.Context(), req("pod:team-a:web:web-1", "db")); err != nil {
		t.Error(err)
	}
}

// TestFailuresAreRememberedPerSource: a missing secret is read once per
// NegativeTTL whoever asks, and is seen once created when the TTL has
// passed; transient failures are not remembered.
func TestFailuresAreRememberedPerSource(t *testing.T) {
	now := time.Unix(1000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	s := newSetup(t, annotate("web-1", podsettings.AWSSecretName, "team-a/later"), func(o *Options, _ *fakeChecker) {
		o.Now = clock
		o.Cache.NegativeTTL = 30 * time.Second
	})
	for range 50 {
		if _, err := s.b.GetSecrets(t.Context(), req("pod:team-a:web:web-1", "db")); fault.KindOf(err) != fault.NotFound {
			t.Fatalf("err = %v, want NotFound", err)
		}
	}
	if n := s.fetcher.reads.Load(); n != 1 {
		t.Errorf("AWS reads for 50 requests of a missing secret = %d, want 1", n)
	}
	s.fetcher.mu.Lock()
	s.fetcher.secrets["team-a/later"] = secretOf(map[string]string{"db": valueDB})
	s.fetcher.mu.Unlock()
	advance(30 * time.Second)
	if got, err := s.b.GetSecrets(t.Context(), req("pod:team-a:web:web-1", "db")); err != nil || got.Values["db"].Reveal() != valueDB {
		t.Errorf("after the negative TTL: %v, want the secret created meanwhile", err)
	}

	s.fetcher.errs["team-a/web"] = fault.New(fault.Unavailable, "aws_throttled", "throttled")
	for range 3 {
		s.b.GetSecrets(t.Context(), req("pod:team-a:web:web-2", "db"))
	}
	if n := s.fetcher.reads.Load(); n != 2+3 {
		t.Errorf("AWS reads = %d, want 5 (throttling is not remembered)", n)
	}
}

// TestPodReadBudget: a pod gets PodReadBurst AWS reads, then a refusal
// naming the limit without an AWS call, and one more read each
// PodReadInterval; cache hits cost nothing and other pods keep their own
// budget.
func TestPodReadBudget(t *testing.T) {
	now := time.Unix(1000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	s := newSetup(t, annotate("loop", podsettings.AWSSecretName, "team-a/missing"), func(o *Options, _ *fakeChecker) {
		o.Now = clock
		o.PodReadBurst, o.PodReadInterval = 3, time.Minute
	})
	for range 3 {
		if _, err := s.b.GetSecrets(t.Context(), req("pod:team-a:web:loop", "db")); fault.KindOf(err) != fault.NotFound {
			t.Fatalf("err = %v, want NotFound", err)
		}
	}
	for range 10 {
		_, err := s.b.GetSecrets(t.Context(), req("pod:team-a:web:loop", "db"))
		want := "pod team-a/loop has used its AWS reads: at most 3 at once and one more every 1m0s (the broker's --pod-aws-read-burst and --pod-aws-read-interval); retry later"
		if fe := fault.As(err); fe.Kind != fault.Unavailable || fe.Reason != "aws_read_limit" || fe.Message != want {
			t.Fatalf("err = %v (%v/%s), want Unavailable %q", err, fe.Kind, fe.Reason, want)
		}
	}
	if n := s.fetcher.reads.Load(); n != 3 {
		t.Errorf("AWS reads = %d, want 3 (the burst)", n)
	}
	// Another pod is not starved, and its cached reads cost nothing.
	for range 10 {
		if _, err := s.b.GetSecrets(t.Context(), req("pod:team-a:web:web-1", "db")); err != nil {
			t.Fatal(err)
		}
	}
	advance(time.Minute)
	if _, err := s.b.GetSecrets(t.Context(), req("pod:team-a:web:loop", "db")); fault.KindOf(err) != fault.NotFound {
		t.Errorf("after one interval: %v, want one more read", err)
	}
	if _, err := s.b.GetSecrets(t.Context(), req("pod:team-a:web:loop", "db")); fault.ReasonOf(err) != "aws_read_limit" {
		t.Errorf("second read after one interval: %v, want the limit", err)
	}
	if n := s.fetcher.reads.Load(); n != 3+1+1 {
		t.Errorf("AWS reads = %d, want 5", n)
	}
}

func TestReadBudgetIsBounded(t *testing.T) {
	r := newReadBudget(1, time.Hour, time.Now)
	for i := range maxBudgetPods + 100 {
		r.take(string(rune(i)) + "pod")
	}
	if n := r.pods(); n != maxBudgetPods {
		t.Errorf("pods remembered = %d, want %d", n, maxBudgetPods)
	}
	if newReadBudget(0, time.Second, time.Now) != nil || !(*readBudget)(nil).take("x") {
		t.Error("a zero burst should set no limit")
	}
}

// TestRegionsComeFromTheOperator: a region outside the broker's list is
// refused naming the allowed ones, before any AWS call, however many are
// tried; the allowed ones keep working.
func TestRegionsComeFromTheOperator(t *testing.T) {
	s := newSetup(t)
	for i := range 100 {
		pod := "fake-" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		region := "zz-fake-" + string(rune('0'+i%10))
		annotate(pod, podsettings.AWSRegion, region)(nil, &fakeChecker{annotations: s.checker.annotations})
		_, err := s.b.GetSecrets(t.Context(), req("pod:team-a:web:"+pod, "db"))
		want := `region "` + region + `" is not served by this broker; it reads eu-west-3, us-east-1 (the operator's --aws-regions and its own region)`
		if fe := fault.As(err); fe.Kind != fault.InvalidArgument || fe.Message != want {
			t.Fatalf("err = %v, want InvalidArgument %q", err, want)
		}
	}
	annotate("east", podsettings.AWSRegion, "us-east-1")(nil, &fakeChecker{annotations: s.checker.annotations})
	for _, pod := range []string{"web-1", "east"} {
		if _, err := s.b.GetSecrets(t.Context(), req("pod:team-a:web:"+pod, "db")); err != nil {
			t.Errorf("%s: %v", pod, err)
		}
	}
	if n := s.fetcher.reads.Load(); n != 2 {
		t.Errorf("AWS reads = %d, want 2", n)
	}
}
