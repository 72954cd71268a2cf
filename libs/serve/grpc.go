package serve

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
)

// GRPCOptions configures NewGRPCServer.
type GRPCOptions struct {
	// TLS is the server's TLS configuration; required (Piggy serves no
	// plaintext gRPC). Use a configuration that requires client
	// certificates for mTLS.
	TLS *tls.Config
	// Logger receives recovered panics.
	Logger *slog.Logger
	// Callers says which client identities may call which methods;
	// required (a method no rule covers is refused to everybody).
	Callers Callers
	// IdleTimeout closes connections without RPCs for that long; zero
	// means 5 minutes.
	IdleTimeout time.Duration
	// MaxConcurrentStreams bounds the RPCs in flight per connection; zero
	// means 256.
	MaxConcurrentStreams uint32
	// Extra are appended to the defaults (interceptors, limits).
	Extra []grpc.ServerOption
}

// NewGRPCServer returns a gRPC server with TLS, OpenTelemetry stats,
// panic recovery, the callers' identity check, keepalive enforcement, the
// grpc.health.v1 service and server reflection (for grpcurl). The health server reports SERVING for
// the empty service name; callers set per-service status on it.
func NewGRPCServer(opts GRPCOptions) (*grpc.Server, *health.Server, error) {
	if opts.TLS == nil {
		return nil, nil, errors.New("serve: gRPC server needs a TLS configuration")
	}
	if verifies := opts.TLS.ClientAuth == tls.RequireAndVerifyClientCert ||
		opts.TLS.ClientAuth == tls.RequireAnyClientCert && opts.TLS.VerifyConnection != nil; !verifies {
		return nil, nil, errors.New("serve: gRPC server needs a TLS configuration that requires and verifies client certificates")
	}
	if opts.Callers == nil {
		return nil, nil, errors.New("serve: gRPC server needs its callers")
	}
	checkUnary, checkStream := opts.Callers.interceptors()
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	idle, streams := opts.IdleTimeout, opts.MaxConcurrentStreams
	if idle <= 0 {
		idle = 5 * time.Minute
	}
	if streams == 0 {
		streams = 256
	}
	serverOpts := append([]grpc.ServerOption{
		grpc.Creds(credentials.NewTLS(opts.TLS)),
		grpc.StatsHandler(otelgrpc.NewServerHandler()),
		grpc.ChainUnaryInterceptor(recoverUnary(log), checkUnary),
		grpc.ChainStreamInterceptor(recoverStream(log), checkStream),
		grpc.MaxRecvMsgSize(4 << 20),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: idle}),
		grpc.MaxConcurrentStreams(streams),
	}, opts.Extra...)
	s := grpc.NewServer(serverOpts...)
	h := health.NewServer()
	healthpb.RegisterHealthServer(s, h)
	reflection.Register(s)
	return s, h, nil
}

// GRPC serves s on ln until ctx ends, then stops gracefully: in-flight RPCs
// get up to grace to finish before the remaining ones are cancelled. Health
// is switched to NOT_SERVING first so load balancers stop sending traffic.
// It returns nil after a shutdown caused by ctx.
func GRPC(ctx context.Context, s *grpc.Server, h *health.Server, ln net.Listener, grace time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("grpc server on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	if h != nil {
		h.Shutdown()
	}
	stopped := make(chan struct{})
	go func() {
		s.GracefulStop()
		close(stopped)
	}()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-stopped:
	case <-t.C:
		s.Stop()
		<-stopped
	}
	if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("grpc server on %s: %w", ln.Addr(), err)
	}
	return nil
}

func recoverUnary(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if r := recover(); r != nil {
				err = recovered(ctx, log, info.FullMethod, r)
			}
		}()
		return handler(ctx, req)
	}
}

func recoverStream(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = recovered(ss.Context(), log, info.FullMethod, r)
			}
		}()
		return handler(srv, ss)
	}
}

// recovered logs a panic (type and stack, not the value, which may hold
// request data) and turns it into an Internal status.
func recovered(ctx context.Context, log *slog.Logger, method string, r any) error {
	log.ErrorContext(ctx, "panic in gRPC handler", "method", method, "panic_type", fmt.Sprintf("%T", r), "stack", string(debug.Stack()))
	return status.Error(codes.Internal, "internal error")
}
