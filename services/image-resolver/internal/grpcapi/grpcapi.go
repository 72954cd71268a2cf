// Package grpcapi is the gRPC transport of ImageResolverService: it decodes
// requests, calls the resolver, maps its errors to gRPC codes in one place
// (Status) and encodes responses. It makes no registry or Kubernetes call
// itself.
package grpcapi

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	imageresolverv1 "github.com/piggysec/piggy/libs/gen/piggy/imageresolver/v1"
	"github.com/piggysec/piggy/services/image-resolver/internal/cache"
	"github.com/piggysec/piggy/services/image-resolver/internal/keychain"
	"github.com/piggysec/piggy/services/image-resolver/internal/resolve"
)

// Resolver is the domain the service calls (*resolve.Resolver).
type Resolver interface {
	Resolve(ctx context.Context, req resolve.Request) (resolve.Result, error)
	Explain(ctx context.Context, req resolve.Request) (resolve.Result, resolve.Explanation, error)
	Stats() resolve.CacheStats
}

// Server implements imageresolverv1.ImageResolverServiceServer.
type Server struct {
	imageresolverv1.UnimplementedImageResolverServiceServer
	resolver Resolver
	log      *slog.Logger
}

// New returns a Server over r; log receives failed lookups (nil discards).
func New(r Resolver, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{resolver: r, log: log}
}

// Register adds the service to s.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	imageresolverv1.RegisterImageResolverServiceServer(r, s)
}

// ResolveImage returns the digest, ENTRYPOINT and CMD of an image.
func (s *Server) ResolveImage(ctx context.Context, req *imageresolverv1.ResolveImageRequest) (*imageresolverv1.ResolveImageResponse, error) {
	res, err := s.resolver.Resolve(ctx, decode(req))
	if err != nil {
		s.logFailure(ctx, req, err)
		return nil, Status(err).Err()
	}
	return encode(res), nil
}

// ExplainImage resolves an image and reports the steps taken. A failed
// lookup is reported in the response's error field with an OK status; only
// an invalid request or the caller's own deadline end the call with an error.
func (s *Server) ExplainImage(ctx context.Context, req *imageresolverv1.ExplainImageRequest) (*imageresolverv1.ExplainImageResponse, error) {
	if req.GetLookup() == nil {
		return nil, status.Error(codes.InvalidArgument, "lookup is required")
	}
	res, ex, err := s.resolver.Explain(ctx, decode(req.GetLookup()))
	out := &imageresolverv1.ExplainImageResponse{Steps: ex.Steps}
	for _, p := range ex.AvailablePlatforms {
		out.AvailablePlatforms = append(out.AvailablePlatforms, encodePlatform(p))
	}
	if err != nil {
		st := Status(err)
		if c := st.Code(); c == codes.Canceled || c == codes.DeadlineExceeded || c == codes.Internal {
			s.logFailure(ctx, req.GetLookup(), err)
			return nil, st.Err()
		}
		out.Error = st.Message()
		return out, nil
	}
	out.Result = encode(res)
	return out, nil
}

// GetCacheStats reports both caches' counters.
func (s *Server) GetCacheStats(context.Context, *imageresolverv1.GetCacheStatsRequest) (*imageresolverv1.GetCacheStatsResponse, error) {
	st := s.resolver.Stats()
	return &imageresolverv1.GetCacheStatsResponse{Tags: encodeStats(st.Tags), Configs: encodeStats(st.Configs)}, nil
}

// Status maps a resolver error to a gRPC status. The message is the
// resolver's client-safe message; causes (which may quote registry or API
// answers) stay in the server log.
func Status(err error) *status.Status {
	var re *resolve.Error
	switch {
	case err == nil:
		return status.New(codes.OK, "")
	case errors.As(err, &re):
		return status.New(code(re.Kind), re.Message)
	case errors.Is(err, context.DeadlineExceeded):
		return status.New(codes.DeadlineExceeded, "deadline exceeded before the image was resolved")
	case errors.Is(err, context.Canceled):
		return status.New(codes.Canceled, "request canceled")
	default:
		return status.New(codes.Internal, "internal error")
	}
}

func code(kind error) codes.Code {
	switch kind {
	case resolve.ErrInvalidArgument:
		return codes.InvalidArgument
	case resolve.ErrNotFound:
		return codes.NotFound
	case resolve.ErrUnauthenticated:
		return codes.Unauthenticated
	case resolve.ErrPermissionDenied:
		return codes.PermissionDenied
	case resolve.ErrUnavailable:
		return codes.Unavailable
	case resolve.ErrNoMatchingPlatform, resolve.ErrFailedPrecondition:
		return codes.FailedPrecondition
	default:
		return codes.Internal
	}
}

func (s *Server) logFailure(ctx context.Context, req *imageresolverv1.ResolveImageRequest, err error) {
	level := slog.LevelDebug
	switch Status(err).Code() {
	case codes.Unavailable, codes.Internal, codes.FailedPrecondition:
		level = slog.LevelWarn
	}
	s.log.Log(ctx, level, "image lookup failed", "image", req.GetImage(), "namespace", req.GetNamespace(),
		"service_account", req.GetServiceAccount(), "outcome", resolve.Outcome(err), "error", err.Error())
}

func decode(req *imageresolverv1.ResolveImageRequest) resolve.Request {
	out := resolve.Request{
		Image:          req.GetImage(),
		Namespace:      req.GetNamespace(),
		ServiceAccount: req.GetServiceAccount(),
		SkipTLSVerify:  req.GetSkipTlsVerify(),
		Platform: resolve.Platform{
			OS:           req.GetPlatform().GetOs(),
			Architecture: req.GetPlatform().GetArchitecture(),
			Variant:      req.GetPlatform().GetVariant(),
		},
	}
	for _, s := range req.GetPullSecrets() {
		out.PullSecrets = append(out.PullSecrets, keychain.SecretRef{Namespace: s.GetNamespace(), Name: s.GetName()})
	}
	return out
}

func encode(res resolve.Result) *imageresolverv1.ResolveImageResponse {
	return &imageresolverv1.ResolveImageResponse{
		Digest:     res.Digest,
		Entrypoint: res.Entrypoint,
		Cmd:        res.Cmd,
		Platform:   encodePlatform(res.Platform),
		Cached:     res.Cached,
	}
}

func encodePlatform(p resolve.Platform) *imageresolverv1.Platform {
	return &imageresolverv1.Platform{Os: p.OS, Architecture: p.Architecture, Variant: p.Variant}
}

func encodeStats(s cache.Stats) *imageresolverv1.CacheStats {
	out := &imageresolverv1.CacheStats{
		Entries:   int64(s.Entries),
		Capacity:  int64(s.Capacity),
		Hits:      s.Hits,
		Misses:    s.Misses,
		Coalesced: s.Coalesced,
		Evictions: s.Evictions,
	}
	if s.TTL > 0 {
		out.Ttl = durationpb.New(s.TTL)
	}
	return out
}
