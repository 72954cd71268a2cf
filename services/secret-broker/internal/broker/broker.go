// Package broker is the secret-broker's domain: it authenticates the
// calling container (authn), ties it to its pod (podcheck), works out the
// pod's source, authorises it (policy) on every request, reads the values
// through a bounded, coalescing cache (cache, awssecrets) and returns only
// the requested keys. It logs one line per request and records the request
// metrics. Transports (grpcapi) only decode, call it and map its errors.
//
// What a request may cost AWS is bounded: a region outside the operator's
// list, and a name outside the caller's rules that no PIGGY_ALLOWED_SA may
// grant (policy.Rules.ListMayGrant), are refused before any AWS call; not
// found, access denied and content that cannot be served are remembered
// per source for the cache's NegativeTTL; the cache is bounded by bytes;
// and each pod may cause at most a burst of AWS reads, refilled at a fixed
// rate.
//
// Every refusal of a name outside the caller's own rules is one message,
// whether the secret exists, is missing, has an allow-list or not (no
// existence oracle); the reason goes to the request's log line only.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	corev1 "k8s.io/api/core/v1"

	"github.com/piggysec/piggy/libs/logging"
	"github.com/piggysec/piggy/libs/podgrant"
	"github.com/piggysec/piggy/libs/podsettings"
	"github.com/piggysec/piggy/services/secret-broker/internal/authn"
	"github.com/piggysec/piggy/services/secret-broker/internal/awssecrets"
	"github.com/piggysec/piggy/services/secret-broker/internal/cache"
	"github.com/piggysec/piggy/services/secret-broker/internal/fault"
	"github.com/piggysec/piggy/services/secret-broker/internal/podcheck"
	"github.com/piggysec/piggy/services/secret-broker/internal/policy"
)

// Limits of a request.
const (
	MaxKeys      = 256
	MaxKeyLength = 256
)

// Authenticator reviews tokens (authn.Authenticator).
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (authn.Identity, cache.Result, error)
	Stats() cache.Stats
}

// PodChecker verifies the caller's pod and container (podcheck.Checker).
type PodChecker interface {
	Check(ctx context.Context, id authn.Identity, ctr podcheck.Container) (podcheck.Result, error)
	// Admitted is what a container of pod was admitted to read, for
	// ExplainAccess.
	Admitted(pod *corev1.Pod, container string) (podgrant.Grant, error)
}

// Fetcher reads a source from AWS (awssecrets.Fetcher).
type Fetcher interface {
	Fetch(ctx context.Context, src awssecrets.Source) (*awssecrets.Secret, error)
}

// PodGetter reads a whole pod from the API, for ExplainAccess.
type PodGetter interface {
	GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error)
}

// Options configure a Broker.
type Options struct {
	// Rules are the operator's authorisation rules.
	Rules policy.Rules
	// Defaults are the cluster-wide pod settings (for ExplainAccess; the
	// PodChecker has its own copy).
	Defaults podsettings.Defaults
	// DefaultRegion is used when neither the pod nor the defaults name one.
	DefaultRegion string
	// Regions are the regions pods may name (the operator's list and the
	// broker's own region); empty means DefaultRegion only.
	Regions []string
	// Cache configures the secret cache (its ServeStale, Size and
	// CacheError are set here; its LoadTimeout, the deadline of an AWS read,
	// defaults to awssecrets.ReadTimeout of RequestTimeout). Its MaxBytes
	// bounds the values' sizes and its NegativeTTL says how long not found,
	// access denied and unservable content are remembered per source.
	Cache cache.Options
	// PodReadBurst is how many AWS reads one pod may cause at once, and
	// PodReadInterval how often it gets one more; PodReadBurst < 1 sets no
	// limit. The refusal names them as the flags FlagPodReadBurst and
	// FlagPodReadInterval.
	PodReadBurst    int
	PodReadInterval time.Duration
	// RequestTimeout bounds a whole GetSecrets call.
	RequestTimeout time.Duration
	Log            *slog.Logger
	Tracer         trace.Tracer
	Meter          metric.Meter
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Starts answer a container once per start; nil answers every request.
	Starts StartClaims
	// Legacy serves the original Piggy's protocol (GetLegacySecrets); nil
	// refuses it.
	Legacy *Legacy
}

// Names of the settings in refusals (the broker's flags).
const (
	FlagPodReadBurst    = "--pod-aws-read-burst"
	FlagPodReadInterval = "--pod-aws-read-interval"
	FlagAllowListGrants = "--allowed-sa-names"
)

// Broker serves secret requests. Create it with New.
type Broker struct {
	authn   Authenticator
	pods    PodChecker
	fetcher Fetcher
	getter  PodGetter
	opts    Options
	secrets *cache.Cache[*awssecrets.Secret]
	budget  *readBudget
	// deprecation limits the warnings about the original protocol.
	deprecation deprecation

	requests metric.Int64Counter
	duration metric.Float64Histogram
}

// New returns a Broker.
func New(a Authenticator, pods PodChecker, f Fetcher, getter PodGetter, opts Options) (*Broker, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 8 * time.Second
	}
	opts.Cache.ServeStale = awssecrets.Transient
	opts.Cache.CacheError = rememberedFailure
	opts.Cache.Size = func(v any) int64 { return v.(*awssecrets.Secret).Size() }
	if opts.Cache.Now == nil {
		opts.Cache.Now = opts.Now
	}
	if opts.Cache.LoadTimeout <= 0 {
		opts.Cache.LoadTimeout = awssecrets.ReadTimeout(opts.RequestTimeout)
	}
	if len(opts.Regions) == 0 && opts.DefaultRegion != "" {
		opts.Regions = []string{opts.DefaultRegion}
	}
	opts.Regions = slices.Sorted(slices.Values(opts.Regions))
	b := &Broker{authn: a, pods: pods, fetcher: f, getter: getter, opts: opts,
		secrets: cache.New[*awssecrets.Secret](opts.Cache),
		budget:  newReadBudget(opts.PodReadBurst, opts.PodReadInterval, opts.Now)}
	if err := b.instrument(); err != nil {
		return nil, err
	}
	return b, nil
}

// Request is one container's request.
type Request struct {
	// Token is the bearer token (the pod's projected service account token).
	Token string
	// ContainerUID and Signature identify the container.
	ContainerUID, Signature string
	// Keys are the keys the container references.
	Keys []string
	// FetchID is the launcher's id of this fetch, the same in its retries.
	FetchID string
}

// Response carries the values of the requested keys.
type Response struct {
	Values map[string]logging.Secret
	// Missing are requested keys the secret does not hold, sorted.
	Missing []string
	// SourceName is the secret name or SSM path.
	SourceName string
}

// caller is what the log line and metrics say about a request.
type caller struct {
	id        authn.Identity
	source    string
	container string
	cacheRes  string
	// legacy marks a request of the original Piggy's protocol.
	legacy bool
}

// podKey identifies the caller's pod for its AWS read budget.
func (c *caller) podKey() string {
	if c.id.PodUID != "" {
		return c.id.PodUID
	}
	return c.id.Namespace + "/" + c.id.PodName
}

// GetSecrets serves one request. Errors are *fault.Error.
func (b *Broker) GetSecrets(ctx context.Context, req Request) (resp Response, err error) {
	start := b.opts.Now()
	ctx, cancel := context.WithTimeout(ctx, b.opts.RequestTimeout)
	defer cancel()
	var c caller
	defer func() { b.finish(ctx, start, &c, len(req.Keys), err) }()

	id, _, err := b.authn.Authenticate(ctx, req.Token)
	if err != nil {
		return Response{}, err
	}
	c.id = id
	if err := validateKeys(req.Keys); err != nil {
		return Response{}, err
	}
	pc, err := b.pods.Check(ctx, id, podcheck.Container{UID: req.ContainerUID, Signature: req.Signature})
	if err != nil {
		return Response{}, err
	}
	c.container = pc.ContainerName
	if c.id.PodName == "" { // unbound token: the pod was found by container UID
		c.id.PodName, c.id.PodUID = pc.Pod.Name, string(pc.Pod.UID)
	}
	return b.serve(ctx, &c, req.Keys, req.FetchID, pc)
}

// serve answers the verified container pc for keys: they must be granted,
// the container's start is claimed, and the source is authorised and read.
func (b *Broker) serve(ctx context.Context, c *caller, keys []string, fetchID string, pc podcheck.Result) (Response, error) {
	if err := granted(keys, pc); err != nil {
		return Response{}, err
	}
	if err := b.claimStart(ctx, fetchID, pc); err != nil {
		return Response{}, err
	}
	src, err := b.source(pc.Grant.Source)
	if err != nil {
		return Response{}, err
	}
	c.source = src.Name()
	who := policy.Caller{Namespace: c.id.Namespace, ServiceAccount: c.id.ServiceAccount}
	kind := policy.SecretsManager
	if src.IsSSM() {
		kind = policy.SSMParameterPath
	}
	byName := b.opts.Rules.ByName(who, kind, src.Name())
	// Outside the caller's own rules only the secret's PIGGY_ALLOWED_SA can
	// allow it; where the operator lets no allow-list grant the name, the
	// name decides and AWS is not read.
	outside := !byName.Allowed
	if outside && !b.opts.Rules.ListMayGrant(who, src.Name()) {
		return Response{}, refusedOutside(who, src, byName, fmt.Errorf("no %s pattern matches the name, so no %s may grant it; AWS was not read", FlagAllowListGrants, policy.AllowedSAKey))
	}
	if !b.secrets.Holds(src.Key()) && !b.budget.take(c.podKey()) {
		return Response{}, fault.New(fault.Unavailable, "aws_read_limit",
			"pod %s/%s has used its AWS reads: at most %d at once and one more every %s (the broker's %s and %s); retry later",
			c.id.Namespace, c.id.PodName, b.opts.PodReadBurst, b.opts.PodReadInterval, FlagPodReadBurst, FlagPodReadInterval)
	}

	secret, res, err := b.secrets.Get(ctx, src.Key(), func(ctx context.Context) (*awssecrets.Secret, time.Duration, error) {
		s, err := b.fetcher.Fetch(ctx, src)
		return s, 0, err
	})
	c.cacheRes = res.String()
	if err != nil {
		if ctx.Err() != nil {
			return Response{}, fault.Wrap(ctx.Err(), fault.Unavailable, "timeout", "reading %s did not finish within the broker's request timeout; retry", src)
		}
		if outside && fault.KindOf(err) != fault.Unavailable {
			// Outside the name rules the secret's existence is nobody's
			// business: not found, access denied and content that cannot
			// be served all get the one refusal.
			return Response{}, refusedOutside(who, src, byName, err)
		}
		return Response{}, err
	}
	decision := policy.Decide(who, byName, allowList(secret), pc.Settings.EnforceServiceAccount)
	if !decision.Allowed {
		why := decision.Reasons[len(decision.Reasons)-1]
		if outside {
			// Whether it has an allow-list, and whom it lists, is not said.
			return Response{}, refusedOutside(who, src, byName, errors.New(why))
		}
		return Response{}, denied(who, src, why)
	}
	sel, err := policy.Select(keys, secret.Values, secret.Invalid)
	if err != nil {
		return Response{}, fault.Wrap(err, fault.FailedPrecondition, "secret_key_invalid", "%s: %s", src, err.Error())
	}
	return Response{Values: sel.Values, Missing: sel.Missing, SourceName: src.Name()}, nil
}

// denied refuses a source inside the caller's own name rules, saying why
// (the secret is the caller's namespace's own).
func denied(who policy.Caller, src awssecrets.Source, why string) error {
	return fault.New(fault.PermissionDenied, "policy_denied", "service account %s may not read %s: %s", who, src, why)
}

// refusedOutside refuses a source outside the caller's own name rules. The
// message depends only on the caller and the name it asked for, never on
// whether the secret exists, has a PIGGY_ALLOWED_SA or what it lists:
// detail, the actual reason, goes into the cause, which only the broker's
// log shows.
func refusedOutside(who policy.Caller, src awssecrets.Source, byName policy.NameDecision, detail error) error {
	return fault.Wrap(detail, fault.PermissionDenied, "policy_denied", "service account %s may not read %s: %s, and no %s grants it",
		who, src, byName.Reason, policy.AllowedSAKey)
}

// rememberedFailure reports whether an AWS read's failure is remembered
// for the negative TTL: outcomes that stay until the source changes (not
// found, access denied, content that cannot be served, a request AWS
// rejects), never transient ones or the broker's own faults.
func rememberedFailure(err error) bool {
	switch fault.KindOf(err) {
	case fault.NotFound, fault.PermissionDenied, fault.FailedPrecondition, fault.InvalidArgument:
		return true
	}
	return false
}

// allowList reads a secret's PIGGY_ALLOWED_SA.
func allowList(s *awssecrets.Secret) policy.AllowList {
	if _, bad := s.Invalid[policy.AllowedSAKey]; bad {
		return policy.AllowList{Present: true}
	}
	v, ok := s.Values[policy.AllowedSAKey]
	if !ok {
		return policy.AllowList{}
	}
	return policy.ParseAllowList(v.Reveal())
}

// source is where the admitted values come from: the grant's source, in
// the broker's default region when it names none.
func (b *Broker) source(g podgrant.Source) (awssecrets.Source, error) {
	src := awssecrets.Source{Region: g.Region, Version: g.Version}
	if g.Kind == podgrant.SSM {
		src.SSMParameterPath = g.Name
	} else {
		src.SecretName = g.Name
	}
	if src.Region == "" {
		src.Region = b.opts.DefaultRegion
	}
	if src.Region == "" {
		return src, fault.New(fault.InvalidArgument, "invalid_region", "no AWS region: set the %s%s annotation or the broker's AWS_REGION", podsettings.Prefix, podsettings.AWSRegion)
	}
	if !slices.Contains(b.opts.Regions, src.Region) {
		return src, awssecrets.RegionNotAllowed(src.Region, b.opts.Regions)
	}
	return src, nil
}

// granted refuses a key the container was not admitted to read (its
// grant lists the keys it referenced at admission). The refusal names the
// key asked for and never says whether the secret holds it.
func granted(keys []string, pc podcheck.Result) error {
	for _, k := range keys {
		if !pc.Grant.Allows(k) {
			who := fmt.Sprintf("container %q of pod %s/%s", pc.ContainerName, pc.Pod.Namespace, pc.Pod.Name)
			if pc.ContainerName == "" {
				who = fmt.Sprintf("pod %s/%s", pc.Pod.Namespace, pc.Pod.Name)
			}
			return fault.New(fault.PermissionDenied, "key_not_granted",
				"%s was not admitted with a piggy: reference to key %q; the keys a container may read are those it referenced when the pod was created", who, k)
		}
	}
	return nil
}

func validateKeys(keys []string) error {
	if len(keys) == 0 {
		return fault.New(fault.InvalidArgument, "invalid_request", "no keys requested")
	}
	if len(keys) > MaxKeys {
		return fault.New(fault.InvalidArgument, "invalid_request", "%d keys requested; at most %d", len(keys), MaxKeys)
	}
	for _, k := range keys {
		if k == "" || len(k) > MaxKeyLength {
			return fault.New(fault.InvalidArgument, "invalid_request", "keys must have 1 to %d characters", MaxKeyLength)
		}
	}
	return nil
}

// finish logs the request line and records its metrics.
func (b *Broker) finish(ctx context.Context, start time.Time, c *caller, keys int, err error) {
	took := b.opts.Now().Sub(start)
	sa := c.id.Namespace + ":" + c.id.ServiceAccount
	if c.id.Namespace == "" {
		sa = "<unknown>"
	}
	pod := c.id.PodName
	if pod == "" {
		pod = "<unknown>"
	}
	attrs := make([]slog.Attr, 0, 12)
	attrs = append(attrs,
		slog.String("namespace", c.id.Namespace),
		slog.String("pod_name", c.id.PodName),
		slog.String("service_account", c.id.ServiceAccount),
		slog.String("secret_name", c.source))
	if c.container != "" {
		attrs = append(attrs, slog.String("container", c.container))
	}
	attrs = append(attrs, slog.Int("keys", keys), slog.String("took", took.String()))
	if c.cacheRes != "" {
		attrs = append(attrs, slog.String("cache", c.cacheRes))
	}
	if c.legacy {
		attrs = append(attrs, slog.String("protocol", LegacyProtocol))
		b.warnDeprecated(ctx, c)
	}
	outcome, reason := "success", "ok"
	span := trace.SpanFromContext(ctx)
	if span.IsRecording() {
		span.SetAttributes(
			attribute.String("k8s.namespace.name", c.id.Namespace),
			attribute.String("k8s.pod.name", c.id.PodName),
			attribute.String("k8s.serviceaccount.name", c.id.ServiceAccount),
			attribute.String("piggy.secret.name", c.source))
	}
	who := "Request from [sa=" + sa + "], [pod=" + pod + "]"
	if err != nil {
		fe := fault.As(err)
		outcome, reason = "failure", fe.Reason
		attrs = append(attrs, slog.String("reason", reason), slog.String("code", fe.Kind.String()), slog.String("error", fe.Error()))
		span.SetAttributes(attribute.String("piggy.failure.reason", reason))
		level := slog.LevelWarn
		if fe.Kind == fault.Internal {
			level = slog.LevelError
		}
		b.opts.Log.LogAttrs(ctx, level, who+" failed", attrs...)
	} else {
		b.opts.Log.LogAttrs(ctx, slog.LevelInfo, who+" was successful", attrs...)
	}
	if b.requests != nil {
		if err == nil {
			b.requests.Add(ctx, 1, successAttrs)
			b.duration.Record(ctx, took.Seconds(), successOutcome)
		} else {
			b.requests.Add(ctx, 1, metric.WithAttributes(attribute.String("outcome", outcome), attribute.String("reason", reason)))
			b.duration.Record(ctx, took.Seconds(), failureOutcome)
		}
	}
}

// Attribute sets recorded on every request, built once.
var (
	successAttrs   = metric.WithAttributeSet(attribute.NewSet(attribute.String("outcome", "success"), attribute.String("reason", "ok")))
	successOutcome = metric.WithAttributeSet(attribute.NewSet(attribute.String("outcome", "success")))
	failureOutcome = metric.WithAttributeSet(attribute.NewSet(attribute.String("outcome", "failure")))
)

// CacheStats returns the secret cache's and the token review cache's
// counters.
func (b *Broker) CacheStats() (secrets, tokenReviews cache.Stats) {
	return b.secrets.Stats(), b.authn.Stats()
}

func (b *Broker) instrument() error {
	m := b.opts.Meter
	if m == nil {
		return nil
	}
	var err error
	if b.requests, err = m.Int64Counter("piggy_secret_broker_requests",
		metric.WithDescription("GetSecrets requests by outcome (success, failure) and reason.")); err != nil {
		return err
	}
	if b.duration, err = m.Float64Histogram("piggy_secret_broker_request_duration", metric.WithUnit("s"),
		metric.WithDescription("GetSecrets latency in the broker by outcome."),
		metric.WithExplicitBucketBoundaries(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)); err != nil {
		return err
	}
	type counter struct {
		name, desc string
		get        func(cache.Stats) int64
	}
	counters := []counter{
		{"piggy_secret_broker_cache_hits", "Cache lookups answered from the cache.", func(s cache.Stats) int64 { return s.Hits }},
		{"piggy_secret_broker_cache_misses", "Cache lookups that loaded the value (an AWS read or a TokenReview).", func(s cache.Stats) int64 { return s.Misses }},
		{"piggy_secret_broker_cache_coalesced", "Cache lookups that joined an identical load in flight.", func(s cache.Stats) int64 { return s.Coalesced }},
		{"piggy_secret_broker_cache_evictions", "Entries evicted to respect the capacity.", func(s cache.Stats) int64 { return s.Evictions }},
		{"piggy_secret_broker_cache_stale_served", "Lookups answered with an expired entry because AWS failed (stale-if-error).", func(s cache.Stats) int64 { return s.StaleServed }},
	}
	var observables []metric.Observable
	obs := make([]metric.Int64ObservableCounter, len(counters))
	for i, c := range counters {
		if obs[i], err = m.Int64ObservableCounter(c.name, metric.WithDescription(c.desc)); err != nil {
			return err
		}
		observables = append(observables, obs[i])
	}
	entries, err := m.Int64ObservableGauge("piggy_secret_broker_cache_entries", metric.WithDescription("Entries held by a cache."))
	if err != nil {
		return err
	}
	observables = append(observables, entries)
	bytes, err := m.Int64ObservableGauge("piggy_secret_broker_cache_bytes", metric.WithUnit("By"),
		metric.WithDescription("Summed size of the keys and values held by a cache."))
	if err != nil {
		return err
	}
	observables = append(observables, bytes)
	secretsAttr := metric.WithAttributes(attribute.String("cache", "secrets"))
	tokensAttr := metric.WithAttributes(attribute.String("cache", "token_reviews"))
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		s, t := b.CacheStats()
		for i, c := range counters {
			o.ObserveInt64(obs[i], c.get(s), secretsAttr)
			o.ObserveInt64(obs[i], c.get(t), tokensAttr)
		}
		o.ObserveInt64(entries, s.Entries, secretsAttr)
		o.ObserveInt64(entries, t.Entries, tokensAttr)
		o.ObserveInt64(bytes, s.Bytes, secretsAttr)
		o.ObserveInt64(bytes, t.Bytes, tokensAttr)
		return nil
	}, observables...)
	return err
}
