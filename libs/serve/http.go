package serve

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
)

// HTTPOptions configures NewHTTPServer.
type HTTPOptions struct {
	// Handler serves requests; it is wrapped with OpenTelemetry and panic
	// recovery.
	Handler http.Handler
	// TLS is the server's TLS configuration; nil serves plain HTTP (only
	// for loopback-only or metrics ports).
	TLS *tls.Config
	// Name is the operation name of server spans.
	Name string
	// Logger receives recovered panics and server errors.
	Logger *slog.Logger
	// IdleTimeout closes connections idle that long; zero means 2 minutes.
	IdleTimeout time.Duration
	// MaxConcurrentStreams bounds the HTTP/2 requests in flight per
	// connection; zero keeps net/http's default (250).
	MaxConcurrentStreams int
}

// NewHTTPServer returns an http.Server with timeouts suitable for a
// webhook/API server: headers within 5s, whole request within 30s, idle
// connections kept IdleTimeout, headers capped at 64 KiB. HTTP/2 is offered
// when TLS is set. Handlers run on a pool of long-lived goroutines (see
// pooled).
func NewHTTPServer(opts HTTPOptions) *http.Server {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := recoverHTTP(log, opts.Handler)
	h = otelhttp.NewHandler(h, opts.Name)
	h = pooled(h)
	idle := opts.IdleTimeout
	if idle <= 0 {
		idle = 2 * time.Minute
	}
	return &http.Server{
		Handler:           h,
		TLSConfig:         opts.TLS,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       idle,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: opts.MaxConcurrentStreams},
	}
}

// HTTP serves srv on ln (with TLS when srv.TLSConfig is set) until ctx ends,
// then shuts down gracefully: it stops accepting, lets in-flight requests
// finish for up to grace, and closes what is left. It returns nil after a
// shutdown caused by ctx.
func HTTP(ctx context.Context, srv *http.Server, ln net.Listener, grace time.Duration) error {
	errc := make(chan error, 1)
	go func() {
		if srv.TLSConfig != nil {
			errc <- srv.ServeTLS(ln, "", "")
		} else {
			errc <- srv.Serve(ln)
		}
	}()
	select {
	case err := <-errc:
		return fmt.Errorf("http server on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace)
	defer cancel()
	shutdownErr := srv.Shutdown(sctx)
	if errors.Is(shutdownErr, context.DeadlineExceeded) {
		shutdownErr = srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("http server on %s: %w", ln.Addr(), err)
	}
	if shutdownErr != nil {
		return fmt.Errorf("http server on %s: shutdown: %w", ln.Addr(), shutdownErr)
	}
	return nil
}

// recoverHTTP turns a handler panic into a 500 and a log line with the
// stack (not the panic value, which may hold request data).
func recoverHTTP(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler { //nolint:errorlint // sentinel compared as net/http does
					panic(v)
				}
				log.ErrorContext(r.Context(), "panic in HTTP handler", "path", r.URL.Path, "panic_type", fmt.Sprintf("%T", v), "stack", string(debug.Stack()))
				http.Error(w, "internal error", http.StatusInternalServerError)
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// Probes returns a mux with /healthz (the process is alive) and /readyz
// (ready returns nil when the server can take traffic). Both answer
// "ok" with 200, or 503 with the readiness error.
func Probes(ready func(context.Context) error) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if ready != nil {
			if err := ready(r.Context()); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

// Listen opens a TCP listener on addr; the error says which address failed.
func Listen(ctx context.Context, name, addr string) (net.Listener, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: listen on %q: %w", name, addr, err)
	}
	return ln, nil
}
