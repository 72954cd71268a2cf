// Package config loads the admission-gateway's settings from flags and
// environment variables, and the cluster-wide pod defaults (one variable per
// piggysec.com/ annotation, see podsettings).
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/piggysec/piggy/libs/daemon"
	"github.com/piggysec/piggy/libs/flagenv"
	"github.com/piggysec/piggy/libs/podsettings"
	"github.com/piggysec/piggy/services/admission-gateway/internal/brokeraddr"
	"github.com/piggysec/piggy/services/admission-gateway/internal/kubeenv"
	"github.com/piggysec/piggy/services/admission-gateway/internal/mutate"
)

// DefaultEnvImage is the piggy-env image used when neither the
// PIGGY_ENV_IMAGE default nor the pod annotation names one.
const DefaultEnvImage = "ghcr.io/piggysec/piggy-env:latest"

// Config is the admission-gateway's complete configuration.
type Config struct {
	daemon.Settings
	// ListenAddress serves the webhook (/mutate) and probes over HTTPS.
	ListenAddress string
	// WebhookClients, when its CAFile is set, admits to ListenAddress only
	// clients with such a certificate: the kube-apiserver's, configured in
	// its AdmissionConfiguration (kubeConfigFile).
	WebhookClients daemon.ClientCertificates
	// GRPCAddress serves health, reflection and diagnostics over mTLS.
	GRPCAddress string
	// Kubeconfig is a kubeconfig file; empty uses the in-cluster config.
	Kubeconfig string
	// KubeQPS and KubeBurst bound the Kubernetes API request rate
	// (ConfigMap and Secret reads).
	KubeQPS   float64
	KubeBurst int
	// EnvSource configures the ConfigMap cache.
	EnvSource kubeenv.Options
	// ImageResolverAddress is host:port of the image-resolver (mTLS).
	ImageResolverAddress string
	// Mutation holds the operator's mutation settings.
	Mutation mutate.Config
	// BrokerCAFile is re-read every TLSReloadInterval: a rotated bundle
	// reaches the pods admitted after it (ReadBrokerCA).
	BrokerCAFile string
}

// Load parses args and the environment (flag names upper-cased, "-" → "_").
// Usage and errors of the flag package go to output.
func Load(args []string, lookup flagenv.Lookup, output io.Writer) (Config, error) {
	var (
		c              Config
		allowed        string
		locked         string
		onResolveFail  string
		installUID     int64
		tokenAudience  string
		tokenExpiry    time.Duration
		resolveTimeout time.Duration
		skipVerify     bool
		pullSecretNS   flagenv.List
		clientNames    flagenv.List
	)
	fs := flag.NewFlagSet("admission-gateway", flag.ContinueOnError)
	fs.SetOutput(output)
	c.Settings.Register(fs)
	fs.StringVar(&c.ListenAddress, "listen-address", ":8443", "HTTPS address of the webhook (/mutate, /healthz, /readyz)")
	fs.StringVar(&c.WebhookClients.CAFile, "webhook-client-ca-file", "", "PEM CA bundle of the kube-apiserver's webhook client certificate (its AdmissionConfiguration kubeConfigFile); when set, the webhook answers only clients with a certificate it signed (re-read like the TLS files)")
	fs.Var(&clientNames, "webhook-client-names", "comma-separated certificate names (DNS/URI SAN or common name) one of which the webhook client's certificate must carry; empty: any certificate of --webhook-client-ca-file")
	fs.StringVar(&c.GRPCAddress, "grpc-address", ":9443", "mTLS gRPC address for health, reflection and diagnostics")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig file; empty uses the in-cluster configuration")
	fs.Float64Var(&c.KubeQPS, "kube-api-qps", 50, "sustained Kubernetes API requests per second (ConfigMap and Secret reads of reviews)")
	fs.IntVar(&c.KubeBurst, "kube-api-burst", 100, "burst of Kubernetes API requests")
	fs.DurationVar(&c.EnvSource.ConfigMapTTL, "configmap-cache-ttl", 3*time.Second, "how long a ConfigMap read is reused for other reviews; 0 disables the cache")
	fs.IntVar(&c.EnvSource.ConfigMapCacheSize, "configmap-cache-size", 1000, "ConfigMaps cached at most")
	fs.DurationVar(&c.EnvSource.ReadTimeout, "kube-read-timeout", kubeenv.DefaultReadTimeout, "bound on one ConfigMap or Secret read; keep it well inside the webhook timeout, so that a stalled API server gets pods a clear denial")
	fs.Var((*flagenv.List)(&c.EnvSource.SecretNamespaces), "secret-read-namespaces", "comma-separated namespaces whose Secrets the gateway reads to find piggy: values behind valueFrom/envFrom (needs get on secrets there); elsewhere such Secrets are not read and the pod gets a warning; empty: none")
	fs.StringVar(&c.ImageResolverAddress, "image-resolver-address", "", "host:port of the image-resolver (mTLS); empty denies pods whose containers need their image's command")
	fs.DurationVar(&resolveTimeout, "image-resolver-timeout", 3*time.Second, "deadline of one image lookup; keep it well inside the webhook timeout")
	fs.StringVar(&allowed, "allowed-piggy-addresses", "", "comma-separated broker URLs pods may use, compared by scheme, host, port and path (https://*.piggy.svc:8443 allows one leftmost DNS label); defaults to PIGGY_ADDRESS")
	fs.StringVar(&c.BrokerCAFile, "broker-ca-file", "", "PEM CA bundle piggy-env verifies the broker with (delivered to pods; re-read like the TLS files); empty uses the system roots")
	fs.BoolVar(&skipVerify, "piggy-env-skip-verify-tls", false, "let piggy-env skip verification of the broker's certificate (operator decision; not for production)")
	fs.StringVar(&tokenAudience, "token-audience", "piggy", "audience of the projected service-account token piggy-env presents to the broker")
	fs.DurationVar(&tokenExpiry, "token-expiration", 10*time.Minute, "lifetime of the projected token (at least 10m)")
	fs.StringVar(&onResolveFail, "on-resolve-failure", string(mutate.DenyOnResolveFailure), "when an image's command cannot be read: deny the pod, or admit it unmutated with a warning")
	fs.Int64Var(&installUID, "install-run-as-user", 65532, "UID of the install init container; -1 leaves it to the image and pod")
	fs.Var(&pullSecretNS, "pull-secret-namespaces", "comma-separated namespaces, besides the pod's own, whose pull secrets pods may name in piggysec.com/image-pull-secret-namespace (the IMAGE_PULL_SECRET_NAMESPACE default is always one); empty: none")
	fs.StringVar(&locked, "locked-settings", "", "comma-separated annotation names (without prefix) whose cluster default pods cannot override")
	if err := flagenv.Parse(fs, "", args, lookup); err != nil {
		return Config{}, &daemon.UsageError{Err: err}
	}

	var errs []error
	if err := c.Settings.Validate(); err != nil {
		errs = append(errs, err)
	}
	c.WebhookClients.Names = clientNames
	if len(clientNames) > 0 && c.WebhookClients.CAFile == "" {
		errs = append(errs, errors.New("--webhook-client-names needs --webhook-client-ca-file"))
	}
	defaults := podsettings.LoadDefaults(lookup.Getenv, splitList(locked))
	m := mutate.Config{
		Defaults:             defaults,
		EnvImage:             DefaultEnvImage,
		TokenAudience:        tokenAudience,
		TokenExpiration:      tokenExpiry,
		AllowedAddresses:     splitList(allowed),
		SkipVerifyTLS:        skipVerify,
		PullSecretNamespaces: pullSecretNS,
		OnResolveFailure:     mutate.ResolveFailurePolicy(onResolveFail),
		ResolveTimeout:       resolveTimeout,
	}
	if img := defaults.Values[podsettings.PiggyEnvImage]; img != "" {
		m.EnvImage = img
	}
	if len(m.AllowedAddresses) == 0 {
		if a := defaults.Values[podsettings.PiggyAddress]; a != "" {
			m.AllowedAddresses = []string{a}
		}
	}
	// The operator's own default namespace is a namespace the operator named.
	if ns := defaults.Values[podsettings.ImagePullSecretNamespace]; ns != "" && !slices.Contains(m.PullSecretNamespaces, ns) {
		m.PullSecretNamespaces = append(m.PullSecretNamespaces, ns)
	}
	if _, err := brokeraddr.ParsePatterns(m.AllowedAddresses); err != nil {
		errs = append(errs, fmt.Errorf("--allowed-piggy-addresses: %w", err))
	}
	if installUID >= 0 {
		m.InstallRunAsUser = &installUID
	}
	switch m.OnResolveFailure {
	case mutate.DenyOnResolveFailure, mutate.AdmitOnResolveFailure:
	default:
		errs = append(errs, fmt.Errorf("--on-resolve-failure %q is not deny or admit", onResolveFail))
	}
	if tokenExpiry < 10*time.Minute {
		errs = append(errs, fmt.Errorf("--token-expiration %s is below the Kubernetes minimum of 10m", tokenExpiry))
	}
	if tokenAudience == "" {
		errs = append(errs, errors.New("--token-audience must not be empty"))
	}
	if c.KubeQPS <= 0 || c.KubeBurst < 1 {
		errs = append(errs, errors.New("--kube-api-qps must be positive and --kube-api-burst at least 1"))
	}
	if c.EnvSource.ReadTimeout <= 0 {
		errs = append(errs, errors.New("--kube-read-timeout must be positive"))
	}
	if c.EnvSource.ConfigMapTTL < 0 || c.EnvSource.ConfigMapCacheSize < 0 {
		errs = append(errs, errors.New("--configmap-cache-ttl and --configmap-cache-size must not be negative"))
	}
	if resolveTimeout <= 0 {
		errs = append(errs, errors.New("--image-resolver-timeout must be positive"))
	}
	if c.ImageResolverAddress != "" {
		if _, _, err := net.SplitHostPort(c.ImageResolverAddress); err != nil {
			errs = append(errs, fmt.Errorf("--image-resolver-address %q: %w", c.ImageResolverAddress, err))
		}
	}
	if c.BrokerCAFile != "" {
		pem, err := ReadBrokerCA(c.BrokerCAFile)
		if err != nil {
			errs = append(errs, err)
		}
		m.BrokerCABundle = pem
	}
	if err := errors.Join(errs...); err != nil {
		return Config{}, &daemon.UsageError{Err: err}
	}
	c.Mutation = m
	return c, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// ReadBrokerCA reads the --broker-ca-file bundle; it must hold a PEM
// certificate.
func ReadBrokerCA(path string) (string, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--broker-ca-file: %w", err)
	}
	if !strings.Contains(string(pem), "BEGIN CERTIFICATE") {
		return "", fmt.Errorf("--broker-ca-file %s holds no PEM certificate", path)
	}
	return string(pem), nil
}
