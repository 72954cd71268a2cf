// Package config loads the image-resolver's settings from flags and
// environment variables.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/piggysec/piggy/libs/awsregion"
	"github.com/piggysec/piggy/libs/daemon"
	"github.com/piggysec/piggy/libs/flagenv"
	"github.com/piggysec/piggy/services/image-resolver/internal/resolve"
)

// Kubernetes access modes (--kubernetes).
const (
	// KubernetesAuto uses --kubeconfig when set, else the in-cluster
	// configuration when running in a pod, else runs without Kubernetes.
	KubernetesAuto = "auto"
	// KubernetesOn requires --kubeconfig or the in-cluster configuration.
	KubernetesOn = "on"
	// KubernetesOff never reads pull secrets (local use): lookups are anonymous.
	KubernetesOff = "off"
)

// ECR credential modes (--ecr).
const (
	// ECRAuto uses ECR credentials when the AWS configuration loads, else
	// runs without them with a warning.
	ECRAuto = "auto"
	// ECROn requires the AWS configuration to load.
	ECROn = "on"
	// ECROff never asks AWS for registry credentials.
	ECROff = "off"
)

// Config is the image-resolver's complete configuration.
// DefaultGatewayIdentity is the admission-gateway's certificate name the
// resolver expects by default.
const DefaultGatewayIdentity = "piggy-admission-gateway"

type Config struct {
	daemon.Settings
	// GRPCAddress serves ImageResolverService, health and reflection over mTLS.
	GRPCAddress string
	// GatewayIdentities are the client certificate names (DNS/URI SAN or
	// common name) that may call ResolveImage: the admission-gateway's.
	GatewayIdentities flagenv.List

	// PullSecretNamespaces are the namespaces, besides a request's own,
	// whose pull secrets a request may name (the operator's shared
	// credential namespaces); empty: none.
	PullSecretNamespaces flagenv.List

	// DefaultPlatform fills the platform fields a request leaves empty.
	DefaultPlatform resolve.Platform
	// InsecureRegistries (host[:port]) may be reached without TLS
	// verification or over plain HTTP when a request sets skip_tls_verify.
	InsecureRegistries []string
	// Destinations are the registries and networks with internal addresses
	// (loopback, private, link-local) the resolver may reach; others are
	// refused after DNS resolution and on every redirect.
	Destinations resolve.Destinations
	// RegistryCAFile is a PEM bundle trusted for registries in addition to
	// the system roots; empty for none.
	RegistryCAFile string
	// RegistryTimeout bounds the registry and Kubernetes calls of one lookup.
	RegistryTimeout time.Duration
	// ConfigCacheSize bounds the digest → image config cache.
	ConfigCacheSize int
	// TagCacheSize bounds the tag → digest cache.
	TagCacheSize int
	// MaxManifestBytes and MaxConfigBytes bound what one lookup reads;
	// MaxColdLookups bounds the registry conversations in flight.
	MaxManifestBytes, MaxConfigBytes int64
	MaxColdLookups                   int
	// TagTTL is how long a resolved tag is reused.
	TagTTL time.Duration
	// NegativeTTL is how long a failed lookup is reused.
	NegativeTTL time.Duration
	// Kubernetes is auto, on or off.
	Kubernetes string
	// Kubeconfig is a kubeconfig file; empty uses the in-cluster configuration.
	Kubeconfig string
	// ECR is auto, on or off.
	ECR string
	// ECRRegistries maps registry hosts (host[:port]) to the AWS region of
	// their ECR token, beyond the hosts matching the ECR pattern.
	ECRRegistries map[string]string
}

// Load parses args and the environment (flag names upper-cased, "-" → "_").
// Usage and errors of the flag package go to output.
func Load(args []string, lookup flagenv.Lookup, output io.Writer) (Config, error) {
	var (
		c                          Config
		platform                   string
		insecure                   string
		ecrRegs                    string
		internalRegs, internalNets flagenv.List
	)
	fs := flag.NewFlagSet("image-resolver", flag.ContinueOnError)
	fs.SetOutput(output)
	c.Settings.Register(fs)
	fs.StringVar(&c.GRPCAddress, "grpc-address", ":9443", "mTLS gRPC address of ImageResolverService, health and reflection")
	c.GatewayIdentities = flagenv.List{DefaultGatewayIdentity}
	fs.Var(&c.GatewayIdentities, "gateway-identities", "comma-separated client certificate names (DNS/URI SAN or common name) that may call ResolveImage (the admission-gateway's); diagnostics RPCs take --operator-identities")
	fs.Var(&c.PullSecretNamespaces, "pull-secret-namespaces", "comma-separated namespaces, besides the request's own, whose pull secrets a request may name; others are refused before anything is read (the admission-gateway's --pull-secret-namespaces should match); empty: none")
	fs.StringVar(&platform, "default-platform", "linux/amd64", "platform (os/architecture[/variant]) used for the fields a request leaves empty")
	fs.StringVar(&insecure, "insecure-registries", "", "comma-separated host[:port] list of registries a request with skip_tls_verify may reach without TLS verification or over plain HTTP")
	fs.Var(&internalRegs, "allow-internal-registries", "comma-separated host[:port] list of registries that may have internal addresses (loopback, private, link-local, shared); without a port, any port. Others are refused after DNS resolution and on every redirect")
	fs.Var(&internalNets, "allow-internal-networks", "comma-separated CIDR list of internal networks every registry may reach (for example a private blob store registries redirect to)")
	fs.StringVar(&c.RegistryCAFile, "registry-ca-file", "", "PEM CA bundle trusted for registry TLS in addition to the system roots (read at start)")
	fs.DurationVar(&c.RegistryTimeout, "registry-timeout", 4*time.Second, "bound on the registry and Kubernetes calls of one lookup")
	fs.IntVar(&c.ConfigCacheSize, "config-cache-size", 2048, "maximum number of image configs cached by digest (LRU)")
	fs.IntVar(&c.TagCacheSize, "tag-cache-size", 4096, "maximum number of tag → digest entries cached (LRU)")
	fs.Int64Var(&c.MaxManifestBytes, "max-manifest-bytes", resolve.DefaultMaxManifestBytes, "largest manifest or index read from a registry, in bytes; larger ones are refused before or while they are read")
	fs.Int64Var(&c.MaxConfigBytes, "max-config-bytes", resolve.DefaultMaxConfigBytes, "largest image config read from a registry, in bytes")
	fs.IntVar(&c.MaxColdLookups, "max-cold-lookups", resolve.DefaultMaxColdLookups, "registry lookups in flight at once (cache misses); more wait for a slot within --registry-timeout. With the size limits this bounds the memory lookups take")
	fs.DurationVar(&c.TagTTL, "tag-ttl", time.Minute, "how long a resolved tag is reused; 0 disables the tag cache")
	fs.DurationVar(&c.NegativeTTL, "negative-ttl", 5*time.Second, "how long a failed lookup (not found, refused, unreachable) is reused for the same credentials; 0 disables")
	fs.StringVar(&c.Kubernetes, "kubernetes", KubernetesAuto, "Kubernetes access for pull secrets: auto (kubeconfig, else in-cluster, else off with a warning), on, or off")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig file; empty uses the in-cluster configuration")
	fs.StringVar(&c.ECR, "ecr", ECRAuto, "ECR registry credentials (ecr:GetAuthorizationToken), tried after the pull secrets for <account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn] and --ecr-registries: auto (on when the AWS configuration loads, else off with a warning), on, or off")
	fs.StringVar(&ecrRegs, "ecr-registries", "", "comma-separated host[:port]=region list of further registries served with the ECR token of that region (private endpoints, tests)")
	if err := flagenv.Parse(fs, "", args, lookup); err != nil {
		return Config{}, &daemon.UsageError{Err: err}
	}
	var errs []error
	if err := c.Settings.Validate(); err != nil {
		errs = append(errs, err)
	}
	p, err := resolve.ParsePlatform(platform)
	if err != nil {
		errs = append(errs, fmt.Errorf("--default-platform: %w", err))
	}
	c.DefaultPlatform = p
	for _, h := range strings.Split(insecure, ",") {
		if h = strings.TrimSpace(h); h == "" {
			continue
		}
		reg, err := resolve.NormalizeRegistry(h)
		if err != nil || strings.Contains(h, "/") {
			errs = append(errs, fmt.Errorf("--insecure-registries: %q is not a host[:port]", h))
			continue
		}
		c.InsecureRegistries = append(c.InsecureRegistries, reg)
	}
	for _, h := range internalRegs {
		reg, err := resolve.NormalizeRegistry(h)
		if err != nil || strings.Contains(h, "/") {
			errs = append(errs, fmt.Errorf("--allow-internal-registries: %q is not a host[:port]", h))
			continue
		}
		c.Destinations.Registries = append(c.Destinations.Registries, reg)
	}
	for _, n := range internalNets {
		p, err := netip.ParsePrefix(n)
		if err != nil {
			errs = append(errs, fmt.Errorf("--allow-internal-networks: %q is not a CIDR (e.g. 10.0.0.0/8)", n))
			continue
		}
		c.Destinations.Networks = append(c.Destinations.Networks, p.Masked())
	}
	if c.RegistryTimeout <= 0 {
		errs = append(errs, errors.New("--registry-timeout must be positive"))
	}
	if c.ConfigCacheSize < 1 {
		errs = append(errs, errors.New("--config-cache-size must be at least 1"))
	}
	if c.TagCacheSize < 1 {
		errs = append(errs, errors.New("--tag-cache-size must be at least 1"))
	}
	if c.MaxManifestBytes < 1 || c.MaxConfigBytes < 1 {
		errs = append(errs, errors.New("--max-manifest-bytes and --max-config-bytes must be positive"))
	}
	if c.MaxColdLookups < 1 {
		errs = append(errs, errors.New("--max-cold-lookups must be at least 1"))
	}
	if c.TagTTL < 0 {
		errs = append(errs, errors.New("--tag-ttl must not be negative"))
	}
	if c.NegativeTTL < 0 {
		errs = append(errs, errors.New("--negative-ttl must not be negative"))
	}
	switch c.Kubernetes {
	case KubernetesAuto, KubernetesOn, KubernetesOff:
	default:
		errs = append(errs, fmt.Errorf("--kubernetes %q is not auto, on or off", c.Kubernetes))
	}
	switch c.ECR {
	case ECRAuto, ECROn, ECROff:
	default:
		errs = append(errs, fmt.Errorf("--ecr %q is not auto, on or off", c.ECR))
	}
	for _, pair := range strings.Split(ecrRegs, ",") {
		if pair = strings.TrimSpace(pair); pair == "" {
			continue
		}
		h, region, ok := strings.Cut(pair, "=")
		reg, err := resolve.NormalizeRegistry(h)
		switch {
		case !ok || err != nil || strings.Contains(h, "/"):
			errs = append(errs, fmt.Errorf("--ecr-registries: %q is not host[:port]=region", pair))
		case !awsregion.Valid(strings.TrimSpace(region)):
			errs = append(errs, fmt.Errorf("--ecr-registries: %q is not an AWS region", region))
		default:
			if c.ECRRegistries == nil {
				c.ECRRegistries = map[string]string{}
			}
			c.ECRRegistries[reg] = strings.TrimSpace(region)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return Config{}, &daemon.UsageError{Err: err}
	}
	return c, nil
}
