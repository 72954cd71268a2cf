package broker

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/piggysec/piggy/services/secret-broker/internal/authn"
	"github.com/piggysec/piggy/services/secret-broker/internal/fault"
	"github.com/piggysec/piggy/services/secret-broker/internal/podcheck"
)

// LegacyProtocol is the "protocol" field of the request log line of a
// request in the original Piggy's protocol (internal/legacy).
const LegacyProtocol = "original"

// LegacyPodChecker verifies callers of the original protocol
// (podcheck.Checker).
type LegacyPodChecker interface {
	CheckLegacy(ctx context.Context, id authn.Identity, ctr podcheck.Container) (podcheck.Result, error)
}

// Legacy serves the original Piggy's protocol for pods its webhook
// mutated. The Authenticator reviews the API-audience tokens the original
// piggy-env sends (authn.Options.APIAudiences): it has its own review
// cache, so such a review never answers for GetSecrets, whose tokens must
// have the broker's audience.
type Legacy struct {
	Authenticator Authenticator
	Pods          LegacyPodChecker
}

// LegacyRequest is a request of the original piggy-env: its pod's default
// token, the pod name it read from PIGGY_POD_NAME (only compared: the pod
// is the token's), its PIGGY_UID and command signature. It names no keys.
type LegacyRequest struct {
	Token                   string
	PodName                 string
	ContainerUID, Signature string
}

// deprecationEvery is the least time between two deprecation warnings.
const deprecationEvery = 10 * time.Second

// GetLegacySecrets serves a request of the original protocol through the
// same authorisation as GetSecrets: the token must be bound to the pod, the
// container the original webhook launched is verified (podcheck
// CheckLegacy), and it is given the keys its env references literally, in
// the source its settings name, under the broker's name rules,
// PIGGY_ALLOWED_SA and once-per-start (the original piggy-env sends no
// fetch id, so only the first request of a start is answered). The request
// log line and metrics are GetSecrets'; the line has protocol "original",
// and a deprecation warning goes out at most every deprecationEvery.
func (b *Broker) GetLegacySecrets(ctx context.Context, req LegacyRequest) (resp Response, err error) {
	start := b.opts.Now()
	ctx, cancel := context.WithTimeout(ctx, b.opts.RequestTimeout)
	defer cancel()
	c := caller{legacy: true}
	keys := 0
	defer func() { b.finish(ctx, start, &c, keys, err) }()
	if b.opts.Legacy == nil {
		return Response{}, fault.New(fault.Internal, "internal", "the original protocol is not enabled")
	}
	id, _, err := b.opts.Legacy.Authenticator.Authenticate(ctx, req.Token)
	if err != nil {
		return Response{}, err
	}
	c.id = id
	if req.PodName != id.PodName {
		return Response{}, fault.New(fault.PermissionDenied, "pod_mismatch",
			"the request names pod %q, but its token is bound to pod %s/%s", req.PodName, id.Namespace, id.PodName)
	}
	pc, err := b.opts.Legacy.Pods.CheckLegacy(ctx, id, podcheck.Container{UID: req.ContainerUID, Signature: req.Signature})
	if err != nil {
		return Response{}, err
	}
	c.container = pc.ContainerName
	keys = len(pc.Grant.Keys)
	if err := validateKeys(pc.Grant.Keys); err != nil {
		return Response{}, err
	}
	return b.serve(ctx, &c, pc.Grant.Keys, "", pc)
}

// deprecation limits the deprecation warnings.
type deprecation struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

// warnDeprecated logs that a pod still runs the original piggy-env, at
// most once every deprecationEvery, with the number of such requests not
// logged since.
func (b *Broker) warnDeprecated(ctx context.Context, c *caller) {
	now := b.opts.Now()
	d := &b.deprecation
	d.mu.Lock()
	if !d.last.IsZero() && now.Sub(d.last) < deprecationEvery {
		d.suppressed++
		d.mu.Unlock()
		return
	}
	d.last = now
	more := d.suppressed
	d.suppressed = 0
	d.mu.Unlock()
	b.opts.Log.LogAttrs(ctx, slog.LevelWarn,
		"deprecated: a pod still runs the original Piggy's piggy-env, which calls POST /secret (--legacy-secret-endpoint); recreate the pods the original webhook mutated and turn the endpoint off",
		slog.String("namespace", c.id.Namespace), slog.String("pod_name", c.id.PodName),
		slog.Int("earlier_requests_not_logged", more))
}
