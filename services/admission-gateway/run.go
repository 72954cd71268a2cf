package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/piggysec/piggy/libs/daemon"
	"github.com/piggysec/piggy/libs/flagenv"
	admissiongatewayv1 "github.com/piggysec/piggy/libs/gen/piggy/admissiongateway/v1"
	imageresolverv1 "github.com/piggysec/piggy/libs/gen/piggy/imageresolver/v1"
	"github.com/piggysec/piggy/libs/serve"
	"github.com/piggysec/piggy/services/admission-gateway/internal/config"
	"github.com/piggysec/piggy/services/admission-gateway/internal/grpcapi"
	"github.com/piggysec/piggy/services/admission-gateway/internal/kubeenv"
	"github.com/piggysec/piggy/services/admission-gateway/internal/mutate"
	"github.com/piggysec/piggy/services/admission-gateway/internal/resolverclient"
	"github.com/piggysec/piggy/services/admission-gateway/internal/webhook"
)

// run wires the admission-gateway and serves until ctx ends.
func run(ctx context.Context, args []string, lookup flagenv.Lookup) error {
	cfg, err := config.Load(args, lookup, os.Stderr)
	if err != nil {
		return err
	}
	kube, err := kubeClient(cfg)
	if err != nil {
		return err
	}
	d, err := daemon.New(ctx, "admission-gateway", version, cfg.Settings, os.Stderr, lookup.Getenv)
	if err != nil {
		return err
	}

	var resolver mutate.ImageConfigResolver = unconfiguredResolver{}
	if cfg.ImageResolverAddress != "" {
		host, _, _ := net.SplitHostPort(cfg.ImageResolverAddress)
		conn, err := resolverclient.Dial(cfg.ImageResolverAddress, d.TLS.ClientConfig(host))
		if err != nil {
			return d.Abort(fmt.Errorf("image-resolver client: %w", err))
		}
		defer conn.Close()
		resolver = resolverclient.New(imageresolverv1.NewImageResolverServiceClient(conn))
	}
	envOpts := cfg.EnvSource
	envOpts.Logger = d.Log
	mutator := mutate.New(cfg.Mutation, resolver, kubeenv.New(kube, envOpts))
	if cfg.BrokerCAFile != "" {
		d.Go(func(ctx context.Context) error {
			watchBrokerCA(ctx, cfg.BrokerCAFile, cfg.TLSReloadInterval, cfg.Mutation.BrokerCABundle, mutator, d.Log)
			return nil
		})
	}
	hook, err := webhook.New(mutator, d.Log, d.Telemetry.MeterProvider.Meter("piggy/admission-gateway"))
	if err != nil {
		return d.Abort(err)
	}

	grpcServer, health, err := d.NewGRPCServer(serve.Callers{}.
		Allow(d.Operators(), admissiongatewayv1.AdmissionGatewayService_ExplainPod_FullMethodName))
	if err != nil {
		return d.Abort(err)
	}
	admissiongatewayv1.RegisterAdmissionGatewayServiceServer(grpcServer, grpcapi.New(mutator))
	if err := d.ServeGRPC("grpc", cfg.GRPCAddress, grpcServer, health); err != nil {
		return d.Abort(err)
	}
	mux := serve.Probes(d.Ready)
	mux.Handle("/mutate", hook)
	if err := d.ServeHTTPSFor("webhook", cfg.ListenAddress, mux, cfg.WebhookClients); err != nil {
		return d.Abort(err)
	}
	if err := d.ServeMetrics(); err != nil {
		return d.Abort(err)
	}
	return d.Wait()
}

// kubeClient builds a clientset from a kubeconfig file or the in-cluster
// configuration, with the configured request rate.
func kubeClient(cfg config.Config) (kubernetes.Interface, error) {
	var (
		rc  *rest.Config
		err error
	)
	if cfg.Kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client (set --kubeconfig outside a cluster): %w", err)
	}
	rc.UserAgent = "piggy-admission-gateway/" + version
	rc.QPS, rc.Burst = float32(cfg.KubeQPS), cfg.KubeBurst
	return kubernetes.NewForConfig(rc)
}

// unconfiguredResolver answers when no image-resolver address is set.
type unconfiguredResolver struct{}

func (unconfiguredResolver) Resolve(context.Context, mutate.ImageLookup) (mutate.ImageConfig, error) {
	return mutate.ImageConfig{}, fmt.Errorf("no image-resolver is configured")
}

// watchBrokerCA re-reads the broker CA bundle every interval until ctx
// ends and hands a changed one to the mutator; a bundle that does not
// read is logged and the last good one stays.
func watchBrokerCA(ctx context.Context, path string, interval time.Duration, current string, m *mutate.Mutator, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pem, err := config.ReadBrokerCA(path)
		switch {
		case err != nil:
			log.WarnContext(ctx, "broker CA reload failed; pods keep getting the current bundle", "error", err)
		case pem != current:
			m.SetBrokerCABundle(pem)
			current = pem
			log.InfoContext(ctx, "broker CA bundle reloaded", "file", path)
		}
	}
}
