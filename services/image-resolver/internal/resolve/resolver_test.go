package resolve_test

import (
	"errors"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/piggysec/piggy/libs/registrytest"
	"github.com/piggysec/piggy/services/image-resolver/internal/keychain"
	"github.com/piggysec/piggy/services/image-resolver/internal/resolve"
)

// clock is a manual clock for the caches.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newResolver(t testing.TB, reg *registrytest.Registry, kube keychain.Kube, mods ...func(*resolve.Options)) *resolve.Resolver {
	t.Helper()
	opts := resolve.Options{
		Keychain:         keychain.New(kube),
		DefaultPlatform:  resolve.Platform{OS: "linux", Architecture: "amd64"},
		RootCAs:          reg.CertPool(),
		Destinations:     loopbackAllowed,
		Timeout:          4 * time.Second,
		ConfigCacheSize:  16,
		TagCacheSize:     16,
		TagTTL:           time.Minute,
		NegativeTTL:      5 * time.Second,
		MaxManifestBytes: resolve.DefaultMaxManifestBytes,
		MaxConfigBytes:   resolve.DefaultMaxConfigBytes,
		MaxColdLookups:   resolve.DefaultMaxColdLookups,
	}
	for _, m := range mods {
		m(&opts)
	}
	r, err := resolve.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestCacheLifetimes drives the tag TTL and the negative TTL with a manual
// clock and counts what reaches the registry.
func TestCacheLifetimes(t *testing.T) {
	reg := registrytest.New(t, registrytest.Options{})
	first := reg.Push(t, "app:1", registrytest.Image(t, "linux/amd64", []string{"/v1"}, nil))
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	r := newResolver(t, reg, nil, func(o *resolve.Options) { o.Now = clk.now })
	ctx := t.Context()

	type step struct {
		name          string
		advance       time.Duration
		push          string // push a new image as app:1 before the lookup
		image         string
		wantErr       error
		wantEntry     string
		wantCached    bool
		wantManifests int // cumulative manifest GETs for repo "app"
	}
	var second string
	steps := []step{
		{name: "cold", image: "app:1", wantEntry: "/v1", wantManifests: 1},
		{name: "warm", image: "app:1", wantEntry: "/v1", wantCached: true, wantManifests: 1},
		{name: "tag moved, still within the TTL", push: "/v2", advance: 59 * time.Second, image: "app:1", wantEntry: "/v1", wantCached: true, wantManifests: 1},
		{name: "TTL over: the moved tag is read", advance: time.Second, image: "app:1", wantEntry: "/v2", wantManifests: 2},
		{name: "unknown tag", image: "app:nope", wantErr: resolve.ErrNotFound, wantManifests: 3},
		{name: "unknown tag again: failure cached", advance: 4 * time.Second, image: "app:nope", wantErr: resolve.ErrNotFound, wantManifests: 3},
		{name: "negative TTL over", advance: time.Second, image: "app:nope", wantErr: resolve.ErrNotFound, wantManifests: 4},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if s.push != "" {
				d := reg.Push(t, "app:1", registrytest.Image(t, "linux/amd64", []string{s.push}, nil))
				second = d.String()
			}
			clk.advance(s.advance)
			res, err := r.Resolve(ctx, resolve.Request{Image: reg.Ref(s.image)})
			if !errors.Is(err, s.wantErr) || (s.wantErr == nil && err != nil) {
				t.Fatalf("Resolve() error = %v, want %v", err, s.wantErr)
			}
			if s.wantErr == nil {
				if got := strings.Join(res.Entrypoint, " "); got != s.wantEntry || res.Cached != s.wantCached {
					t.Errorf("Resolve() = entrypoint %q cached %v, want %q cached %v", got, res.Cached, s.wantEntry, s.wantCached)
				}
			}
			if got := reg.ManifestGets("app"); got != s.wantManifests {
				t.Errorf("manifest GETs = %d, want %d", got, s.wantManifests)
			}
		})
	}
	if second == "" || second == first.String() {
		t.Fatal("the tag was not moved")
	}
}

// TestLeastPrivilege shows the keychain only GETs the named secrets and
// the named service account (here with a namespace the operator shares).
func TestLeastPrivilege(t *testing.T) {
	reg := registrytest.New(t, registrytest.Options{})
	reg.Push(t, "app:1", registrytest.Image(t, "linux/amd64", []string{"/bin/app"}, nil))
	cs := fake.NewClientset([]runtime.Object{
		registrytest.DockerConfigJSONSecret("team", "a", reg.Host, "u", "p"),
		registrytest.DockerConfigJSONSecret("team", "unrelated", reg.Host, "u", "p"),
		registrytest.ServiceAccount("team", "runner", "b"),
	}...)
	r := newResolver(t, reg, cs.CoreV1(), func(o *resolve.Options) { o.Keychain.AllowNamespaces("shared") })
	_, err := r.Resolve(t.Context(), resolve.Request{
		Image: reg.Ref("app:1"), Namespace: "team", ServiceAccount: "runner",
		PullSecrets: []keychain.SecretRef{{Name: "a"}, {Namespace: "shared", Name: "c"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range cs.Actions() {
		got = append(got, a.GetVerb()+" "+a.GetResource().Resource+" "+a.GetNamespace()+"/"+nameOf(a))
	}
	want := []string{
		"get secrets team/a",
		"get secrets shared/c",
		"get serviceaccounts team/runner",
		"get secrets team/b",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Kubernetes API calls mismatch (-want +got):\n%s", diff)
	}
}

func nameOf(a interface{ GetVerb() string }) string {
	if g, ok := a.(interface{ GetName() string }); ok {
		return g.GetName()
	}
	return ""
}

func TestKubernetesOff(t *testing.T) {
	reg := registrytest.New(t, registrytest.Options{})
	reg.Push(t, "app:1", registrytest.Image(t, "linux/amd64", []string{"/bin/app"}, nil))
	r := newResolver(t, reg, nil)
	res, ex, err := r.Explain(t.Context(), resolve.Request{Image: reg.Ref("app:1"), Namespace: "team", PullSecrets: []keychain.SecretRef{{Name: "regcred"}}})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"/bin/app"}, res.Entrypoint); diff != "" {
		t.Errorf("entrypoint mismatch (-want +got):\n%s", diff)
	}
	for _, want := range []string{"pull secret team/regcred: not read (Kubernetes access is off)", "service account: not read (Kubernetes access is off)"} {
		if !slices.Contains(ex.Steps, want) {
			t.Errorf("steps do not contain %q:\n%s", want, strings.Join(ex.Steps, "\n"))
		}
	}
}

// TestCallerCancellationDoesNotFailOthers: the coalesced lookup runs on
// its own context, so the caller that started it may leave early.
func TestCallerCancellationDoesNotFailOthers(t *testing.T) {
	reg := registrytest.New(t, registrytest.Options{})
	reg.Push(t, "app:1", registrytest.Image(t, "linux/amd64", []string{"/bin/app"}, nil))
	reg.SetManifestDelay(300 * time.Millisecond)
	r := newResolver(t, reg, nil)
	ctx, cancel := contextWithCancel(t)
	firstErr := make(chan error, 1)
	go func() {
		_, err := r.Resolve(ctx, resolve.Request{Image: reg.Ref("app:1")})
		firstErr <- err
	}()
	for r.Stats().Tags.Misses == 0 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-firstErr; err == nil {
		t.Fatal("first caller: want an error after its cancellation")
	}
	res, err := r.Resolve(t.Context(), resolve.Request{Image: reg.Ref("app:1")})
	if err != nil {
		t.Fatalf("second caller: %v", err)
	}
	if got := reg.ManifestGets("app"); got != 1 {
		t.Errorf("manifest GETs = %d, want 1 (the second caller joined or found the first lookup's result)", got)
	}
	if diff := cmp.Diff([]string{"/bin/app"}, res.Entrypoint); diff != "" {
		t.Errorf("entrypoint mismatch (-want +got):\n%s", diff)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	good := resolve.Options{
		Keychain: keychain.New(nil), DefaultPlatform: resolve.Platform{OS: "linux", Architecture: "amd64"},
		Timeout: time.Second, ConfigCacheSize: 1, TagCacheSize: 1,
		MaxManifestBytes: 1, MaxConfigBytes: 1, MaxColdLookups: 1,
	}
	tests := []struct {
		name string
		mod  func(*resolve.Options)
	}{
		{"no keychain", func(o *resolve.Options) { o.Keychain = nil }},
		{"no default architecture", func(o *resolve.Options) { o.DefaultPlatform.Architecture = "" }},
		{"no timeout", func(o *resolve.Options) { o.Timeout = 0 }},
		{"no config cache", func(o *resolve.Options) { o.ConfigCacheSize = 0 }},
		{"negative TTL", func(o *resolve.Options) { o.NegativeTTL = -time.Second }},
		{"no manifest limit", func(o *resolve.Options) { o.MaxManifestBytes = 0 }},
		{"no config limit", func(o *resolve.Options) { o.MaxConfigBytes = 0 }},
		{"no cold lookup limit", func(o *resolve.Options) { o.MaxColdLookups = 0 }},
		{"bad insecure registry", func(o *resolve.Options) { o.InsecureRegistries = []string{"http://x/"} }},
	}
	if _, err := resolve.New(good); err != nil {
		t.Fatalf("New(good) = %v", err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := good
			tt.mod(&o)
			if _, err := resolve.New(o); err == nil {
				t.Error("New() = nil error, want one")
			}
		})
	}
}

// loopbackAllowed lets the resolver reach the tests' registries, which
// listen on loopback (TestInternalDestinations covers the default).
var loopbackAllowed = resolve.Destinations{Networks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}}

// TestLatencyLabelsAreBounded is the admission issue's label growth
// attack: every registry host a pod names would become a server.address
// value of the latency metric, a time series kept for the life of the
// process. Past a fixed number of hosts they share one value.
func TestLatencyLabelsAreBounded(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	r := newResolver(t, registrytest.New(t, registrytest.Options{}), nil, func(o *resolve.Options) {
		o.MeterProvider = sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		o.NegativeTTL = 0
	})
	const hosts = 100
	for range hosts {
		_, _ = r.Resolve(t.Context(), resolve.Request{Image: registrytest.ClosedPort(t) + "/app:1"})
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(t.Context(), &rm); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if h, ok := m.Data.(metricdata.Histogram[float64]); ok && m.Name == "piggy_image_resolver_registry_request_duration" {
				for _, dp := range h.DataPoints {
					v, _ := dp.Attributes.Value("server.address")
					seen[v.AsString()] = true
				}
			}
		}
	}
	if len(seen) < 2 || len(seen) > 65 || !seen["other"] {
		t.Errorf("%d server.address values after %d hosts (other: %v), want at most 64 hosts plus \"other\"", len(seen), hosts, seen["other"])
	}
}
