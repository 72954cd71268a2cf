package grpcapi_test

import (
	"context"
	"crypto/tls"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"

	imageresolverv1 "github.com/piggysec/piggy/libs/gen/piggy/imageresolver/v1"
	"github.com/piggysec/piggy/libs/proctest"
	"github.com/piggysec/piggy/libs/registrytest"
	"github.com/piggysec/piggy/services/image-resolver/internal/resolve"
)

func TestInsecureRegistries(t *testing.T) {
	tlsReg := registrytest.New(t, registrytest.Options{})
	plain := registrytest.New(t, registrytest.Options{PlainHTTP: true})
	img := registrytest.Image(t, "linux/amd64", []string{"/bin/app"}, nil)
	tlsReg.Push(t, "app:1", img)
	plain.Push(t, "app:1", img)
	want := &imageresolverv1.ResolveImageResponse{Digest: mustHash(t, img), Entrypoint: []string{"/bin/app"}, Platform: platform("linux", "amd64", "")}

	tests := []struct {
		name     string
		listed   []string
		image    string
		skip     bool
		wantCode codes.Code
		wantMsg  string
	}{
		{name: "untrusted certificate is refused", image: tlsReg.Ref("app:1"), wantCode: codes.Unavailable, wantMsg: "TLS verification of registry " + tlsReg.Host + " failed"},
		{name: "skip_tls_verify for an unlisted registry", image: tlsReg.Ref("app:1"), skip: true, wantCode: codes.InvalidArgument, wantMsg: "registry " + tlsReg.Host + " is not listed in --insecure-registries"},
		{name: "listed registry without skip_tls_verify is still verified", listed: []string{tlsReg.Host}, image: tlsReg.Ref("app:1"), wantCode: codes.Unavailable, wantMsg: "TLS verification"},
		{name: "listed registry with skip_tls_verify", listed: []string{tlsReg.Host}, image: tlsReg.Ref("app:1"), skip: true},
		{name: "other listed registry does not help", listed: []string{plain.Host}, image: tlsReg.Ref("app:1"), skip: true, wantCode: codes.InvalidArgument, wantMsg: tlsReg.Host},
		{name: "plain HTTP is refused for a loopback registry", image: plain.Ref("app:1"), wantCode: codes.Unavailable, wantMsg: "plain HTTP to " + plain.Host + " refused"},
		{name: "plain HTTP is refused for a listed registry without skip_tls_verify", listed: []string{plain.Host}, image: plain.Ref("app:1"), wantCode: codes.Unavailable, wantMsg: "plain HTTP"},
		{name: "plain HTTP for a listed registry with skip_tls_verify", listed: []string{plain.Host}, image: plain.Ref("app:1"), skip: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := newResolver(t, nil, nil, func(o *resolve.Options) { o.InsecureRegistries = tt.listed })
			got, err := serveGRPC(t, r).ResolveImage(t.Context(), &imageresolverv1.ResolveImageRequest{Image: tt.image, SkipTlsVerify: tt.skip})
			if c := status.Code(err); c != tt.wantCode {
				t.Fatalf("ResolveImage() code = %v (%v), want %v", c, err, tt.wantCode)
			}
			if tt.wantCode != codes.OK {
				if msg := status.Convert(err).Message(); !strings.Contains(msg, tt.wantMsg) {
					t.Errorf("message %q does not contain %q", msg, tt.wantMsg)
				}
				return
			}
			if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
				t.Errorf("ResolveImage() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestUnreachableRegistries(t *testing.T) {
	const timeout = 500 * time.Millisecond
	slow := registrytest.New(t, registrytest.Options{})
	slow.Push(t, "app:1", registrytest.Image(t, "linux/amd64", []string{"/bin/app"}, nil))
	slow.SetManifestDelay(time.Minute)
	empty := registrytest.New(t, registrytest.Options{})
	empty.Push(t, "app:1", registrytest.Image(t, "linux/amd64", []string{"/bin/app"}, nil))
	empty.SetManifestFault(registrytest.ManifestsEmpty)
	cutOff := registrytest.New(t, registrytest.Options{})
	cutOff.Push(t, "app:1", registrytest.Image(t, "linux/amd64", []string{"/bin/app"}, nil))
	cutOff.SetManifestFault(registrytest.ManifestsCutOff)
	tests := []struct {
		name     string
		image    string
		deadline time.Duration // gRPC deadline; zero: none
		wantCode codes.Code
		wantMsg  string
	}{
		{name: "connection refused", image: registrytest.ClosedPort(t) + "/app:1", wantCode: codes.Unavailable, wantMsg: "unreachable"},
		{name: "no answer within the registry timeout", image: registrytest.Blackhole(t) + "/app:1", wantCode: codes.Unavailable, wantMsg: "did not answer"},
		{name: "manifest never answered", image: slow.Ref("app:1"), wantCode: codes.Unavailable, wantMsg: "did not answer"},
		// What a client may see when a registry gives up on the manifest:
		// a broken answer is the registry's fault, not an unsupported image.
		{name: "manifest answered empty", image: empty.Ref("app:1"), wantCode: codes.Unavailable, wantMsg: "registry " + empty.Host + " sent an empty answer for " + empty.Ref("app:1")},
		{name: "manifest cut off", image: cutOff.Ref("app:1"), wantCode: codes.Unavailable, wantMsg: "registry " + cutOff.Host + " cut off its answer for " + cutOff.Ref("app:1")},
		{name: "gRPC deadline shorter than the registry timeout", image: slow.Ref("app:1"), deadline: 150 * time.Millisecond, wantCode: codes.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := newResolver(t, pool(slow, empty, cutOff), nil, func(o *resolve.Options) { o.Timeout = timeout })
			client := serveGRPC(t, r)
			ctx := t.Context()
			if tt.deadline > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.deadline)
				defer cancel()
			}
			start := time.Now()
			_, err := client.ResolveImage(ctx, &imageresolverv1.ResolveImageRequest{Image: tt.image})
			took := time.Since(start)
			if c := status.Code(err); c != tt.wantCode {
				t.Fatalf("ResolveImage() code = %v (%v), want %v", c, err, tt.wantCode)
			}
			if msg := status.Convert(err).Message(); !strings.Contains(msg, tt.wantMsg) {
				t.Errorf("message %q does not contain %q", msg, tt.wantMsg)
			}
			// A correctness bound (the lookup is bounded at all), not a benchmark.
			if took > timeout+5*time.Second {
				t.Errorf("ResolveImage() took %s, want it bounded by the %s registry timeout", took, timeout)
			}
		})
	}
}

func TestExplainImage(t *testing.T) {
	f := newFixture(t)
	r, _ := newResolver(t, pool(f.pub, f.priv), f.objs)
	client := serveGRPC(t, r)
	lookup := &imageresolverv1.ResolveImageRequest{Image: f.pub.Ref("app/multi:1"), Namespace: ns, ServiceAccount: "builder", PullSecrets: secrets("does-not-exist"), Platform: platform("linux", "arm64", "")}
	platforms := []*imageresolverv1.Platform{platform("linux", "amd64", ""), platform("linux", "arm64", "v8")}
	arm64 := &imageresolverv1.ResolveImageResponse{Digest: f.digests["multi/arm64"], Entrypoint: []string{"/bin/arm64"}, Cmd: []string{"run"}, Platform: platform("linux", "arm64", "v8")}
	cachedArm64 := &imageresolverv1.ResolveImageResponse{Digest: f.digests["multi/arm64"], Entrypoint: []string{"/bin/arm64"}, Cmd: []string{"run"}, Platform: platform("linux", "arm64", "v8"), Cached: true}

	tests := []struct {
		name      string
		lookup    *imageresolverv1.ResolveImageRequest
		want      *imageresolverv1.ExplainImageResponse
		wantSteps []string // substrings, in order
	}{
		{
			name:   "cold index lookup",
			lookup: lookup,
			want:   &imageresolverv1.ExplainImageResponse{Result: arm64, AvailablePlatforms: platforms},
			wantSteps: []string{
				"reference " + f.pub.Ref("app/multi:1"),
				"platform linux/arm64 (requested)",
				"pull secret team/does-not-exist: not found; continuing",
				"imagePullSecret of service account team/builder: team/regcred: read",
				"no credentials for " + f.pub.Host,
				"trying anonymously",
				"tag cache: miss",
				"trying credentials: anonymous",
				"GET https://" + f.pub.Host + "/v2/app/multi/manifests/1: 200",
				"offers linux/amd64, linux/arm64/v8",
				"chose " + f.digests["multi/arm64"] + " for linux/arm64/v8",
				"config cache: miss",
			},
		},
		{
			name:      "warm index lookup",
			lookup:    lookup,
			want:      &imageresolverv1.ExplainImageResponse{Result: cachedArm64, AvailablePlatforms: platforms},
			wantSteps: []string{"platform linux/arm64 (requested)", "tag cache: hit", "config cache: hit"},
		},
		{
			name:   "failed lookup is reported in the response",
			lookup: &imageresolverv1.ResolveImageRequest{Image: f.priv.Ref("private/app:1"), Namespace: ns, PullSecrets: secrets("wrongcred")},
			want: &imageresolverv1.ExplainImageResponse{
				Error: "registry " + f.priv.Host + " did not accept the credentials for " + f.priv.Ref("private/app:1") + " (401 UNAUTHORIZED)",
			},
			wantSteps: []string{"pull secret team/wrongcred: read", "has credentials for " + f.priv.Host, "trying credentials: pull secret team/wrongcred", ": 401", "failed: registry"},
		},
		{
			name:      "no matching platform lists the platforms",
			lookup:    &imageresolverv1.ResolveImageRequest{Image: f.pub.Ref("app/multi:1"), Platform: platform("linux", "s390x", "")},
			want:      &imageresolverv1.ExplainImageResponse{Error: "image " + f.pub.Ref("app/multi:1") + " has no manifest for linux/s390x (available: linux/amd64, linux/arm64/v8)", AvailablePlatforms: platforms},
			wantSteps: []string{"service account: not read (the request names no namespace)", "offers linux/amd64, linux/arm64/v8"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := client.ExplainImage(t.Context(), &imageresolverv1.ExplainImageRequest{Lookup: tt.lookup})
			if err != nil {
				t.Fatalf("ExplainImage() = %v", err)
			}
			steps := got.GetSteps()
			got.Steps = nil
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("ExplainImage() mismatch (-want +got):\n%s", diff)
			}
			i := 0
			for _, s := range steps {
				if strings.Contains(s, password) || strings.Contains(s, "not-the-password") || strings.Contains(strings.ToLower(s), "authorization") {
					t.Errorf("step %q leaks credential material", s)
				}
				if i < len(tt.wantSteps) && strings.Contains(s, tt.wantSteps[i]) {
					i++
				}
			}
			if i < len(tt.wantSteps) {
				t.Errorf("step %q not found in order; steps:\n%s", tt.wantSteps[i], strings.Join(steps, "\n"))
			}
		})
	}

	t.Run("lookup is required", func(t *testing.T) {
		_, err := client.ExplainImage(t.Context(), &imageresolverv1.ExplainImageRequest{})
		if c := status.Code(err); c != codes.InvalidArgument {
			t.Errorf("ExplainImage() code = %v, want InvalidArgument", c)
		}
	})
}

func TestGetCacheStats(t *testing.T) {
	f := newFixture(t)
	r, _ := newResolver(t, pool(f.pub), nil, func(o *resolve.Options) { o.ConfigCacheSize, o.TagCacheSize = 2, 3 })
	client := serveGRPC(t, r)
	for _, image := range []string{"app/entrypoint:1", "app/entrypoint:1", "app/cmd:1", "app/both:1", "app/both:nope"} {
		_, _ = client.ResolveImage(t.Context(), &imageresolverv1.ResolveImageRequest{Image: f.pub.Ref(image)})
	}
	got, err := client.GetCacheStats(t.Context(), &imageresolverv1.GetCacheStatsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	want := &imageresolverv1.GetCacheStatsResponse{
		// 5 lookups: one hit; 4 misses filled 3 digests and one failure
		// into a 3-entry cache (one eviction).
		Tags: &imageresolverv1.CacheStats{Entries: 3, Capacity: 3, Hits: 1, Misses: 4, Evictions: 1, Ttl: durationpb.New(time.Minute)},
		// 3 distinct configs into 2 entries; the warm lookup was a hit.
		Configs: &imageresolverv1.CacheStats{Entries: 2, Capacity: 2, Hits: 1, Misses: 3, Evictions: 1},
	}
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("GetCacheStats() mismatch (-want +got):\n%s", diff)
	}
}

// TestCacheIsKeyedByCredentials shows a cached result is never served to
// a caller that would present other credentials, and is shared by callers
// presenting the same ones.
func TestCacheIsKeyedByCredentials(t *testing.T) {
	f := newFixture(t)
	r, _ := newResolver(t, pool(f.priv), f.objs)
	client := serveGRPC(t, r)
	image := f.priv.Ref("private/app:1")
	steps := []struct {
		name       string
		req        *imageresolverv1.ResolveImageRequest
		wantCode   codes.Code
		wantCached bool
	}{
		{name: "authorised lookup fills the cache", req: &imageresolverv1.ResolveImageRequest{Image: image, Namespace: ns, PullSecrets: secrets("regcred")}},
		{name: "anonymous caller is not served from it", req: &imageresolverv1.ResolveImageRequest{Image: image, Namespace: ns}, wantCode: codes.Unauthenticated},
		{name: "wrong credentials are not served from it", req: &imageresolverv1.ResolveImageRequest{Image: image, Namespace: ns, PullSecrets: secrets("wrongcred")}, wantCode: codes.Unauthenticated},
		{name: "same credentials through the service account share it", req: &imageresolverv1.ResolveImageRequest{Image: image, Namespace: ns, ServiceAccount: "builder"}, wantCached: true},
		{name: "same credentials in another namespace's secret share it", req: &imageresolverv1.ResolveImageRequest{Image: image, Namespace: "other", PullSecrets: secrets("shared")}, wantCached: true},
		{name: "anonymous failure is cached for anonymous callers only", req: &imageresolverv1.ResolveImageRequest{Image: image, Namespace: "elsewhere"}, wantCode: codes.Unauthenticated},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			got, err := client.ResolveImage(t.Context(), s.req)
			if c := status.Code(err); c != s.wantCode {
				t.Fatalf("ResolveImage() code = %v (%v), want %v", c, err, s.wantCode)
			}
			if got.GetCached() != s.wantCached {
				t.Errorf("cached = %v, want %v", got.GetCached(), s.wantCached)
			}
		})
	}
	// The anonymous and wrong-credential failures were cached (negative
	// TTL) under their own keys: 3 distinct keys, 2 of them failures.
	if got := r.Stats().Tags.Entries; got != 3 {
		t.Errorf("tag cache entries = %d, want 3 (one per credential identity)", got)
	}
}

func TestConcurrentColdLookupsAreCoalesced(t *testing.T) {
	f := newFixture(t)
	r, _ := newResolver(t, pool(f.pub, f.priv), f.objs)
	client := serveGRPC(t, r)
	const n = 100
	req := &imageresolverv1.ResolveImageRequest{Image: f.priv.Ref("private/app:1"), Namespace: ns, ServiceAccount: "builder"}
	var (
		wg      sync.WaitGroup
		start   = make(chan struct{})
		results = make([]*imageresolverv1.ResolveImageResponse, n)
		errs    = make([]error, n)
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			results[i], errs[i] = client.ResolveImage(t.Context(), req)
		}()
	}
	close(start)
	wg.Wait()
	want := &imageresolverv1.ResolveImageResponse{Digest: f.digests["private/app:1"], Entrypoint: []string{"/bin/private"}, Cmd: []string{"--secret-flag"}, Platform: platform("linux", "amd64", "")}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("lookup %d: %v", i, errs[i])
		}
		results[i].Cached = false
		if diff := cmp.Diff(want, results[i], protocmp.Transform()); diff != "" {
			t.Fatalf("lookup %d mismatch (-want +got):\n%s", i, diff)
		}
	}
	if got := f.priv.ManifestGets("private/app"); got != 1 {
		t.Errorf("manifest GETs = %d, want exactly 1 for %d concurrent cold lookups", got, n)
	}
	s := r.Stats().Tags
	if s.Hits+s.Misses != n || s.Coalesced > s.Misses {
		t.Errorf("tag stats = %+v, want %d lookups, coalesced ones among the misses", s, n)
	}
	t.Logf("tag cache after %d concurrent lookups: hits=%d misses=%d coalesced=%d", n, s.Hits, s.Misses, s.Coalesced)
}

func TestClientCertificateRequired(t *testing.T) {
	r, _ := newResolver(t, nil, nil)
	addr, pki := startGRPC(t, r)
	tests := []struct {
		name string
		cfg  func() *tls.Config
	}{
		{"no client certificate", func() *tls.Config {
			c := pki.Client.ClientConfig("127.0.0.1")
			c.GetClientCertificate = nil
			return c
		}},
		{"certificate of another CA", func() *tls.Config {
			c := pki.Client.ClientConfig("127.0.0.1")
			c.GetClientCertificate = proctest.NewPKI(t).Client.ClientConfig("127.0.0.1").GetClientCertificate
			return c
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tt.cfg())))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_, err = imageresolverv1.NewImageResolverServiceClient(conn).GetCacheStats(t.Context(), &imageresolverv1.GetCacheStatsRequest{})
			if c := status.Code(err); c != codes.Unavailable {
				t.Errorf("GetCacheStats() code = %v (%v), want Unavailable (handshake refused)", c, err)
			}
		})
	}
}

func mustHash(t *testing.T, img v1.Image) string {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}
