package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"runtime"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"google.golang.org/grpc"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/piggysec/piggy/libs/daemon"
	"github.com/piggysec/piggy/libs/flagenv"
	imageresolverv1 "github.com/piggysec/piggy/libs/gen/piggy/imageresolver/v1"
	"github.com/piggysec/piggy/libs/serve"
	"github.com/piggysec/piggy/services/image-resolver/internal/config"
	"github.com/piggysec/piggy/services/image-resolver/internal/ecrauth"
	"github.com/piggysec/piggy/services/image-resolver/internal/grpcapi"
	"github.com/piggysec/piggy/services/image-resolver/internal/keychain"
	"github.com/piggysec/piggy/services/image-resolver/internal/resolve"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// run wires the image-resolver and serves until ctx ends.
func run(ctx context.Context, args []string, lookup flagenv.Lookup) error {
	cfg, err := config.Load(args, lookup, os.Stderr)
	if err != nil {
		return err
	}
	d, err := daemon.New(ctx, "image-resolver", version, cfg.Settings, os.Stderr, lookup.Getenv)
	if err != nil {
		return err
	}
	kube, err := kubeClient(ctx, cfg, lookup, d.Log)
	if err != nil {
		return d.Abort(err)
	}
	var cloud []keychain.Cloud
	ecrKeychain, err := newECRKeychain(ctx, cfg, d.Log)
	if err != nil {
		return d.Abort(err)
	}
	if ecrKeychain != nil {
		cloud = append(cloud, ecrKeychain)
	}
	roots, err := registryRoots(cfg.RegistryCAFile)
	if err != nil {
		return d.Abort(err)
	}
	resolver, err := resolve.New(resolve.Options{
		Keychain:           keychain.New(kube, cloud...).AllowNamespaces(cfg.PullSecretNamespaces...),
		DefaultPlatform:    cfg.DefaultPlatform,
		InsecureRegistries: cfg.InsecureRegistries,
		Destinations:       cfg.Destinations,
		RootCAs:            roots,
		Timeout:            cfg.RegistryTimeout,
		ConfigCacheSize:    cfg.ConfigCacheSize,
		TagCacheSize:       cfg.TagCacheSize,
		TagTTL:             cfg.TagTTL,
		NegativeTTL:        cfg.NegativeTTL,
		MaxManifestBytes:   cfg.MaxManifestBytes,
		MaxConfigBytes:     cfg.MaxConfigBytes,
		MaxColdLookups:     cfg.MaxColdLookups,
		UserAgent:          "piggy-image-resolver/" + version,
		Logger:             d.Log,
		MeterProvider:      d.Telemetry.MeterProvider,
	})
	if err != nil {
		return d.Abort(err)
	}
	callers := serve.Callers{}.
		Allow(cfg.GatewayIdentities, imageresolverv1.ImageResolverService_ResolveImage_FullMethodName).
		Allow(d.Operators(), imageresolverv1.ImageResolverService_ExplainImage_FullMethodName, imageresolverv1.ImageResolverService_GetCacheStats_FullMethodName)
	grpcServer, health, err := d.NewGRPCServer(callers, grpc.NumStreamWorkers(streamWorkers()),
		grpc.InitialWindowSize(windowSize), grpc.InitialConnWindowSize(windowSize))
	if err != nil {
		return d.Abort(err)
	}
	grpcapi.New(resolver, d.Log).Register(grpcServer)
	health.SetServingStatus(imageresolverv1.ImageResolverService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	if err := d.ServeGRPC("grpc", cfg.GRPCAddress, grpcServer, health); err != nil {
		return d.Abort(err)
	}
	if err := d.ServeMetrics(); err != nil {
		return d.Abort(err)
	}
	return d.Wait()
}

// windowSize is the HTTP/2 flow-control window of each connection and
// stream. Lookups are a few hundred bytes each way; a fixed window this size
// never stalls them, and setting one turns off gRPC's bandwidth estimation,
// which otherwise sends a ping (and the client an acknowledgement) for most
// calls.
const windowSize = 1 << 20

// streamWorkers is the number of goroutines serving RPCs. Without workers
// gRPC starts a goroutine per RPC whose stack then grows to what a lookup
// needs, which costs more than a warm lookup itself; RPCs beyond the
// workers still get a goroutine of their own.
func streamWorkers() uint32 {
	return uint32(max(16, 4*runtime.GOMAXPROCS(0)))
}

// kubeClient returns the Kubernetes reads the keychain needs, or nil when
// the resolver runs without Kubernetes.
func kubeClient(ctx context.Context, cfg config.Config, lookup flagenv.Lookup, log *slog.Logger) (keychain.Kube, error) {
	if cfg.Kubernetes == config.KubernetesOff {
		log.InfoContext(ctx, "Kubernetes access is off: pull secrets are not read, lookups are anonymous")
		return nil, nil
	}
	var (
		rc  *rest.Config
		err error
	)
	switch {
	case cfg.Kubeconfig != "":
		rc, err = clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", cfg.Kubeconfig, err)
		}
	default:
		if _, inCluster := lookup("KUBERNETES_SERVICE_HOST"); !inCluster && cfg.Kubernetes == config.KubernetesAuto {
			log.WarnContext(ctx, "no kubeconfig and not running in a pod: pull secrets are not read, lookups are anonymous (set --kubernetes=off to silence)")
			return nil, nil
		}
		rc, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("kubernetes in-cluster configuration: %w", err)
		}
	}
	rc.QPS, rc.Burst = 50, 100
	rc.Timeout = cfg.RegistryTimeout
	rc.UserAgent = "piggy-image-resolver/" + version
	rc.Wrap(func(rt http.RoundTripper) http.RoundTripper { return otelhttp.NewTransport(rt) })
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	log.InfoContext(ctx, "reading pull secrets from Kubernetes", "host", rc.Host)
	return cs.CoreV1(), nil
}

// newECRKeychain returns the ECR credential source, or nil when --ecr is
// off (or auto and the AWS configuration does not load).
func newECRKeychain(ctx context.Context, cfg config.Config, log *slog.Logger) (*ecrauth.Keychain, error) {
	if cfg.ECR == config.ECROff {
		log.InfoContext(ctx, "ECR credentials are off")
		return nil, nil
	}
	awsCfg, err := ecrauth.LoadConfig(ctx)
	if err != nil {
		if cfg.ECR == config.ECRAuto {
			log.WarnContext(ctx, "the AWS configuration does not load: ECR credentials are off (set --ecr=off to silence)", "error", err)
			return nil, nil
		}
		return nil, fmt.Errorf("--ecr=on: %w", err)
	}
	kc, err := ecrauth.New(ecrauth.Options{
		Config:     awsCfg,
		Registries: cfg.ECRRegistries,
		Timeout:    cfg.RegistryTimeout,
		FailureTTL: cfg.NegativeTTL,
		Logger:     log,
	})
	if err != nil {
		return nil, err
	}
	log.InfoContext(ctx, "ECR credentials are on", "extra_registries", len(cfg.ECRRegistries))
	return kc, nil
}

// registryRoots returns the system roots plus the PEM bundle in file.
func registryRoots(file string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if file == "" {
		return pool, nil
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("registry CA file: %w", err)
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("registry CA file %s holds no PEM certificate", file)
	}
	return pool, nil
}
