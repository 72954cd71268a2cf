// Package ecrauth is the Amazon ECR credential source of the image-resolver:
// an authn.Keychain that answers for ECR registries with the registry token
// of ecr:GetAuthorizationToken.
//
// Unlike the ecr-login credential helper it loads the AWS configuration
// once (LoadConfig, at start), creates one ECR client per region, caches a
// region's token until shortly before it expires, coalesces concurrent
// fetches of the same region, bounds every fetch with the caller's context
// and a timeout, and never writes files or panics. A failed fetch is
// reused for at most Options.FailureTTL.
//
// Errors ([Error]) name the region and an AWS error code or a transport
// condition; they never hold tokens, keys or AWS response bodies.
package ecrauth

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/ecr"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/google/go-containerregistry/pkg/authn"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"golang.org/x/sync/singleflight"

	"github.com/piggysec/piggy/libs/awsregion"
	"github.com/piggysec/piggy/services/image-resolver/internal/cache"
)

// hostPattern matches ECR private registry hosts:
// <account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn].
var hostPattern = regexp.MustCompile(`^[0-9]{12}\.dkr\.ecr(?:-fips)?\.(` + awsregion.Pattern + `)\.amazonaws\.com(?:\.cn)?$`)

// RegionOf returns the region of an ECR registry host, or ok=false when
// host is not one.
func RegionOf(host string) (region string, ok bool) {
	m := hostPattern.FindStringSubmatch(strings.ToLower(host))
	if m == nil {
		return "", false
	}
	return m[1], true
}

// API is the part of the ECR client the keychain uses.
type API interface {
	GetAuthorizationToken(ctx context.Context, in *ecr.GetAuthorizationTokenInput, optFns ...func(*ecr.Options)) (*ecr.GetAuthorizationTokenOutput, error)
}

// LoadConfig loads the process's one AWS configuration through the SDK's
// default chain (region and static keys from the environment, IRSA web
// identity from AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE, shared
// files, endpoints from AWS_ENDPOINT_URL*, AWS_CA_BUNDLE), with the
// standard retryer capped so that a fetch fits in a lookup. It makes no
// network call: credentials are fetched, and cached by the SDK, on first use.
func LoadConfig(ctx context.Context) (aws.Config, error) {
	cfg, err := config.LoadDefaultConfig(ctx,
		config.WithHTTPClient(awshttp.NewBuildableClient()),
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = 3
				o.MaxBackoff = time.Second
			})
		}),
	)
	if err != nil {
		return aws.Config{}, fmt.Errorf("load AWS configuration: %w", err)
	}
	return cfg, nil
}

// Options configure a Keychain.
type Options struct {
	// Config is the AWS configuration (LoadConfig). Its region is not used:
	// each registry's region comes from its host or from Registries.
	Config aws.Config
	// Registries maps registry hosts (host[:port], as image references name
	// them) to regions, for private endpoints and tests. Hosts matching the
	// ECR pattern need no entry.
	Registries map[string]string
	// Timeout bounds one GetAuthorizationToken fetch (with retries); it is
	// required.
	Timeout time.Duration
	// FailureTTL is how long a failed fetch is reused before AWS is asked
	// again; zero asks every time.
	FailureTTL time.Duration
	// RefreshMargin is how long before its expiry a token is replaced.
	// Default 15 minutes (at most half the token's lifetime).
	RefreshMargin time.Duration
	// NewClient returns the ECR client of a region; default a traced
	// ecr.NewFromConfig client. Tests may substitute a fake.
	NewClient func(region string) API
	// Logger receives debug lines (regions and error codes only); nil discards.
	Logger *slog.Logger
	// Now is the clock of the token cache; nil means time.Now.
	Now func() time.Time
}

// Keychain resolves ECR registries to their registry token; other
// registries resolve to authn.Anonymous. It is safe for concurrent use.
type Keychain struct {
	registries map[string]string
	timeout    time.Duration
	failureTTL time.Duration
	margin     time.Duration
	newClient  func(region string) API
	log        *slog.Logger
	now        func() time.Time
	flight     singleflight.Group

	mu sync.Mutex // makes creating a region's client happen once
	// By region, at most maxRegions each: the region comes from the
	// registry host a pod creator writes, so fake regions must not grow
	// them. AWS has a few dozen regions and a cluster uses a handful.
	clients *cache.LRU[string, API]
	tokens  *cache.LRU[string, *entry]
}

// maxRegions bounds the regions whose client and token are kept.
const maxRegions = 32

// Regions returns how many regions have a client (tests of the bound).
func (k *Keychain) Regions() int { return k.clients.Len() }

// entry is a region's cached token or failure.
type entry struct {
	auth  authn.AuthConfig
	err   *Error
	until time.Time
}

// New returns a Keychain. It makes no network call and starts no goroutine.
func New(opts Options) (*Keychain, error) {
	if opts.Timeout <= 0 {
		return nil, errors.New("ecrauth: the timeout must be positive")
	}
	if opts.FailureTTL < 0 || opts.RefreshMargin < 0 {
		return nil, errors.New("ecrauth: durations must not be negative")
	}
	k := &Keychain{
		registries: map[string]string{},
		timeout:    opts.Timeout,
		failureTTL: opts.FailureTTL,
		margin:     opts.RefreshMargin,
		newClient:  opts.NewClient,
		log:        opts.Logger,
		now:        opts.Now,
		clients:    cache.New[string, API](maxRegions, 0, nil),
		tokens:     cache.New[string, *entry](maxRegions, 0, nil),
	}
	for host, region := range opts.Registries {
		if !awsregion.Valid(region) {
			return nil, fmt.Errorf("ecrauth: registry %s: %q is not a region", host, region)
		}
		k.registries[strings.ToLower(host)] = region
	}
	if k.margin == 0 {
		k.margin = 15 * time.Minute
	}
	if k.log == nil {
		k.log = slog.New(slog.DiscardHandler)
	}
	if k.now == nil {
		k.now = time.Now
	}
	if k.newClient == nil {
		cfg := opts.Config
		// The configuration may hold a client built for AWS_CA_BUNDLE;
		// instrument whatever transport it ended up with.
		var transport http.RoundTripper = http.DefaultTransport
		switch hc := cfg.HTTPClient.(type) {
		case *awshttp.BuildableClient:
			transport = hc.GetTransport()
		case *http.Client:
			if hc.Transport != nil {
				transport = hc.Transport
			}
		}
		traced := &http.Client{Transport: otelhttp.NewTransport(transport)}
		k.newClient = func(region string) API {
			return ecr.NewFromConfig(cfg, func(o *ecr.Options) {
				o.Region = region
				o.HTTPClient = traced
			})
		}
	}
	return k, nil
}

// Region returns the region whose token k uses for registry (host[:port]),
// or ok=false when k does not serve registry.
func (k *Keychain) Region(registry string) (region string, ok bool) {
	if r, ok := k.registries[strings.ToLower(registry)]; ok {
		return r, true
	}
	return RegionOf(registry)
}

// Describe names the source for a registry, for explanations: "ECR
// credentials for region eu-west-1".
func (k *Keychain) Describe(registry string) (name string, ok bool) {
	region, ok := k.Region(registry)
	if !ok {
		return "", false
	}
	return "ECR credentials for region " + region, true
}

// Resolve implements authn.Keychain, bounded by the keychain's timeout.
func (k *Keychain) Resolve(target authn.Resource) (authn.Authenticator, error) {
	return k.ResolveContext(context.Background(), target)
}

// ResolveContext implements authn.ContextKeychain: the registry token of
// target's region, from the cache or from one GetAuthorizationToken call
// shared by every concurrent caller. Registries k does not serve resolve
// to authn.Anonymous. Errors are *Error.
func (k *Keychain) ResolveContext(ctx context.Context, target authn.Resource) (authn.Authenticator, error) {
	region, ok := k.Region(target.RegistryStr())
	if !ok {
		return authn.Anonymous, nil
	}
	if e := k.cached(region); e != nil {
		if e.err != nil {
			return nil, e.err
		}
		return authn.FromConfig(e.auth), nil
	}
	ch := k.flight.DoChan(region, func() (any, error) { return k.fetch(ctx, region), nil })
	select {
	case <-ctx.Done():
		return nil, &Error{Region: region, Reason: "the lookup ended before AWS answered", Err: ctx.Err()}
	case res := <-ch:
		e := res.Val.(*entry)
		if e.err != nil {
			return nil, e.err
		}
		return authn.FromConfig(e.auth), nil
	}
}

// cached returns the live cache entry of region, or nil.
func (k *Keychain) cached(region string) *entry {
	if e, ok := k.tokens.Peek(region); ok && k.now().Before(e.until) {
		return e
	}
	return nil
}

// client returns region's client, creating it on first use.
func (k *Keychain) client(region string) API {
	k.mu.Lock()
	defer k.mu.Unlock()
	c, ok := k.clients.Get(region)
	if !ok {
		c = k.newClient(region)
		k.clients.Add(region, c)
	}
	return c
}

// fetch gets a token for region on a context detached from the first
// caller's cancellation (others may be waiting for it), bounded by the
// timeout, and caches the outcome.
func (k *Keychain) fetch(callerCtx context.Context, region string) *entry {
	// A caller that missed the cache just before another fetch filled it
	// must not ask AWS again.
	if e := k.cached(region); e != nil {
		return e
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(callerCtx), k.timeout)
	defer cancel()
	start := k.now()
	e := &entry{}
	auth, expires, err := k.get(ctx, region)
	if err != nil {
		e.err = err
		e.until = start.Add(k.failureTTL)
		k.log.DebugContext(ctx, "ECR authorization token fetch failed", "region", region, "reason", err.Reason)
	} else {
		e.auth = auth
		margin := min(k.margin, expires.Sub(start)/2)
		e.until = expires.Add(-margin)
		k.log.DebugContext(ctx, "ECR authorization token fetched", "region", region, "expires", expires)
	}
	if e.until.After(start) {
		k.tokens.Add(region, e)
	} else {
		k.tokens.Remove(region)
	}
	return e
}

// get calls GetAuthorizationToken and decodes the token.
func (k *Keychain) get(ctx context.Context, region string) (authn.AuthConfig, time.Time, *Error) {
	out, err := k.client(region).GetAuthorizationToken(ctx, &ecr.GetAuthorizationTokenInput{})
	if err != nil {
		return authn.AuthConfig{}, time.Time{}, &Error{Region: region, Reason: reason(ctx, err), Err: err}
	}
	if len(out.AuthorizationData) == 0 || out.AuthorizationData[0].AuthorizationToken == nil {
		return authn.AuthConfig{}, time.Time{}, &Error{Region: region, Reason: "GetAuthorizationToken returned no token"}
	}
	d := out.AuthorizationData[0]
	raw, err := base64.StdEncoding.DecodeString(aws.ToString(d.AuthorizationToken))
	user, pass, ok := strings.Cut(string(raw), ":")
	if err != nil || !ok || user == "" || pass == "" {
		// Never quote the token.
		return authn.AuthConfig{}, time.Time{}, &Error{Region: region, Reason: "GetAuthorizationToken returned a malformed token"}
	}
	expires := k.now().Add(time.Hour) // ECR always sets expiresAt; be conservative if not
	if d.ExpiresAt != nil {
		expires = *d.ExpiresAt
	}
	return authn.AuthConfig{Username: user, Password: pass}, expires, nil
}

// reason describes a failed call without response bodies or credentials.
func reason(ctx context.Context, err error) string {
	var (
		ae    smithy.APIError
		send  *smithyhttp.RequestSendError
		netOp *net.OpError
	)
	switch {
	case ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded):
		return "AWS did not answer in time"
	case errors.As(err, &ae):
		return "AWS answered " + ae.ErrorCode()
	case errors.As(err, &send), errors.As(err, &netOp):
		return "AWS is unreachable"
	default:
		return "GetAuthorizationToken failed"
	}
}

// Error is a failed token fetch. Its text names the region and an AWS
// error code or transport condition only; Err, the SDK's error, is for
// server logs.
type Error struct {
	// Region whose token could not be obtained.
	Region string
	// Reason is a client-safe description.
	Reason string
	// Err is the underlying cause, possibly nil.
	Err error
}

// Error describes the failure without credentials: "ECR credentials for
// region eu-west-1: AWS answered AccessDeniedException".
func (e *Error) Error() string { return "ECR credentials for region " + e.Region + ": " + e.Reason }

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }
