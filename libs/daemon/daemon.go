// Package daemon is the skeleton shared by Piggy's long-running services:
// the settings every service has (logging, TLS files, metrics and probe
// port, shutdown bound), the logger and telemetry built from them, and an
// errgroup that runs the servers until the context ends and then shuts
// them down within the bound.
package daemon

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"slices"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	"k8s.io/klog/v2"

	"github.com/piggysec/piggy/libs/buildinfo"
	"github.com/piggysec/piggy/libs/flagenv"
	"github.com/piggysec/piggy/libs/logging"
	"github.com/piggysec/piggy/libs/serve"
	"github.com/piggysec/piggy/libs/telemetry"
	"github.com/piggysec/piggy/libs/tlsreload"
)

// Settings are the options every Piggy service has.
type Settings struct {
	// LogLevel is debug, info, warn or error.
	LogLevel string
	// Debug forces debug logs (the original Piggy's DEBUG default setting).
	Debug bool
	// TLS names the service's certificate, key and the CA bundle used to
	// verify peers (mTLS clients and the services it calls).
	TLS tlsreload.Files
	// TLSReloadInterval is how often the TLS files are checked for changes.
	TLSReloadInterval time.Duration
	// MetricsAddress serves /metrics, /healthz and /readyz over plain HTTP
	// for Prometheus and kubelet probes; empty disables it.
	MetricsAddress string
	// ShutdownGrace bounds the graceful shutdown after SIGTERM.
	ShutdownGrace time.Duration
	// OperatorIdentities are the client certificate names (DNS or URI
	// SAN, or common name) that may call the diagnostics RPCs.
	OperatorIdentities flagenv.List
	// Connections bound what each server listener holds at once.
	Connections serve.ConnLimits
	// IdleTimeout closes connections idle that long (HTTP and gRPC).
	IdleTimeout time.Duration
	// MaxConcurrentStreams bounds the requests in flight per HTTP/2 or
	// gRPC connection.
	MaxConcurrentStreams int
	// Profiling serves the Go runtime profiles (net/http/pprof) under
	// /debug/pprof/ on the metrics address. Off by default: profiles show
	// code paths and timings, not data, but they are for operators only.
	Profiling bool
}

// DefaultOperatorIdentity is the name of the operator client certificate
// the chart issues for grpcurl.
const DefaultOperatorIdentity = "piggy-operator"

// Register adds the settings' flags to fs with their defaults.
func (s *Settings) Register(fs *flag.FlagSet) {
	fs.StringVar(&s.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.BoolVar(&s.Debug, "debug", false, "debug logs (same as --log-level=debug)")
	fs.StringVar(&s.TLS.CertFile, "tls-cert-file", "", "PEM certificate the service presents (required)")
	fs.StringVar(&s.TLS.KeyFile, "tls-key-file", "", "PEM private key of --tls-cert-file (required)")
	fs.StringVar(&s.TLS.CAFile, "tls-ca-file", "", "PEM CA bundle that verifies mTLS clients and called services (required)")
	fs.DurationVar(&s.TLSReloadInterval, "tls-reload-interval", 10*time.Second, "how often TLS files are re-read to pick up rotated certificates")
	fs.StringVar(&s.MetricsAddress, "metrics-address", ":9090", "plain HTTP address for /metrics, /healthz and /readyz; empty disables")
	fs.DurationVar(&s.ShutdownGrace, "shutdown-grace", 4*time.Second, "how long in-flight requests may finish after SIGTERM")
	s.OperatorIdentities = flagenv.List{DefaultOperatorIdentity}
	fs.Var(&s.OperatorIdentities, "operator-identities", "comma-separated client certificate names (DNS/URI SAN or common name) that may call the diagnostics RPCs")
	fs.IntVar(&s.Connections.Total, "max-connections", 1024, "connections each server listener holds at once; more wait in the kernel's backlog until one closes (0: no bound)")
	fs.IntVar(&s.Connections.PerPeer, "max-connections-per-peer", 128, "connections each server listener holds at once from one IP address; more are closed (0: no bound)")
	fs.DurationVar(&s.IdleTimeout, "idle-timeout", 30*time.Second, "close HTTP and gRPC connections idle that long")
	fs.IntVar(&s.MaxConcurrentStreams, "max-concurrent-streams", 256, "requests in flight per HTTP/2 or gRPC connection")
	fs.BoolVar(&s.Profiling, "profiling", false, "serve Go runtime profiles (pprof) under /debug/pprof/ on the metrics address")
}

// Validate reports missing or inconsistent settings.
func (s *Settings) Validate() error {
	var errs []error
	if _, ok := logging.ParseLevel(s.LogLevel); !ok {
		errs = append(errs, fmt.Errorf("log level %q is not debug, info, warn or error", s.LogLevel))
	}
	for _, f := range []struct{ flag, value string }{
		{"--tls-cert-file", s.TLS.CertFile},
		{"--tls-key-file", s.TLS.KeyFile},
		{"--tls-ca-file", s.TLS.CAFile},
	} {
		if f.value == "" {
			errs = append(errs, fmt.Errorf("%s is required", f.flag))
		}
	}
	if s.TLSReloadInterval <= 0 {
		errs = append(errs, errors.New("--tls-reload-interval must be positive"))
	}
	if s.ShutdownGrace <= 0 {
		errs = append(errs, errors.New("--shutdown-grace must be positive"))
	}
	if s.Connections.Total < 0 || s.Connections.PerPeer < 0 || s.IdleTimeout <= 0 || s.MaxConcurrentStreams < 1 {
		errs = append(errs, errors.New("--max-connections and --max-connections-per-peer must not be negative, --idle-timeout and --max-concurrent-streams must be positive"))
	}
	if s.Profiling && s.MetricsAddress == "" {
		errs = append(errs, errors.New("--profiling needs --metrics-address"))
	}
	return errors.Join(errs...)
}

// Daemon is a running service process.
type Daemon struct {
	// Log is the service's JSON logger.
	Log *slog.Logger
	// Telemetry holds the trace and metric providers.
	Telemetry *telemetry.Telemetry
	// TLS is the service's reloading TLS material.
	TLS *tlsreload.Source

	settings Settings
	ctx      context.Context
	cancel   context.CancelFunc
	group    *errgroup.Group
	ready    []func(context.Context) error
}

// New builds the logger, telemetry and TLS source of a service named name
// and starts nothing yet. Logs go to stderr.
func New(ctx context.Context, name, version string, s Settings, stderr io.Writer, getenv func(string) string) (*Daemon, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	level, _ := logging.ParseLevel(s.LogLevel)
	if s.Debug {
		level = slog.LevelDebug
	}
	log := logging.New(stderr, logging.Options{Level: level, Service: name})
	// client-go logs through klog (reflector, watch and API warnings): as
	// JSON records of the service's log, not plain text on stderr.
	klog.SetSlogLogger(log.With("component", "client-go"))
	src, err := tlsreload.Load(s.TLS)
	if err != nil {
		return nil, err
	}
	tel, err := telemetry.Setup(ctx, telemetry.Options{ServiceName: name, Version: version, Getenv: getenv})
	if err != nil {
		return nil, err
	}
	build := buildinfo.Read(version)
	log.Info("starting", "version", build.Version, "go_version", build.GoVersion, "revision", build.Revision)
	if err := registerBuildInfo(tel.MeterProvider.Meter("github.com/piggysec/piggy/libs/daemon"), name, build); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	group, gctx := errgroup.WithContext(ctx)
	d := &Daemon{Log: log, Telemetry: tel, TLS: src, settings: s, ctx: gctx, cancel: cancel, group: group}
	d.Go(func(ctx context.Context) error { return src.Run(ctx, s.TLSReloadInterval, log) })
	return d, nil
}

// Context is done when the process is asked to stop or a component failed.
func (d *Daemon) Context() context.Context { return d.ctx }

// Go runs f in the daemon's group; f must return when ctx ends. An error
// stops the whole daemon.
func (d *Daemon) Go(f func(ctx context.Context) error) {
	d.group.Go(func() error { return f(d.ctx) })
}

// ReadyWhen adds a readiness check reported on /readyz.
func (d *Daemon) ReadyWhen(check func(context.Context) error) { d.ready = append(d.ready, check) }

// Ready runs the readiness checks.
func (d *Daemon) Ready(ctx context.Context) error {
	for _, c := range d.ready {
		if err := c(ctx); err != nil {
			return err
		}
	}
	return nil
}

// NewGRPCServer returns a gRPC server on the daemon's TLS identity that
// requires client certificates (mTLS) and lets only callers call each
// method, with health and reflection.
func (d *Daemon) NewGRPCServer(callers serve.Callers, extra ...grpc.ServerOption) (*grpc.Server, *health.Server, error) {
	return serve.NewGRPCServer(serve.GRPCOptions{TLS: d.TLS.ServerConfig(true), Logger: d.Log, Callers: callers, Extra: extra,
		IdleTimeout: d.settings.IdleTimeout, MaxConcurrentStreams: uint32(d.settings.MaxConcurrentStreams)})
}

// Operators are the identities that may call diagnostics RPCs.
func (d *Daemon) Operators() []string { return d.settings.OperatorIdentities }

// listen opens a listener bounded by the connection limits.
func (d *Daemon) listen(name, addr string) (net.Listener, error) {
	ln, err := serve.Listen(d.ctx, name, addr)
	if err != nil {
		return nil, err
	}
	return serve.LimitListener(ln, d.settings.Connections), nil
}

// ServeGRPC listens on addr and serves s until the daemon stops.
func (d *Daemon) ServeGRPC(name, addr string, s *grpc.Server, h *health.Server) error {
	ln, err := d.listen(name, addr)
	if err != nil {
		return err
	}
	d.Log.InfoContext(d.ctx, "serving gRPC (mTLS)", "server", name, "address", ln.Addr().String())
	d.Go(func(ctx context.Context) error { return serve.GRPC(ctx, s, h, ln, d.settings.ShutdownGrace) })
	return nil
}

// ClientCertificates restrict an HTTPS server to clients presenting a
// certificate. The zero value asks clients for none.
type ClientCertificates struct {
	// CAFile is the PEM bundle that must have signed the client's
	// certificate; re-read like the service's own TLS files. Empty: no
	// client certificate is asked for.
	CAFile string
	// Names, when set, are the certificate names (DNS/URI SAN or common
	// name) one of which the client's certificate must carry.
	Names []string
}

// ServeHTTPS listens on addr and serves handler with server TLS (clients
// are not asked for certificates) until the daemon stops.
func (d *Daemon) ServeHTTPS(name, addr string, handler http.Handler) error {
	return d.ServeHTTPSFor(name, addr, handler, ClientCertificates{})
}

// ServeHTTPSFor is ServeHTTPS for the clients c admits: a client without
// such a certificate is refused in the TLS handshake, before any request.
func (d *Daemon) ServeHTTPSFor(name, addr string, handler http.Handler, c ClientCertificates) error {
	cfg := d.TLS.ServerConfig(false)
	if c.CAFile != "" {
		clients, err := tlsreload.Load(tlsreload.Files{CAFile: c.CAFile})
		if err != nil {
			return fmt.Errorf("%s client CA: %w", name, err)
		}
		d.Go(func(ctx context.Context) error { return clients.Run(ctx, d.settings.TLSReloadInterval, d.Log) })
		cfg = d.TLS.ServerConfigFor(clients, func(cert *x509.Certificate) error {
			ids := serve.CertificateIdentities(cert)
			if len(c.Names) == 0 || slices.ContainsFunc(ids, func(id string) bool { return slices.Contains(c.Names, id) }) {
				return nil
			}
			return fmt.Errorf("client certificate names %q are not among %q", ids, c.Names)
		})
	}
	ln, err := d.listen(name, addr)
	if err != nil {
		return err
	}
	srv := serve.NewHTTPServer(serve.HTTPOptions{Handler: handler, TLS: cfg, Name: name, Logger: d.Log,
		IdleTimeout: d.settings.IdleTimeout, MaxConcurrentStreams: d.settings.MaxConcurrentStreams})
	d.Log.InfoContext(d.ctx, "serving HTTPS", "server", name, "address", ln.Addr().String())
	d.Go(func(ctx context.Context) error { return serve.HTTP(ctx, srv, ln, d.settings.ShutdownGrace) })
	return nil
}

// ServeMetrics serves /metrics, /healthz and /readyz on the metrics
// address, when one is set, and /debug/pprof/ with --profiling.
func (d *Daemon) ServeMetrics() error {
	if d.settings.MetricsAddress == "" {
		return nil
	}
	mux := serve.Probes(d.Ready)
	mux.Handle("GET /metrics", d.Telemetry.MetricsHandler)
	if d.settings.Profiling {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	ln, err := d.listen("metrics", d.settings.MetricsAddress)
	if err != nil {
		return err
	}
	srv := serve.NewHTTPServer(serve.HTTPOptions{Handler: mux, Name: "metrics", Logger: d.Log})
	d.Log.InfoContext(d.ctx, "serving metrics and probes", "server", "metrics", "address", ln.Addr().String())
	d.Go(func(ctx context.Context) error { return serve.HTTP(ctx, srv, ln, d.settings.ShutdownGrace) })
	return nil
}

// Abort stops everything started so far (used when wiring fails half way)
// and returns err.
func (d *Daemon) Abort(err error) error {
	d.cancel()
	_ = d.Wait()
	return err
}

// Wait blocks until every component has stopped, then flushes telemetry.
// It returns the first component error, or nil after a requested stop.
func (d *Daemon) Wait() error {
	err := d.group.Wait()
	d.cancel()
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if terr := d.Telemetry.Shutdown(sctx); terr != nil {
		d.Log.Warn("telemetry shutdown", "error", terr)
	}
	if err != nil {
		return err
	}
	d.Log.Info("stopped")
	return nil
}

// registerBuildInfo records piggy_build_info, always 1, whose attributes
// say which build of service runs: version, go_version and revision.
func registerBuildInfo(m metric.Meter, service string, build buildinfo.Info) error {
	attrs := metric.WithAttributes(
		attribute.String("service", service), attribute.String("version", build.Version),
		attribute.String("go_version", build.GoVersion), attribute.String("revision", build.Revision))
	_, err := m.Int64ObservableGauge("piggy_build_info",
		metric.WithDescription("The running build: always 1, with the version, Go release and source revision as attributes."),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(1, attrs)
			return nil
		}))
	return err
}
