// Package gateway is the broker's HTTPS JSON API for piggy-env: grpc-gateway
// translating POST /v1/secrets into GetSecrets over a real gRPC client
// connection to the broker's own mTLS port, so that the gRPC interceptors
// and stats handlers (auth, metrics, tracing) run for every request. The
// HTTP Authorization header becomes the "authorization" metadata.
//
// JSON uses protojson with lowerCamelCase names: {"containerUid",
// "signature","keys"} in, {"values","missingKeys","sourceName"} out, errors
// as {"code","message","details"} with the HTTP status of the gRPC code.
//
// Each request is admitted (throttle) by the HTTP client's address before
// its body is read; the gRPC server does not admit the gateway's own
// connections again (throttle.Forwarders). A refusal, the gateway's or the
// gRPC server's, is HTTP 429 with a Retry-After header (whole seconds) and
// the google.rpc.RetryInfo detail in the body.
package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	secretbrokerv1 "github.com/piggysec/piggy/libs/gen/piggy/secretbroker/v1"
	"github.com/piggysec/piggy/libs/serve"
	"github.com/piggysec/piggy/libs/telemetry"
	"github.com/piggysec/piggy/services/secret-broker/internal/grpcapi"
	"github.com/piggysec/piggy/services/secret-broker/internal/throttle"
)

// MaxBodyBytes bounds a request body.
const MaxBodyBytes = 64 << 10

// Dial returns a lazy gRPC client connection to target over TLS (the
// broker's own client certificate makes it mTLS) that passes the trace
// context on to the server. Its connections are made by forwarders, so
// the gRPC server knows them; nil dials plainly.
//
// The loopback hop has no client span or metrics of its own: the
// gateway's HTTP server span and the gRPC server's span (with its
// metrics) already cover it, and a second set of instruments would cost
// more than the hop itself.
func Dial(target string, tlsConfig *tls.Config, forwarders *throttle.Forwarders) (*grpc.ClientConn, error) {
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig)),
		grpc.WithChainUnaryInterceptor(propagate, hideTransport),
		// Fixed windows turn off grpc-go's bandwidth estimation, whose
		// pings are pure overhead for small messages on loopback.
		grpc.WithInitialWindowSize(windowSize),
		grpc.WithInitialConnWindowSize(windowSize),
	}
	if forwarders != nil {
		opts = append(opts, grpc.WithContextDialer(forwarders.Dial))
	}
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fmt.Errorf("gateway: dial %s: %w", target, err)
	}
	return conn, nil
}

// windowSize is the HTTP/2 flow-control window of the loopback connection,
// far above any GetSecrets message.
const windowSize = 1 << 20

// propagate passes the HTTP request's trace context on to the gRPC server,
// so the server's span joins the gateway's trace.
func propagate(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return invoker(telemetry.OutgoingGRPC(ctx), method, req, reply, cc, opts...)
}

// LoopbackTarget is the address to dial a listener bound to addr from the
// same host: the loopback address for wildcard binds, else addr itself.
func LoopbackTarget(addr net.Addr) string {
	tcp, ok := addr.(*net.TCPAddr)
	if !ok {
		return addr.String()
	}
	ip := tcp.IP
	if ip == nil || ip.IsUnspecified() {
		ip = net.IPv4(127, 0, 0, 1)
	}
	return net.JoinHostPort(ip.String(), strconv.Itoa(tcp.Port))
}

// Register adds POST /v1/secrets, served over conn, to mux. Requests are
// admitted by limiter (nil admits all) under the HTTP client's address.
func Register(ctx context.Context, mux *http.ServeMux, conn *grpc.ClientConn, limiter *throttle.Limiter) error {
	gw := runtime.NewServeMux(
		runtime.WithErrorHandler(errorHandler),
		// Only the Authorization header (which grpc-gateway always forwards
		// as "authorization") reaches the broker: clients cannot inject
		// other metadata (Grpc-Metadata-*), and requests stay small.
		runtime.WithIncomingHeaderMatcher(func(string) (string, bool) { return "", false }),
		runtime.WithMarshalerOption(runtime.MIMEWildcard, &runtime.JSONPb{
			MarshalOptions:   protojson.MarshalOptions{EmitUnpopulated: true},
			UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: true},
		}),
	)
	if err := secretbrokerv1.RegisterSecretBrokerServiceHandler(ctx, gw, conn); err != nil {
		return fmt.Errorf("gateway: register: %w", err)
	}
	mux.Handle("POST /v1/secrets", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if limiter != nil {
			release, refused := limiter.Admit(r.Context(), throttle.SourceOf(r.RemoteAddr), "https")
			if refused != nil {
				_, out := runtime.MarshalerForRequest(gw, r)
				runtime.HTTPError(r.Context(), gw, out, w, r, grpcapi.Throttled(refused))
				return
			}
			defer release()
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				writeError(w, http.StatusRequestEntityTooLarge, codes.InvalidArgument, fmt.Sprintf("request body larger than %d bytes", MaxBodyBytes))
				return
			}
			writeError(w, http.StatusBadRequest, codes.InvalidArgument, "the request body could not be read")
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		gw.ServeHTTP(w, r)
	}))
	return nil
}

// errorHandler is grpc-gateway's default error handler that also sets
// Retry-After, in whole seconds rounded up, from a status's RetryInfo.
func errorHandler(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	if st, ok := status.FromError(err); ok {
		if d, ok := grpcapi.RetryAfter(st); ok {
			w.Header().Set("Retry-After", strconv.FormatInt(int64(max((d+time.Second-1)/time.Second, 1)), 10))
		}
	}
	runtime.DefaultHTTPErrorHandler(ctx, mux, m, w, r, err)
}

// writeError answers in grpc-gateway's error shape ({"code","message",
// "details"}) for failures before the request reaches it.
func writeError(w http.ResponseWriter, httpStatus int, code codes.Code, msg string) {
	b, _ := json.Marshal(map[string]any{"code": code, "message": msg, "details": []any{}})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(httpStatus)
	_, _ = w.Write(b)
}

// unreachable is the message of a call that did not reach the broker's own
// gRPC server: grpc-go's text names the loopback address and the dial
// error, which mean nothing to a pod and are the broker's internals.
const unreachable = "the secret broker could not take the request (restarting or overloaded); try again"

// hideTransport replaces client-side transport failures of the loopback
// hop with unreachable; statuses the gRPC server sent pass unchanged.
func hideTransport(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	if serve.IsTransportFailure(err) {
		return status.Error(codes.Unavailable, unreachable)
	}
	return err
}
