package ecrauth_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"

	"github.com/piggysec/piggy/libs/awslocal"
	"github.com/piggysec/piggy/services/image-resolver/internal/ecrauth"
	"github.com/piggysec/piggy/services/image-resolver/internal/ecrauth/ecrauthtest"
)

// clock is a manual clock for the token cache.
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

func TestRegionOf(t *testing.T) {
	tests := []struct {
		host, want string
		ok         bool
	}{
		{"123456789012.dkr.ecr.eu-west-1.amazonaws.com", "eu-west-1", true},
		{"123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com", "us-gov-west-1", true},
		{"123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn", "cn-north-1", true},
		{"123456789012.DKR.ECR.ap-southeast-2.AMAZONAWS.COM", "ap-southeast-2", true},
		{"12345678901.dkr.ecr.eu-west-1.amazonaws.com", "", false},
		{"123456789012.dkr.ecr.eu-west-1.amazonaws.com:443", "", false},
		{"123456789012.dkr.ecr.eu-west-1.amazonaws.com.evil.example", "", false},
		{"public.ecr.aws", "", false},
		{"index.docker.io", "", false},
	}
	for _, tt := range tests {
		got, ok := ecrauth.RegionOf(tt.host)
		if got != tt.want || ok != tt.ok {
			t.Errorf("RegionOf(%q) = %q, %v; want %q, %v", tt.host, got, ok, tt.want, tt.ok)
		}
	}
}

func resource(t *testing.T, host string) authn.Resource {
	t.Helper()
	repo, err := name.NewRepository(host + "/app")
	if err != nil {
		t.Fatal(err)
	}
	return repo
}

func TestTokenIsFetchedOnceAndRenewedBeforeExpiry(t *testing.T) {
	clk := &clock{t: time.Now()}
	env := ecrauthtest.New(t, func(o *ecrauth.Options) { o.Now = clk.now })
	repo := resource(t, env.Registry.Host)

	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			auth, err := env.Keychain.ResolveContext(t.Context(), repo)
			if err != nil {
				t.Errorf("ResolveContext: %v", err)
				return
			}
			cfg, err := auth.Authorization()
			if err != nil || cfg.Username != "AWS" || cfg.Password != env.AWS.ECRPassword() {
				t.Errorf("the credentials are not AWS and the issued password")
			}
		})
	}
	wg.Wait()
	if got := env.TokenCalls(); got != 1 {
		t.Fatalf("GetAuthorizationToken calls = %d, want 1 for 16 concurrent lookups", got)
	}
	// awslocal issues 12-hour tokens; they are renewed 15 minutes early.
	clk.advance(11*time.Hour + 44*time.Minute)
	if _, err := env.Keychain.Resolve(repo); err != nil {
		t.Fatal(err)
	}
	if got := env.TokenCalls(); got != 1 {
		t.Fatalf("calls = %d after 11h44m, want 1 (still cached)", got)
	}
	clk.advance(2 * time.Minute)
	if _, err := env.Keychain.Resolve(repo); err != nil {
		t.Fatal(err)
	}
	if got := env.TokenCalls(); got != 2 {
		t.Fatalf("calls = %d after 11h46m, want 2 (renewed)", got)
	}
}

func TestOtherRegistriesAreAnonymous(t *testing.T) {
	env := ecrauthtest.New(t)
	auth, err := env.Keychain.Resolve(resource(t, "registry.example.com"))
	if err != nil || auth != authn.Anonymous {
		t.Fatalf("Resolve = %v, %v; want Anonymous", auth, err)
	}
	if _, ok := env.Keychain.Describe("registry.example.com"); ok {
		t.Error("Describe claims registry.example.com")
	}
	if got, _ := env.Keychain.Describe("123456789012.dkr.ecr.eu-west-1.amazonaws.com"); got != "ECR credentials for region eu-west-1" {
		t.Errorf("Describe = %q", got)
	}
	if got := env.TokenCalls(); got != 0 {
		t.Errorf("calls = %d, want 0", got)
	}
}

func TestFailuresAreReusedForTheFailureTTLOnly(t *testing.T) {
	clk := &clock{t: time.Now()}
	env := ecrauthtest.New(t, func(o *ecrauth.Options) { o.Now = clk.now })
	if err := env.AWS.InjectFault(awslocal.Fault{Service: awslocal.ServiceECR, Kind: awslocal.FaultServerError}); err != nil {
		t.Fatal(err)
	}
	repo := resource(t, env.Registry.Host)
	_, err := env.Keychain.ResolveContext(t.Context(), repo)
	var e *ecrauth.Error
	if !errors.As(err, &e) {
		t.Fatalf("error = %v, want *ecrauth.Error", err)
	}
	if got, want := err.Error(), "ECR credentials for region "+ecrauthtest.Region+": AWS answered ServerException"; got != want {
		t.Errorf("error text = %q, want %q", got, want)
	}
	if strings.Contains(err.Error(), env.AWS.ECRPassword()) {
		t.Error("the error holds the password")
	}
	calls := env.TokenCalls() // the SDK retried
	if _, err := env.Keychain.Resolve(repo); err == nil {
		t.Fatal("a cached failure resolved")
	}
	if got := env.TokenCalls(); got != calls {
		t.Errorf("calls = %d within the failure TTL, want %d", got, calls)
	}
	env.AWS.ClearFaults()
	clk.advance(5 * time.Second)
	if _, err := env.Keychain.Resolve(repo); err != nil {
		t.Fatalf("after the failure TTL: %v", err)
	}
	if got := env.TokenCalls(); got != calls+1 {
		t.Errorf("calls = %d after the failure TTL, want %d", got, calls+1)
	}
}

func TestFetchIsBoundedByTheCallersContext(t *testing.T) {
	env := ecrauthtest.New(t)
	if err := env.AWS.InjectFault(awslocal.Fault{Service: awslocal.ServiceECR, Kind: awslocal.FaultLatency, Latency: time.Second}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	_, err := env.Keychain.ResolveContext(ctx, resource(t, env.Registry.Host))
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "ECR credentials for region") {
		t.Fatalf("error = %v, want an ECR error wrapping the deadline", err)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	for _, o := range []ecrauth.Options{
		{},
		{Timeout: time.Second, FailureTTL: -1},
		{Timeout: time.Second, Registries: map[string]string{"r.example": "not a region"}},
	} {
		if _, err := ecrauth.New(o); err == nil {
			t.Errorf("New(%+v) succeeded", o)
		}
	}
}

// TestFakeRegionsAreBounded is the admission issue's growth attack: pod
// creators write registry hosts, so each made-up region in an ECR-shaped
// host would add a client and a token entry for the life of the process.
// They are kept for at most a fixed number of regions, and the real
// registry keeps working after the flood.
func TestFakeRegionsAreBounded(t *testing.T) {
	env := ecrauthtest.New(t)
	for i := range 200 {
		host := fmt.Sprintf("123456789012.dkr.ecr.xx-fake-%d.amazonaws.com", i)
		_, _ = env.Keychain.ResolveContext(t.Context(), resource(t, host)) // awslocal answers for any region
	}
	if got := env.Keychain.Regions(); got > 32 {
		t.Errorf("%d regions kept after 200 made-up ones, want at most 32", got)
	}
	if _, err := env.Keychain.ResolveContext(t.Context(), resource(t, env.Registry.Host)); err != nil {
		t.Errorf("the real registry after the flood: %v", err)
	}
}
