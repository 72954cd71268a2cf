// Package authn authenticates the calling container by its projected
// service-account token: a TokenReview with the broker's audience gives the
// namespace, the service account and, for pod-bound tokens, the pod's name
// and UID. Nothing the client sends besides the token is trusted.
//
// Results are cached by the SHA-256 of the token, no longer than the token
// is valid (its "exp" claim, read without verifying: the apiserver has just
// verified it) and no longer than a configured maximum. Concurrent reviews
// of one token are coalesced. Rejections by the apiserver are remembered
// briefly, by the same hash, so a junk token sent again costs no
// TokenReview; failures to get an answer are not. The pod itself is read on
// every request by the caller, so a cached review of a deleted pod never
// lets it through.
package authn

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/piggysec/piggy/services/secret-broker/internal/cache"
	"github.com/piggysec/piggy/services/secret-broker/internal/fault"
	"github.com/piggysec/piggy/services/secret-broker/internal/kubeclient"
)

// Keys of a TokenReview's status.user.extra for pod-bound tokens.
const (
	ExtraPodName = "authentication.kubernetes.io/pod-name"
	ExtraPodUID  = "authentication.kubernetes.io/pod-uid"
)

// serviceAccountPrefix starts the user name of service-account tokens.
const serviceAccountPrefix = "system:serviceaccount:"

// maxTokenBytes bounds the tokens the broker sends for review.
const maxTokenBytes = 16 << 10

// TokenReviewer creates TokenReviews; the clientset's
// AuthenticationV1().TokenReviews() in production.
type TokenReviewer interface {
	Create(ctx context.Context, review *authenticationv1.TokenReview, opts metav1.CreateOptions) (*authenticationv1.TokenReview, error)
}

// Identity is who a token belongs to, as the apiserver says.
type Identity struct {
	Namespace      string
	ServiceAccount string
	// PodName and PodUID are set for pod-bound tokens.
	PodName string
	PodUID  string
}

// Bound reports whether the token is bound to a pod.
func (id Identity) Bound() bool { return id.PodName != "" && id.PodUID != "" }

// Options configure an Authenticator.
type Options struct {
	// Audience is the audience tokens must have (the one the mutation
	// projects, "piggy" by default). Empty only with APIAudiences.
	Audience string
	// APIAudiences reviews tokens for the Kubernetes API server's own
	// audiences instead of Audience: the default service account token a
	// pod has mounted, which is what the original piggy-env sends. Such a
	// token is also a credential for the API server, so only the original
	// protocol's endpoint uses it, never together with AllowUnbound.
	APIAudiences bool
	// AllowUnbound accepts tokens that are not bound to a pod (legacy or
	// TokenRequest tokens without a bound object), for migrations. Their
	// use is logged as a warning.
	AllowUnbound bool
	// CacheTTL is the longest a review is cached.
	CacheTTL time.Duration
	// CacheSize is the number of reviews cached.
	CacheSize int
	// RejectionTTL is how long a token the apiserver rejected is refused
	// without another review; RejectionSize bounds those entries. Either
	// at 0 turns the rejection cache off.
	RejectionTTL  time.Duration
	RejectionSize int
	// Timeout bounds one TokenReview call.
	Timeout time.Duration
	// Log receives the warnings about unbound tokens.
	Log *slog.Logger
	// Tracer and Meter instrument the reviews.
	Tracer trace.Tracer
	Meter  metric.Meter
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Authenticator reviews tokens. Create it with New.
type Authenticator struct {
	reviewer TokenReviewer
	opts     Options
	cache    *cache.Cache[Identity]
	rejected *rejections
	latency  metric.Float64Histogram
	// rejectedHits counts requests refused from the rejection cache.
	rejectedHits metric.Int64Counter
}

// New returns an Authenticator using reviewer.
func New(reviewer TokenReviewer, opts Options) (*Authenticator, error) {
	if opts.APIAudiences {
		if opts.Audience != "" || opts.AllowUnbound {
			return nil, fmt.Errorf("authn: API-audience reviews take no audience and never accept unbound tokens")
		}
	} else if opts.Audience == "" {
		return nil, fmt.Errorf("authn: audience is required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	a := &Authenticator{reviewer: reviewer, opts: opts}
	a.cache = cache.New[Identity](cache.Options{Capacity: opts.CacheSize, TTL: opts.CacheTTL, LoadTimeout: opts.Timeout, Now: opts.Now})
	a.rejected = newRejections(opts.RejectionSize, opts.RejectionTTL, opts.Now)
	if opts.Meter != nil {
		c, err := opts.Meter.Int64Counter("piggy_secret_broker_token_rejections_cached",
			metric.WithDescription("Tokens refused without a TokenReview because the apiserver rejected the same token (by hash) shortly before."))
		if err != nil {
			return nil, err
		}
		a.rejectedHits = c
		h, err := opts.Meter.Float64Histogram("piggy_secret_broker_tokenreview_duration",
			metric.WithUnit("s"),
			metric.WithDescription("Latency of TokenReview calls to the Kubernetes API, by result (authenticated, rejected, error)."),
			metric.WithExplicitBucketBoundaries(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
		if err != nil {
			return nil, err
		}
		a.latency = h
	}
	return a, nil
}

// Stats returns the review cache's counters.
func (a *Authenticator) Stats() cache.Stats { return a.cache.Stats() }

// Authenticate returns the identity of token, or a *fault.Error of kind
// Unauthenticated (bad, expired, wrong audience, not a service account, not
// bound to a pod), Unavailable (the apiserver could not answer) or Internal.
func (a *Authenticator) Authenticate(ctx context.Context, token string) (Identity, cache.Result, error) {
	if token == "" {
		return Identity{}, cache.Miss, fault.New(fault.Unauthenticated, "token_missing", "no bearer token: send the pod's projected service account token (%s)", a.audience())
	}
	if len(token) > maxTokenBytes {
		return Identity{}, cache.Miss, fault.New(fault.Unauthenticated, "token_invalid", "the bearer token is too long")
	}
	sum := sha256.Sum256([]byte(token))
	key := string(sum[:])
	// A cached review needs no precheck: it expires no later than its
	// token and was made for the same audience.
	id, cached := a.cache.Cached(key)
	res := cache.Hit
	if !cached {
		if fe, ok := a.rejected.get(sum); ok {
			if a.rejectedHits != nil {
				a.rejectedHits.Add(ctx, 1)
			}
			again := *fe
			return Identity{}, cache.Hit, &again
		}
		if err := a.precheck(token); err != nil {
			return Identity{}, cache.Miss, err
		}
		var err error
		id, res, err = a.cache.Get(ctx, key, func(ctx context.Context) (Identity, time.Duration, error) {
			return a.review(ctx, token)
		})
		if err != nil {
			if ctx.Err() != nil {
				return Identity{}, res, fault.Wrap(ctx.Err(), fault.Unavailable, "canceled", "the token review did not finish in time")
			}
			// The apiserver's answer was "no" (not "could not tell"):
			// the same token gets the same answer without asking again.
			if fe := fault.As(err); fe.Kind == fault.Unauthenticated {
				a.rejected.add(sum, fe)
			}
			return Identity{}, res, err
		}
	}
	if !id.Bound() && !a.opts.AllowUnbound {
		return Identity{}, res, fault.New(fault.Unauthenticated, "token_unbound",
			"the token of %s:%s is not bound to a pod; piggy-env must present a projected token bound to its pod (%s)", id.Namespace, id.ServiceAccount, a.audience())
	}
	return id, res, nil
}

// review calls the TokenReview API and returns the identity with how long
// it may be cached.
func (a *Authenticator) review(ctx context.Context, token string) (Identity, time.Duration, error) {
	ctx, span := a.tracer().Start(ctx, "TokenReview", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("piggy.token.audience", a.audience())))
	defer span.End()
	start := a.opts.Now()
	result := "error"
	defer func() {
		if a.latency != nil {
			a.latency.Record(ctx, a.opts.Now().Sub(start).Seconds(), metric.WithAttributes(attribute.String("result", result)))
		}
	}()

	// Without audiences the API server reviews the token for its own.
	var audiences []string
	if !a.opts.APIAudiences {
		audiences = []string{a.opts.Audience}
	}
	out, err := a.reviewer.Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		span.SetStatus(codes.Error, "TokenReview failed")
		return Identity{}, 0, kubeclient.Classify(err, "the Kubernetes API could not review the token")
	}
	st := out.Status
	if !st.Authenticated {
		result = "rejected"
		span.SetStatus(codes.Error, "token rejected")
		// st.Error says why (expired, pod deleted, wrong audience); it holds no
		// secret, but it stays in the logs rather than the client message.
		return Identity{}, 0, fault.Wrap(fmt.Errorf("token review: %s", st.Error), fault.Unauthenticated, "token_invalid",
			"the token was rejected by the Kubernetes API (invalid, expired, of a deleted pod, or not for %s)", a.audience())
	}
	if !a.opts.APIAudiences && !slices.Contains(st.Audiences, a.opts.Audience) {
		result = "rejected"
		span.SetStatus(codes.Error, "wrong audience")
		return Identity{}, 0, fault.New(fault.Unauthenticated, "token_audience", "the token is not for audience %q", a.opts.Audience)
	}
	id, ok := parseUser(st.User)
	if !ok {
		result = "rejected"
		span.SetStatus(codes.Error, "not a service account")
		return Identity{}, 0, fault.New(fault.Unauthenticated, "token_not_service_account", "the token does not belong to a service account")
	}
	result = "authenticated"
	span.SetAttributes(
		attribute.String("k8s.namespace.name", id.Namespace),
		attribute.String("k8s.serviceaccount.name", id.ServiceAccount),
		attribute.String("k8s.pod.name", id.PodName),
		attribute.Bool("piggy.token.bound", id.Bound()))
	if !id.Bound() && a.opts.AllowUnbound {
		a.opts.Log.WarnContext(ctx, "accepting a token that is not bound to a pod (--allow-unbound-tokens); the pod is found by its container UID",
			"namespace", id.Namespace, "service_account", id.ServiceAccount)
	}
	return id, a.ttl(token), nil
}

// ttl is how long a review of token may be cached: until the token
// expires, at most the configured maximum; not at all when the token has no
// readable expiry.
func (a *Authenticator) ttl(token string) time.Duration {
	exp, ok := expiry(token)
	if !ok {
		return -1
	}
	left := exp.Sub(a.opts.Now())
	if left <= 0 {
		return -1
	}
	return min(left, a.opts.CacheTTL)
}

// precheck refuses, without asking the apiserver, tokens that no review
// could accept: not a JWT, expired, or not for the audience, going by the
// unverified claims. It only ever refuses, so trusting unverified claims is
// safe, and junk tokens cost no TokenReview (nor a slot of the client's
// rate limit).
func (a *Authenticator) precheck(token string) error {
	c, ok := readClaims(token)
	if !ok {
		return fault.New(fault.Unauthenticated, "token_invalid", "the bearer token is not a service account token (JWT)")
	}
	if c.exp.IsZero() || !c.exp.After(a.opts.Now()) {
		return fault.New(fault.Unauthenticated, "token_invalid", "the token has no expiry or has expired")
	}
	if !a.opts.APIAudiences && !slices.Contains(c.aud, a.opts.Audience) {
		return fault.New(fault.Unauthenticated, "token_audience", "the token is not for audience %q", a.opts.Audience)
	}
	return nil
}

// audience says which audience tokens must have, for messages.
func (a *Authenticator) audience() string {
	if a.opts.APIAudiences {
		return "the Kubernetes API's audience"
	}
	return fmt.Sprintf("audience %q", a.opts.Audience)
}

// claims are the unverified claims the broker reads.
type claims struct {
	exp time.Time
	aud []string
}

// readClaims decodes the payload of a JWT without verifying it.
func readClaims(token string) (claims, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 || parts[0] == "" || parts[2] == "" {
		return claims{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return claims{}, false
	}
	var raw struct {
		Exp *json.Number    `json:"exp"`
		Aud json.RawMessage `json:"aud"`
	}
	if err := json.Unmarshal(payload, &raw); err != nil {
		return claims{}, false
	}
	var c claims
	if raw.Exp != nil {
		if secs, err := raw.Exp.Float64(); err == nil && secs > 0 && secs < 1<<62 {
			c.exp = time.Unix(int64(secs), 0)
		}
	}
	// "aud" is a string or an array of strings.
	var one string
	if json.Unmarshal(raw.Aud, &one) == nil {
		c.aud = []string{one}
	} else {
		_ = json.Unmarshal(raw.Aud, &c.aud)
	}
	return c, true
}

// expiry reads the "exp" claim of a JWT without verifying it.
func expiry(token string) (time.Time, bool) {
	c, ok := readClaims(token)
	return c.exp, ok && !c.exp.IsZero()
}

// parseUser reads namespace, service account and pod from a review's user.
func parseUser(u authenticationv1.UserInfo) (Identity, bool) {
	rest, ok := strings.CutPrefix(u.Username, serviceAccountPrefix)
	if !ok {
		return Identity{}, false
	}
	ns, sa, ok := strings.Cut(rest, ":")
	if !ok || ns == "" || sa == "" || strings.Contains(sa, ":") {
		return Identity{}, false
	}
	id := Identity{Namespace: ns, ServiceAccount: sa}
	if names, uids := u.Extra[ExtraPodName], u.Extra[ExtraPodUID]; len(names) == 1 && len(uids) == 1 {
		id.PodName, id.PodUID = names[0], uids[0]
	}
	return id, true
}

func (a *Authenticator) tracer() trace.Tracer {
	if a.opts.Tracer == nil {
		return noopTracer
	}
	return a.opts.Tracer
}
