package resolve

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"golang.org/x/sync/singleflight"

	"github.com/piggysec/piggy/services/image-resolver/internal/cache"
	"github.com/piggysec/piggy/services/image-resolver/internal/keychain"
)

// MeterName is the instrumentation scope of the resolver's metrics.
const MeterName = "github.com/piggysec/piggy/services/image-resolver/internal/resolve"

// Defaults of the limits (the service's flags start from them).
const (
	// DefaultMaxManifestBytes is 4 MiB: real manifests and indexes are a
	// few KiB; the OCI distribution spec asks registries to accept 4 MiB.
	DefaultMaxManifestBytes = 4 << 20
	// DefaultMaxConfigBytes is 1 MiB: image configs are a few KiB, with
	// long histories tens of KiB.
	DefaultMaxConfigBytes = 1 << 20
	// DefaultMaxColdLookups bounds registry conversations in flight; with
	// the size limits, about 16 x (4 + 1) MiB read at once at worst.
	DefaultMaxColdLookups = 16
)

// Options configures a Resolver.
type Options struct {
	// Keychain gathers the pod's pull secrets, then the cloud sources (ECR);
	// required (keychain.New(nil) runs without Kubernetes or cloud sources).
	Keychain *keychain.Gatherer
	// DefaultPlatform fills the platform fields a request leaves empty.
	DefaultPlatform Platform
	// InsecureRegistries (host[:port]) may be reached without TLS
	// verification or over plain HTTP, when a request asks for it.
	InsecureRegistries []string
	// Destinations are the internal addresses registries may have; others
	// are refused after DNS resolution, redirects included.
	Destinations Destinations
	// RootCAs verify registry certificates; nil means the system roots.
	RootCAs *x509.CertPool
	// Timeout bounds the registry and Kubernetes calls of one lookup.
	Timeout time.Duration
	// ConfigCacheSize bounds the digest → config cache.
	ConfigCacheSize int
	// TagCacheSize bounds the tag → digest cache.
	TagCacheSize int
	// TagTTL is how long a resolved tag is reused; zero disables the tag cache.
	TagTTL time.Duration
	// NegativeTTL is how long a failed lookup is reused; zero disables it.
	NegativeTTL time.Duration
	// MaxManifestBytes bounds a manifest or index read from a registry;
	// a larger one is refused before (declared) or while (sent) it is read.
	MaxManifestBytes int64
	// MaxConfigBytes bounds an image config blob in the same way.
	MaxConfigBytes int64
	// MaxColdLookups bounds the registry conversations in flight; further
	// cold lookups wait for a slot within the registry timeout. Together
	// with the two size limits it bounds the memory lookups can take.
	MaxColdLookups int
	// UserAgent is sent to registries.
	UserAgent string
	// Logger receives debug logs; nil discards.
	Logger *slog.Logger
	// MeterProvider creates the metrics; nil means the global one.
	MeterProvider metric.MeterProvider
	// Now is the clock of the caches; nil means time.Now.
	Now func() time.Time
}

// Request is one image lookup.
type Request struct {
	// Image is the reference as written in the pod spec.
	Image string
	// Namespace of the pod.
	Namespace string
	// ServiceAccount of the pod.
	ServiceAccount string
	// PullSecrets are tried before the service account's imagePullSecrets.
	PullSecrets []keychain.SecretRef
	// Platform overrides fields of the default platform.
	Platform Platform
	// SkipTLSVerify asks to skip registry TLS verification (insecure registries only).
	SkipTLSVerify bool
}

// Result is the configuration of the image that was read.
type Result struct {
	// Digest of the image manifest (for an index, of the chosen manifest).
	Digest string
	// Entrypoint of the image config.
	Entrypoint []string
	// Cmd of the image config.
	Cmd []string
	// Platform of the manifest that was read.
	Platform Platform
	// Cached is true when no registry call was made.
	Cached bool
}

// Explanation describes how a lookup went, for operators.
type Explanation struct {
	// Steps in the order they happened; names only, never credentials.
	Steps []string
	// AvailablePlatforms of the index, when the reference is an index.
	AvailablePlatforms []Platform
}

// CacheStats are the counters of both caches.
type CacheStats struct {
	// Tags is the tag → digest cache.
	Tags cache.Stats
	// Configs is the digest → config cache.
	Configs cache.Stats
}

// Resolver resolves images. It is safe for concurrent use.
type Resolver struct {
	keychain   *keychain.Gatherer
	defPlat    Platform
	insecure   map[string]bool
	timeout    time.Duration
	negTTL     time.Duration
	tagTTL     time.Duration
	userAgent  string
	log        *slog.Logger
	transports transports
	refs       *cache.LRU[refKey, parsedRef]
	tags       *cache.LRU[string, tagEntry]
	configs    *cache.LRU[configKey, imageConfig]
	flight     singleflight.Group
	lookups    metric.Int64Counter
	limits     sizeLimits
	cold       chan struct{} // one token per registry conversation in flight
}

// tagEntry is what a tags key resolved to: a manifest digest, or a failure.
type tagEntry struct {
	digest    v1.Hash
	index     bool       // the reference named an index
	platform  Platform   // the index entry's platform (index only)
	platforms []Platform // the index's platforms (index only)
	err       *Error
}

// imageConfig is the part of an image config the mutation needs.
type imageConfig struct {
	entrypoint, cmd []string
	platform        Platform
}

// New validates opts and returns a Resolver. It starts no goroutines.
func New(opts Options) (*Resolver, error) {
	if opts.Keychain == nil {
		return nil, errors.New("resolve: a keychain is required")
	}
	if opts.DefaultPlatform.OS == "" || opts.DefaultPlatform.Architecture == "" {
		return nil, errors.New("resolve: the default platform needs an os and an architecture")
	}
	if opts.Timeout <= 0 {
		return nil, errors.New("resolve: the registry timeout must be positive")
	}
	if opts.ConfigCacheSize < 1 || opts.TagCacheSize < 1 {
		return nil, errors.New("resolve: cache sizes must be positive")
	}
	if opts.TagTTL < 0 || opts.NegativeTTL < 0 {
		return nil, errors.New("resolve: cache TTLs must not be negative")
	}
	if opts.MaxManifestBytes < 1 || opts.MaxConfigBytes < 1 || opts.MaxColdLookups < 1 {
		return nil, errors.New("resolve: the size limits and the cold lookup limit must be positive")
	}
	insecure := map[string]bool{}
	for _, h := range opts.InsecureRegistries {
		reg, err := NormalizeRegistry(h)
		if err != nil {
			return nil, err
		}
		insecure[reg] = true
	}
	dial, err := newDialer(opts.Destinations)
	if err != nil {
		return nil, err
	}
	mp := opts.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	meter := mp.Meter(MeterName)
	lookups, err := meter.Int64Counter("piggy_image_resolver_lookups",
		metric.WithDescription("Image lookups (ResolveImage and ExplainImage) by outcome."), metric.WithUnit("{lookup}"))
	if err != nil {
		return nil, err
	}
	latency, err := meter.Float64Histogram("piggy_image_resolver_registry_request_duration",
		metric.WithDescription("Latency of HTTP requests to OCI registries."), metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8))
	if err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Resolver{
		keychain:   opts.Keychain,
		defPlat:    opts.DefaultPlatform,
		insecure:   insecure,
		timeout:    opts.Timeout,
		negTTL:     opts.NegativeTTL,
		tagTTL:     opts.TagTTL,
		userAgent:  opts.UserAgent,
		log:        log,
		transports: newTransports(opts.RootCAs, dial, latency),
		refs:       cache.New[refKey, parsedRef](opts.TagCacheSize, 0, opts.Now),
		tags:       cache.New[string, tagEntry](opts.TagCacheSize, opts.TagTTL, opts.Now),
		configs:    cache.New[configKey, imageConfig](opts.ConfigCacheSize, 0, opts.Now),
		lookups:    lookups,
		limits:     sizeLimits{manifest: opts.MaxManifestBytes, config: opts.MaxConfigBytes},
		cold:       make(chan struct{}, opts.MaxColdLookups),
	}
	if err := r.registerCacheMetrics(meter); err != nil {
		return nil, err
	}
	return r, nil
}

// NormalizeRegistry parses host[:port] the way image references name
// registries ("docker.io" becomes "index.docker.io").
func NormalizeRegistry(host string) (string, error) {
	reg, err := name.NewRegistry(strings.TrimSpace(host), name.StrictValidation)
	if err != nil {
		return "", fmt.Errorf("registry %q: %w", host, err)
	}
	return reg.RegistryStr(), nil
}

func (r *Resolver) registerCacheMetrics(meter metric.Meter) error {
	hits, err := meter.Int64ObservableCounter("piggy_image_resolver_cache_hits", metric.WithDescription("Cache lookups answered from the cache."), metric.WithUnit("{lookup}"))
	if err != nil {
		return err
	}
	misses, err := meter.Int64ObservableCounter("piggy_image_resolver_cache_misses", metric.WithDescription("Cache lookups that found no live entry."), metric.WithUnit("{lookup}"))
	if err != nil {
		return err
	}
	coalesced, err := meter.Int64ObservableCounter("piggy_image_resolver_cache_coalesced", metric.WithDescription("Lookups that joined an identical lookup in flight."), metric.WithUnit("{lookup}"))
	if err != nil {
		return err
	}
	evictions, err := meter.Int64ObservableCounter("piggy_image_resolver_cache_evictions", metric.WithDescription("Entries evicted to respect the cache capacity."), metric.WithUnit("{entry}"))
	if err != nil {
		return err
	}
	entries, err := meter.Int64ObservableGauge("piggy_image_resolver_cache_entries", metric.WithDescription("Entries held by the cache."), metric.WithUnit("{entry}"))
	if err != nil {
		return err
	}
	_, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		s := r.Stats()
		for _, c := range []struct {
			name string
			s    cache.Stats
		}{{"tags", s.Tags}, {"configs", s.Configs}} {
			attrs := metric.WithAttributes(attribute.String("cache", c.name))
			o.ObserveInt64(hits, c.s.Hits, attrs)
			o.ObserveInt64(misses, c.s.Misses, attrs)
			o.ObserveInt64(coalesced, c.s.Coalesced, attrs)
			o.ObserveInt64(evictions, c.s.Evictions, attrs)
			o.ObserveInt64(entries, int64(c.s.Entries), attrs)
		}
		return nil
	}, hits, misses, coalesced, evictions, entries)
	return err
}

// Stats returns the counters of both caches.
func (r *Resolver) Stats() CacheStats {
	return CacheStats{Tags: r.tags.Stats(), Configs: r.configs.Stats()}
}

// Resolve returns the configuration of req's image.
func (r *Resolver) Resolve(ctx context.Context, req Request) (Result, error) {
	res, _, err := r.lookup(ctx, req, nil)
	return res, err
}

// Explain resolves req like Resolve and reports the steps taken. The
// error, if any, is the lookup's.
func (r *Resolver) Explain(ctx context.Context, req Request) (Result, Explanation, error) {
	st := &steps{}
	res, platforms, err := r.lookup(ctx, req, st)
	return res, Explanation{Steps: st.list(), AvailablePlatforms: platforms}, err
}

// steps collects explanation lines; a nil *steps records nothing. It is
// safe for concurrent use (go-containerregistry pings https and http in
// parallel).
type steps struct {
	mu    sync.Mutex
	lines []string
}

func (s *steps) add(format string, args ...any) {
	if s == nil {
		return
	}
	line := fmt.Sprintf(format, args...)
	s.mu.Lock()
	s.lines = append(s.lines, line)
	s.mu.Unlock()
}

func (s *steps) addAll(lines []string) {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.lines = append(s.lines, lines...)
	s.mu.Unlock()
}

func (s *steps) list() []string {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.lines)
}

// The attributes of successful lookups, built once: a warm cache answers
// thousands of lookups a second and each records one.
var (
	okCached  = metric.WithAttributeSet(attribute.NewSet(attribute.String("outcome", "ok"), attribute.Bool("cached", true)))
	okFetched = metric.WithAttributeSet(attribute.NewSet(attribute.String("outcome", "ok"), attribute.Bool("cached", false)))
)

// target is a parsed, validated request.
// configKey keys the config cache by repository and digest. A digest
// alone is not enough: the digest of an index's child comes from whoever
// served the index, so any registry could name the digest of another
// tenant's private image and be answered from the cache. Within one
// repository, a caller that read the tag or index with its own
// credentials (the tag cache is keyed by them) has access to the images
// the repository holds; another repository must serve the image itself,
// which go-containerregistry checks against the digest.
type configKey struct {
	repository string // registry/repository
	digest     v1.Hash
}

func (t target) configKey(digest v1.Hash) configKey {
	return configKey{repository: t.ref.Context().Name(), digest: digest}
}

type target struct {
	ref      name.Reference
	name     string // ref.Name()
	registry string
	insecure bool
	platform Platform
	explicit bool
}

func (r *Resolver) lookup(ctx context.Context, req Request, st *steps) (res Result, platforms []Platform, err error) {
	defer func() {
		attrs := okFetched
		switch {
		case err != nil:
			attrs = metric.WithAttributes(attribute.String("outcome", Outcome(err)), attribute.Bool("cached", res.Cached))
		case res.Cached:
			attrs = okCached
		}
		r.lookups.Add(ctx, 1, attrs)
	}()
	t, err := r.parse(req)
	if err != nil {
		return Result{}, nil, err
	}
	if st != nil {
		how := "default"
		if t.explicit {
			how = "requested"
		}
		st.add("reference %s (registry %s)", t.name, t.registry)
		st.add("platform %s (%s)", t.platform, how)
		if t.insecure {
			st.add("TLS verification skipped: %s is an operator-listed insecure registry", t.registry)
		}
	}

	cands, err := r.credentials(ctx, req, t, st)
	if err != nil {
		return Result{}, nil, err
	}

	key := strings.Join([]string{t.name, t.platform.String(), strconv.FormatBool(t.insecure), cands.Identity}, "\x00")
	if e, ok := r.tags.Get(key); ok {
		if e.err != nil {
			st.add("tag cache: hit on a failure cached for at most %s", r.negTTL)
			return Result{}, e.platforms, e.err
		}
		if cfg, ok := r.configs.Get(t.configKey(e.digest)); ok {
			if st != nil {
				st.add("tag cache: hit (%s)", e.digest)
				st.add("config cache: hit")
			}
			res, err := result(t, e, cfg, true)
			return res, e.platforms, err
		}
		st.add("tag cache: hit (%s), but the config was evicted", e.digest)
	} else {
		st.add("tag cache: miss")
	}

	leader := false
	ch := r.flight.DoChan(key, func() (any, error) {
		leader = true
		return r.fetch(ctx, t, cands, key), nil
	})
	select {
	case <-ctx.Done():
		return Result{}, nil, fmt.Errorf("resolve %s: %w", req.Image, ctx.Err())
	case out := <-ch:
		if !leader {
			r.tags.AddCoalesced(1)
			st.add("joined an identical lookup already in flight")
		}
		f := out.Val.(*fetched)
		st.addAll(f.steps.list())
		if f.entry.err != nil {
			return Result{}, f.entry.platforms, f.entry.err
		}
		res, err := result(t, f.entry, f.config, false)
		return res, f.entry.platforms, err
	}
}

// credentials gathers the request's pull secrets and asks the cloud
// sources, all within one registry timeout.
func (r *Resolver) credentials(ctx context.Context, req Request, t target, st *steps) (keychain.Candidates, error) {
	kctx := ctx
	if deadline, ok := ctx.Deadline(); !ok || time.Until(deadline) > r.timeout {
		var cancel context.CancelFunc
		kctx, cancel = context.WithTimeout(ctx, r.timeout)
		defer cancel()
	}
	set, err := r.keychain.Gather(kctx, keychain.Request{Namespace: req.Namespace, ServiceAccount: req.ServiceAccount, PullSecrets: req.PullSecrets})
	if err != nil {
		return keychain.Candidates{}, r.credentialError(ctx, err, kctx.Err() != nil && ctx.Err() == nil)
	}
	st.addAll(set.Notes)
	cands, err := set.For(kctx, t.ref.Context())
	if err != nil {
		return keychain.Candidates{}, r.credentialError(ctx, err, false)
	}
	st.addAll(cands.Notes)
	return cands, nil
}

func (r *Resolver) credentialError(ctx context.Context, err error, timedOut bool) error {
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("read pull secrets: %w", ctx.Err())
	case errors.Is(err, keychain.ErrReadRefused):
		return newError(ErrFailedPrecondition, err, "the resolver may not read a named pull secret or service account: %s", safeKubeMessage(err))
	case errors.Is(err, keychain.ErrForeignNamespace):
		return newError(ErrPermissionDenied, err, "%s", safeKubeMessage(err))
	case errors.Is(err, keychain.ErrInvalidSecret):
		return newError(ErrFailedPrecondition, err, "%s", safeKubeMessage(err))
	case timedOut:
		return newError(ErrUnavailable, err, "the Kubernetes API did not answer in time")
	default:
		return newError(ErrUnavailable, err, "the Kubernetes API could not be read")
	}
}

// safeKubeMessage is the first line of a keychain error: the keychain
// builds it from object names and API reasons only.
func safeKubeMessage(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

func (r *Resolver) parse(req Request) (target, error) {
	if strings.TrimSpace(req.Image) == "" {
		return target{}, newError(ErrInvalidArgument, nil, "image reference is empty")
	}
	ref, err := r.reference(req.Image, false)
	if err != nil {
		return target{}, err
	}
	if req.SkipTLSVerify {
		if !r.insecure[ref.registry] {
			return target{}, newError(ErrInvalidArgument, nil, "skip_tls_verify refused: registry %s is not listed in --insecure-registries", ref.registry)
		}
		if ref, err = r.reference(req.Image, true); err != nil {
			return target{}, err
		}
	}
	t := target{ref: ref.ref, name: ref.name, registry: ref.registry, insecure: req.SkipTLSVerify}
	if p := req.Platform; strings.Contains(p.OS+p.Architecture+p.Variant, "/") {
		return target{}, newError(ErrInvalidArgument, nil, "platform fields must not contain \"/\"")
	}
	if req.Platform.OS == "" && req.Platform.Architecture == "" && req.Platform.Variant != "" {
		return target{}, newError(ErrInvalidArgument, nil, "platform variant %q given without an architecture", req.Platform.Variant)
	}
	t.platform, t.explicit = req.Platform.withDefault(r.defPlat)
	return t, nil
}

// refKey is an image reference as written in a pod, and whether it is
// parsed for an insecure registry.
type refKey struct {
	image    string
	insecure bool
}

// parsedRef is a parsed reference with the names a lookup uses.
type parsedRef struct {
	ref      name.Reference
	name     string // ref.Name(): the fully qualified reference
	registry string // the registry's host[:port]
}

// reference parses image, or returns it parsed earlier: parsing depends on
// the string alone, and a warm lookup would otherwise spend more on it than
// on the caches. Invalid references are not kept.
func (r *Resolver) reference(image string, insecure bool) (parsedRef, error) {
	key := refKey{image: image, insecure: insecure}
	if p, ok := r.refs.Get(key); ok {
		return p, nil
	}
	var opts []name.Option
	if insecure {
		opts = append(opts, name.Insecure)
	}
	ref, err := name.ParseReference(image, opts...)
	if err != nil {
		return parsedRef{}, newError(ErrInvalidArgument, err, "image reference %q is invalid", image)
	}
	p := parsedRef{ref: ref, name: ref.Name(), registry: ref.Context().RegistryStr()}
	r.refs.Add(key, p)
	return p, nil
}

// result builds the response from a cache entry and a config, checking a
// single-manifest image against an explicitly requested platform.
func result(t target, e tagEntry, cfg imageConfig, cached bool) (Result, error) {
	plat := cfg.platform
	if e.index {
		plat = e.platform
	} else if t.explicit && !t.platform.satisfiedBy(cfg.platform) {
		return Result{}, &Error{
			Kind:      ErrNoMatchingPlatform,
			Message:   fmt.Sprintf("image %s is a single-platform image for %s; %s was requested (available: %s)", t.name, cfg.platform, t.platform, cfg.platform),
			Platforms: []Platform{cfg.platform},
		}
	}
	return Result{
		Digest:     e.digest.String(),
		Entrypoint: slices.Clone(cfg.entrypoint),
		Cmd:        slices.Clone(cfg.cmd),
		Platform:   plat,
		Cached:     cached,
	}, nil
}

// fetched is the outcome of one coalesced registry conversation.
type fetched struct {
	entry  tagEntry
	config imageConfig
	steps  *steps
}

// fetch talks to the registry for a tags key: it tries the credential
// candidates in order (the next one after a 401, 403 or 404, as the
// kubelet does), fills the caches and returns the outcome. It runs on a
// context detached from the caller's cancellation, bounded by the
// registry timeout.
func (r *Resolver) fetch(callerCtx context.Context, t target, creds keychain.Candidates, key string) *fetched {
	cands := creds.List
	ctx, cancel := context.WithTimeout(context.WithoutCancel(callerCtx), r.timeout)
	defer cancel()
	f := &fetched{steps: &steps{}}

	// A lookup that missed the cache just before another one filled it
	// must not go to the registry again.
	if e, ok := r.tags.Peek(key); ok && e.err == nil {
		if cfg, ok := r.configs.Peek(t.configKey(e.digest)); ok {
			f.steps.add("an identical lookup just filled the cache")
			f.entry, f.config = e, cfg
			return f
		}
	}

	select {
	case r.cold <- struct{}{}:
		defer func() { <-r.cold }()
	case <-ctx.Done():
		// Not a property of the image: nothing is cached.
		e := newError(ErrUnavailable, ctx.Err(), "the resolver is busy (%d registry lookups in flight) and had no slot for %s in time", cap(r.cold), t.name)
		f.steps.add("failed: %s", e.Message)
		f.entry = tagEntry{err: e}
		return f
	}

	var last *Error
	for i, c := range cands {
		f.steps.add("trying credentials: %s", c.Source)
		entry, cfg, err := r.read(ctx, t, c, f.steps)
		if err == nil {
			f.entry, f.config = entry, cfg
			if r.tagTTL > 0 {
				r.tags.Add(key, entry)
			}
			return f
		}
		last = err
		retry := errors.Is(err, ErrUnauthenticated) || errors.Is(err, ErrPermissionDenied) || errors.Is(err, ErrNotFound)
		if retry && i < len(cands)-1 && ctx.Err() == nil {
			f.steps.add("%s; trying the next credentials", err.Message)
			continue
		}
		break
	}
	if len(creds.Unavailable) > 0 && (errors.Is(last, ErrUnauthenticated) || errors.Is(last, ErrPermissionDenied) || errors.Is(last, ErrNotFound)) {
		// Say why the registry saw no (or other) credentials; the texts
		// name sources and AWS error codes only.
		e := *last
		e.Message += "; credentials could not be obtained: " + strings.Join(creds.Unavailable, "; ")
		last = &e
	}
	f.steps.add("failed: %s", last.Message)
	r.log.DebugContext(ctx, "image lookup failed", "image", t.name, "error", last.Error())
	f.entry = tagEntry{err: last, platforms: last.Platforms}
	if r.negTTL > 0 {
		r.tags.AddTTL(key, f.entry, r.negTTL)
	}
	return f
}

// read resolves the reference with one credential candidate.
func (r *Resolver) read(ctx context.Context, t target, c keychain.Candidate, st *steps) (tagEntry, imageConfig, *Error) {
	lt := &lookupTransport{next: r.transports.verified, steps: st, limits: r.limits}
	if t.insecure {
		lt.next, lt.httpHost = r.transports.insecure, t.registry
	}
	opts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithTransport(lt),
		remote.WithAuthFromKeychain(c.Keychain),
		remote.WithPlatform(t.platform.v1()),
		remote.WithRetryBackoff(remote.Backoff{Duration: 100 * time.Millisecond, Factor: 2, Jitter: 0.1, Steps: 2}),
	}
	if r.userAgent != "" {
		opts = append(opts, remote.WithUserAgent(r.userAgent))
	}
	fail := func(err error) (tagEntry, imageConfig, *Error) {
		return tagEntry{}, imageConfig{}, classify(err, t.name, t.registry, ctx.Err() != nil, lt.observed())
	}

	desc, err := remote.Get(t.ref, opts...)
	if err != nil {
		return fail(err)
	}
	if desc.MediaType == "" && len(desc.Manifest) == 0 {
		// A registry (or a proxy before it) that gives up may still send
		// a 200 with nothing in it; that says nothing about the image.
		if ctx.Err() != nil {
			return fail(ctx.Err())
		}
		return tagEntry{}, imageConfig{}, newError(ErrUnavailable, nil, "registry %s sent an empty answer for %s", t.registry, t.name)
	}
	var (
		entry = tagEntry{digest: desc.Digest}
		image func() (v1.Image, error)
	)
	switch {
	case desc.MediaType.IsIndex():
		idx, err := desc.ImageIndex()
		if err != nil {
			return fail(err)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return fail(err)
		}
		entry.index = true
		entry.platforms = indexPlatforms(im.Manifests)
		st.add("index %s offers %s", desc.Digest, platformList(entry.platforms))
		child, ok := choose(im.Manifests, t.platform)
		if !ok {
			e := &Error{
				Kind:      ErrNoMatchingPlatform,
				Message:   fmt.Sprintf("image %s has no manifest for %s (available: %s)", t.name, t.platform, platformList(entry.platforms)),
				Platforms: entry.platforms,
			}
			return tagEntry{}, imageConfig{}, e
		}
		if !child.MediaType.IsImage() {
			return tagEntry{}, imageConfig{}, newError(ErrFailedPrecondition, nil, "image %s: the manifest for %s has unsupported media type %s", t.name, t.platform, child.MediaType)
		}
		if child.Size > r.limits.manifest {
			return tagEntry{}, imageConfig{}, tooLarge(t.name, "manifest", child.Size, r.limits.manifest)
		}
		entry.digest, entry.platform = child.Digest, fromV1(child.Platform)
		st.add("chose %s for %s", child.Digest, entry.platform)
		image = func() (v1.Image, error) { return idx.Image(child.Digest) }
	case desc.MediaType.IsImage():
		st.add("single-platform manifest %s", desc.Digest)
		image = desc.Image
	default:
		return tagEntry{}, imageConfig{}, newError(ErrFailedPrecondition, nil, "image %s has unsupported media type %s", t.name, desc.MediaType)
	}

	// The manifest (or the index naming it) was just read from this
	// repository with the caller's credentials: the config cache may answer
	// for this digest in this repository (see configKey).
	if cfg, ok := r.configs.Get(t.configKey(entry.digest)); ok {
		st.add("config cache: hit")
		return entry, cfg, nil
	}
	st.add("config cache: miss")
	img, err := image()
	if err != nil {
		return fail(err)
	}
	m, err := img.Manifest()
	if err != nil {
		return fail(err)
	}
	if m.Config.Size > r.limits.config {
		return tagEntry{}, imageConfig{}, tooLarge(t.name, "config", m.Config.Size, r.limits.config)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return fail(err)
	}
	cfg := imageConfig{
		entrypoint: cf.Config.Entrypoint,
		cmd:        cf.Config.Cmd,
		platform:   Platform{OS: cf.OS, Architecture: cf.Architecture, Variant: cf.Variant},
	}
	r.configs.Add(t.configKey(entry.digest), cfg)
	return entry, cfg, nil
}
