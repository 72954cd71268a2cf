package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strings"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"k8s.io/client-go/kubernetes"

	"github.com/piggysec/piggy/libs/daemon"
	"github.com/piggysec/piggy/libs/flagenv"
	secretbrokerv1 "github.com/piggysec/piggy/libs/gen/piggy/secretbroker/v1"
	"github.com/piggysec/piggy/libs/podsettings"
	"github.com/piggysec/piggy/libs/serve"
	"github.com/piggysec/piggy/services/secret-broker/internal/authn"
	"github.com/piggysec/piggy/services/secret-broker/internal/awssecrets"
	"github.com/piggysec/piggy/services/secret-broker/internal/broker"
	"github.com/piggysec/piggy/services/secret-broker/internal/cache"
	"github.com/piggysec/piggy/services/secret-broker/internal/config"
	"github.com/piggysec/piggy/services/secret-broker/internal/gateway"
	"github.com/piggysec/piggy/services/secret-broker/internal/grpcapi"
	"github.com/piggysec/piggy/services/secret-broker/internal/kubeclient"
	"github.com/piggysec/piggy/services/secret-broker/internal/legacy"
	"github.com/piggysec/piggy/services/secret-broker/internal/podcheck"
	"github.com/piggysec/piggy/services/secret-broker/internal/startclaim"
	"github.com/piggysec/piggy/services/secret-broker/internal/throttle"
)

// streamWorkersPerProc sizes the gRPC stream worker pool per processor.
const streamWorkersPerProc = 16

// instrumentationName names the broker's tracer and meter.
const instrumentationName = "github.com/piggysec/piggy/services/secret-broker"

// run wires the secret-broker and serves until ctx ends.
func run(ctx context.Context, args []string, lookup flagenv.Lookup) error {
	cfg, err := config.Load(args, lookup, os.Stderr)
	if err != nil {
		return err
	}
	debug.SetGCPercent(cfg.GCPercent)
	d, err := daemon.New(ctx, "secret-broker", version, cfg.Settings, os.Stderr, lookup.Getenv)
	if err != nil {
		return err
	}
	if err := wire(d, cfg); err != nil {
		return d.Abort(err)
	}
	return d.Wait()
}

// wire builds the broker's parts and starts its servers in d.
func wire(d *daemon.Daemon, cfg config.Config) error {
	tracer := d.Telemetry.TracerProvider.Tracer(instrumentationName)
	meter := d.Telemetry.MeterProvider.Meter(instrumentationName)

	kube, err := kubeclient.New(kubeclient.Options{
		Kubeconfig: cfg.Kubeconfig, QPS: float32(cfg.KubeQPS), Burst: cfg.KubeBurst, UserAgent: "piggy-secret-broker/" + version,
	})
	if err != nil {
		return err
	}
	awsCfg, clients, err := awssecrets.NewAWS(d.Context(), awssecrets.AWSOptions{
		MaxAttempts: cfg.AWSMaxAttempts, MaxBackoff: cfg.AWSMaxBackoff, AttemptTimeout: cfg.AWSAttemptTimeout,
	})
	if err != nil {
		return err
	}
	region := cfg.Defaults.Values[podsettings.AWSRegion]
	if region == "" {
		region = awsCfg.Region
	}
	// Regions are the operator's: the broker's own and --aws-regions. No
	// pod annotation can add one.
	regions, err := awssecrets.AllowedRegions(append([]string{region, awsCfg.Region}, cfg.AWSRegions...)...)
	if err != nil {
		return err
	}
	fetcher, err := awssecrets.NewFetcher(clients, awssecrets.FetcherOptions{Regions: regions, Tracer: tracer, Meter: meter})
	if err != nil {
		return err
	}
	d.Log.Info("AWS regions pods may name", "regions", regions)
	// TokenReviews have a client-go rate limiter of their own: a flood of
	// tokens to review cannot hold up pod reads, nor the other way round.
	reviews, err := kubeclient.NewTokenReviews(kubeclient.Options{
		Kubeconfig: cfg.Kubeconfig, QPS: float32(cfg.TokenReviewQPS), Burst: cfg.TokenReviewBurst, UserAgent: "piggy-secret-broker/" + version,
	})
	if err != nil {
		return err
	}
	authenticator, err := authn.New(reviews, authn.Options{
		Audience:      cfg.TokenAudience,
		AllowUnbound:  cfg.AllowUnboundTokens,
		CacheTTL:      cfg.TokenCacheTTL,
		CacheSize:     cfg.TokenCacheSize,
		RejectionTTL:  cfg.TokenRejectionTTL,
		RejectionSize: cfg.TokenRejectionCacheSize,
		Timeout:       cfg.RequestTimeout,
		Log:           d.Log,
		Tracer:        tracer,
		Meter:         meter,
	})
	if err != nil {
		return err
	}
	if cfg.AllowUnboundTokens {
		d.Log.Warn("--allow-unbound-tokens is on: tokens that are not bound to a pod are accepted; use it only while migrating")
	}
	pods, err := podcheck.NewPods(kube, podcheck.PodsOptions{Informer: cfg.PodInformer, Tracer: tracer, Meter: meter})
	if err != nil {
		return err
	}
	checker := podcheck.New(pods, cfg.Defaults)
	legacySecrets, err := legacyProtocol(d, cfg, reviews, checker)
	if err != nil {
		return err
	}
	starts, err := startClaims(d, cfg, kube, pods)
	if err != nil {
		return err
	}
	d.Go(pods.Start)
	// An AWS read has its own deadline within the request's; a lookup with
	// a stale value to fall back on waits one AWS attempt for a fresh one.
	secretCache := cache.Options{
		Capacity: cfg.SecretCacheSize, TTL: cfg.SecretCacheTTL, StaleIfError: cfg.StaleIfError,
		LoadTimeout: cfg.AWSReadTimeout, StaleWait: cfg.AWSAttemptTimeout,
		MaxBytes: cfg.SecretCacheBytes, NegativeTTL: cfg.NegativeCacheTTL,
	}
	b, err := broker.New(authenticator, checker, fetcher, pods, broker.Options{
		Rules:           cfg.Rules,
		Defaults:        cfg.Defaults,
		DefaultRegion:   region,
		Regions:         regions,
		Cache:           secretCache,
		PodReadBurst:    cfg.PodAWSReadBurst,
		PodReadInterval: cfg.PodAWSReadInterval,
		RequestTimeout:  cfg.RequestTimeout,
		Log:             d.Log,
		Tracer:          tracer,
		Meter:           meter,
		Starts:          starts,
		Legacy:          legacySecrets,
	})
	if err != nil {
		return err
	}

	// A pool of stream workers reuses goroutines (and their grown stacks)
	// across requests instead of starting one per RPC; grpc-go starts a
	// goroutine anyway when every worker is busy, so the pool is sized for
	// the requests in flight at once, not for the processors.
	// GetSecrets authenticates its caller by the pod token it carries, so
	// any client of the CA may ask (the JSON gateway does, over loopback);
	// the diagnostics are for operators.
	callers := serve.Callers{serve.AllMethods: {serve.Anyone}}.
		Allow(d.Operators(), secretbrokerv1.SecretBrokerService_ExplainAccess_FullMethodName, secretbrokerv1.SecretBrokerService_GetCacheStats_FullMethodName)
	grpcServer, health, err := d.NewGRPCServer(callers,
		grpc.NumStreamWorkers(uint32(streamWorkersPerProc*runtime.GOMAXPROCS(0))),
		// Fixed windows turn off grpc-go's bandwidth estimation, whose pings
		// are overhead for the broker's small messages.
		grpc.InitialWindowSize(1<<20), grpc.InitialConnWindowSize(1<<20))
	if err != nil {
		return err
	}
	// Requests are admitted before authentication, per source and under
	// one in-flight cap for both transports; the gateway admits its
	// requests by the HTTP client's address, so the gRPC server lets the
	// gateway's own connections through.
	limiter, err := throttle.New(throttle.Options{
		PerSourceRate: cfg.PerSourceRate, PerSourceBurst: cfg.PerSourceBurst, MaxInFlight: cfg.MaxInFlight, Log: d.Log, Meter: meter,
	})
	if err != nil {
		return err
	}
	forwarders := throttle.NewForwarders()
	secretbrokerv1.RegisterSecretBrokerServiceServer(grpcServer, grpcapi.New(b, grpcapi.Options{Limiter: limiter, Forwarders: forwarders}))
	health.SetServingStatus(secretbrokerv1.SecretBrokerService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	// The gRPC listener is opened here rather than by d.ServeGRPC: the
	// gateway needs its actual address to dial it.
	grpcLn, err := serve.Listen(d.Context(), "grpc", cfg.GRPCAddress)
	if err != nil {
		return err
	}
	d.Log.Info("serving gRPC (mTLS)", "server", "grpc", "address", grpcLn.Addr().String())
	// The JSON gateway reaches the gRPC server over loopback, so the gRPC
	// server stops only once the gateway has drained: a request the
	// gateway accepted while stopping must still find the service.
	grpcCtx, stopGRPC := context.WithCancel(context.WithoutCancel(d.Context()))
	d.Go(func(context.Context) error { return serve.GRPC(grpcCtx, grpcServer, health, grpcLn, cfg.ShutdownGrace) })
	gatewayStarted := false
	defer func() {
		if !gatewayStarted {
			stopGRPC()
		}
	}()

	conn, err := gateway.Dial(gateway.LoopbackTarget(grpcLn.Addr()), d.TLS.ClientConfig(cfg.GatewayTLSServerName), forwarders)
	if err != nil {
		return err
	}
	mux := serve.Probes(d.Ready)
	if err := gateway.Register(d.Context(), mux, conn, limiter); err != nil {
		_ = conn.Close()
		return err
	}
	if legacySecrets != nil {
		if err := legacy.Register(mux, b, legacy.Options{Limiter: limiter, Meter: meter}); err != nil {
			_ = conn.Close()
			return err
		}
	}
	httpLn, err := serve.Listen(d.Context(), "gateway", cfg.ListenAddress)
	if err != nil {
		_ = conn.Close()
		return err
	}
	srv := serve.NewHTTPServer(serve.HTTPOptions{Handler: mux, TLS: d.TLS.ServerConfig(false), Name: "gateway", Logger: d.Log})
	d.Log.Info("serving HTTPS", "server", "gateway", "address", httpLn.Addr().String())
	gatewayStarted = true
	d.Go(func(ctx context.Context) error {
		defer stopGRPC()
		err := serve.HTTP(ctx, srv, httpLn, cfg.ShutdownGrace)
		// Close the loopback connection only once in-flight gateway
		// requests have drained.
		_ = conn.Close()
		return err
	})
	return d.ServeMetrics()
}

// legacyProtocol returns what serves the original Piggy's POST /secret, or
// nil when --legacy-secret-endpoint is off: its own authenticator, for the
// API server's audiences and pod-bound tokens only, with a review cache
// apart from the one of the broker's audience.
func legacyProtocol(d *daemon.Daemon, cfg config.Config, reviews authn.TokenReviewer, checker *podcheck.Checker) (*broker.Legacy, error) {
	if !cfg.LegacySecretEndpoint {
		return nil, nil
	}
	a, err := authn.New(reviews, authn.Options{
		APIAudiences:  true,
		CacheTTL:      cfg.TokenCacheTTL,
		CacheSize:     cfg.TokenCacheSize,
		RejectionTTL:  cfg.TokenRejectionTTL,
		RejectionSize: cfg.TokenRejectionCacheSize,
		Timeout:       cfg.RequestTimeout,
		Log:           d.Log,
		Tracer:        d.Telemetry.TracerProvider.Tracer(instrumentationName),
		Meter:         d.Telemetry.MeterProvider.Meter(instrumentationName),
	})
	if err != nil {
		return nil, err
	}
	d.Log.Warn("--legacy-secret-endpoint is on: POST " + legacy.Path + " answers pods that still run the original Piggy's piggy-env, with their default service account token; turn it off once piggy_secret_broker_legacy_requests_total stays at 0")
	return &broker.Legacy{Authenticator: a, Pods: checker}, nil
}

// inClusterNamespace is where a pod's service account namespace is mounted.
const inClusterNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// startClaims returns the once-per-start claims fed by the pod informer,
// or nil when --once-per-start is off.
func startClaims(d *daemon.Daemon, cfg config.Config, kube kubernetes.Interface, pods *podcheck.Pods) (broker.StartClaims, error) {
	if !cfg.OncePerStart {
		d.Log.Warn("--once-per-start is off: a container may fetch its values again at any time, also after piggy-env started the application")
		return nil, nil
	}
	ns := cfg.PodNamespace
	if ns == "" {
		b, err := os.ReadFile(inClusterNamespace)
		if err != nil {
			return nil, fmt.Errorf("--once-per-start keeps its claims in the broker's namespace: set --pod-namespace (POD_NAMESPACE), or --once-per-start=false (%w)", err)
		}
		ns = strings.TrimSpace(string(b))
	}
	claims := startclaim.New(kube.CoordinationV1().Leases(ns), startclaim.Options{
		Wait: cfg.StartClaimWait,
		Log:  d.Log,
		Current: func(ctx context.Context, s startclaim.Start) (int32, error) {
			pod, err := pods.Pod(ctx, s.Namespace, s.PodName, s.PodUID)
			if err != nil {
				return 0, err
			}
			if string(pod.UID) != s.PodUID { // recreated: this start never changes
				return s.RestartCount, nil
			}
			return podcheck.RestartCount(pod, s.Container), nil
		},
	})
	if err := pods.Watch(claims); err != nil {
		return nil, err
	}
	d.Go(claims.Run)
	return claims, nil
}
