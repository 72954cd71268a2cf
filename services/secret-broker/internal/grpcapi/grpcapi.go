// Package grpcapi is the gRPC transport of the broker: it decodes
// SecretBrokerService requests, calls the broker and maps its errors to gRPC
// status codes in one place (Status). The HTTPS gateway reaches it through a
// real gRPC connection, so the same code serves both.
//
// GetSecrets is admitted (throttle) before anything else, by the peer's
// address; the gateway's own connections are not admitted again, the
// gateway did that by the HTTP client's address. A refusal is
// RESOURCE_EXHAUSTED with a google.rpc.RetryInfo detail (Throttled).
package grpcapi

import (
	"context"
	"net"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	secretbrokerv1 "github.com/piggysec/piggy/libs/gen/piggy/secretbroker/v1"
	"github.com/piggysec/piggy/services/secret-broker/internal/broker"
	"github.com/piggysec/piggy/services/secret-broker/internal/cache"
	"github.com/piggysec/piggy/services/secret-broker/internal/fault"
	"github.com/piggysec/piggy/services/secret-broker/internal/throttle"
)

// Broker is what the transport needs from the domain (broker.Broker).
type Broker interface {
	GetSecrets(ctx context.Context, req broker.Request) (broker.Response, error)
	Explain(ctx context.Context, req broker.ExplainRequest) (broker.Explanation, error)
	CacheStats() (secrets, tokenReviews cache.Stats)
}

// Options configure a Server.
type Options struct {
	// Limiter admits GetSecrets requests before authentication; nil
	// admits all.
	Limiter *throttle.Limiter
	// Forwarders are the gateway's connections, whose requests the
	// gateway has admitted.
	Forwarders *throttle.Forwarders
}

// Server implements SecretBrokerServiceServer.
type Server struct {
	secretbrokerv1.UnimplementedSecretBrokerServiceServer
	broker Broker
	opts   Options
}

// New returns a Server over b.
func New(b Broker, opts Options) *Server { return &Server{broker: b, opts: opts} }

// GetSecrets implements SecretBrokerServiceServer. The token comes from the
// "authorization" metadata ("Bearer <token>"), which the gateway forwards
// from the HTTP Authorization header.
func (s *Server) GetSecrets(ctx context.Context, req *secretbrokerv1.GetSecretsRequest) (*secretbrokerv1.GetSecretsResponse, error) {
	if s.opts.Limiter != nil {
		var addr net.Addr
		if p, ok := peer.FromContext(ctx); ok {
			addr = p.Addr
		}
		if !s.opts.Forwarders.Has(addr) {
			release, refused := s.opts.Limiter.Admit(ctx, throttle.Source(addr), "grpc")
			if refused != nil {
				return nil, Throttled(refused)
			}
			defer release()
		}
	}
	resp, err := s.broker.GetSecrets(ctx, broker.Request{
		Token:        bearerToken(ctx),
		ContainerUID: req.GetContainerUid(),
		Signature:    req.GetSignature(),
		Keys:         req.GetKeys(),
		FetchID:      req.GetFetchId(),
	})
	if err != nil {
		return nil, Status(err)
	}
	values := make(map[string]string, len(resp.Values))
	for k, v := range resp.Values {
		values[k] = v.Reveal()
	}
	return &secretbrokerv1.GetSecretsResponse{Values: values, MissingKeys: resp.Missing, SourceName: resp.SourceName}, nil
}

// ExplainAccess implements SecretBrokerServiceServer.
func (s *Server) ExplainAccess(ctx context.Context, req *secretbrokerv1.ExplainAccessRequest) (*secretbrokerv1.ExplainAccessResponse, error) {
	e, err := s.broker.Explain(ctx, broker.ExplainRequest{
		Namespace:     req.GetNamespace(),
		PodName:       req.GetPodName(),
		ContainerName: req.GetContainerName(),
		Keys:          req.GetKeys(),
	})
	if err != nil {
		return nil, Status(err)
	}
	src := secretbrokerv1.Source_SOURCE_SECRETS_MANAGER
	if e.Source.IsSSM() {
		src = secretbrokerv1.Source_SOURCE_SSM_PARAMETER_STORE
	}
	return &secretbrokerv1.ExplainAccessResponse{
		SourceName:     e.Source.Name(),
		Source:         src,
		Region:         e.Source.Region,
		Version:        e.Source.EffectiveVersion(),
		ServiceAccount: e.ServiceAccount,
		Allowed:        e.Allowed,
		Reasons:        e.Reasons,
		Keys:           e.Keys,
	}, nil
}

// GetCacheStats implements SecretBrokerServiceServer.
func (s *Server) GetCacheStats(context.Context, *secretbrokerv1.GetCacheStatsRequest) (*secretbrokerv1.GetCacheStatsResponse, error) {
	sec, tok := s.broker.CacheStats()
	return &secretbrokerv1.GetCacheStatsResponse{Secrets: statsProto(sec), TokenReviews: statsProto(tok)}, nil
}

func statsProto(s cache.Stats) *secretbrokerv1.CacheStats {
	return &secretbrokerv1.CacheStats{
		Entries:   s.Entries,
		Capacity:  s.Capacity,
		Hits:      s.Hits,
		Misses:    s.Misses,
		Coalesced: s.Coalesced,
		Evictions: s.Evictions,
		Ttl:       durationpb.New(s.TTL),
	}
}

// bearerToken returns the token of the single "authorization: Bearer ..."
// metadata value, or "" (which the broker refuses as missing).
func bearerToken(ctx context.Context) string {
	vals := metadata.ValueFromIncomingContext(ctx, "authorization")
	if len(vals) != 1 {
		return ""
	}
	scheme, token, ok := strings.Cut(strings.TrimSpace(vals[0]), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(token)
}

// Throttled is the status of a request the limiter refused:
// RESOURCE_EXHAUSTED (HTTP 429 through the gateway, which also sets
// Retry-After) with a google.rpc.RetryInfo detail saying when to retry.
func Throttled(r *throttle.Refusal) error {
	st := status.New(codes.ResourceExhausted, r.Message())
	if withHint, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(r.RetryAfter)}); err == nil {
		st = withHint
	}
	return st.Err()
}

// RetryAfter is the retry hint of a status Throttled made.
func RetryAfter(st *status.Status) (time.Duration, bool) {
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay().IsValid() {
			return ri.GetRetryDelay().AsDuration(), true
		}
	}
	return 0, false
}

// Status maps a broker error to a gRPC status; this is the only place
// where errors become codes. Messages are the fault's client-safe message
// (they may name a secret, never hold a value); causes are not sent.
//
//	fault kind          gRPC code           HTTP (gateway)
//	InvalidArgument     InvalidArgument     400
//	FailedPrecondition  FailedPrecondition  400
//	Unauthenticated     Unauthenticated     401
//	PermissionDenied    PermissionDenied    403
//	NotFound            NotFound            404
//	Unavailable         Unavailable         503 (retryable)
//	Internal / other    Internal            500
//
// Requests the limiter refuses never reach the broker: they get
// RESOURCE_EXHAUSTED (429) from Throttled.
func Status(err error) error {
	if err == nil {
		return nil
	}
	fe := fault.As(err)
	code := codes.Internal
	switch fe.Kind {
	case fault.InvalidArgument:
		code = codes.InvalidArgument
	case fault.FailedPrecondition:
		code = codes.FailedPrecondition
	case fault.Unauthenticated:
		code = codes.Unauthenticated
	case fault.PermissionDenied:
		code = codes.PermissionDenied
	case fault.NotFound:
		code = codes.NotFound
	case fault.Unavailable:
		code = codes.Unavailable
	}
	return status.Error(code, fe.Message)
}
