package config

import (
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/piggysec/piggy/services/image-resolver/internal/resolve"
)

func TestLoad(t *testing.T) {
	tls := []string{"--tls-cert-file=c", "--tls-key-file=k", "--tls-ca-file=ca"}
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		check   func(t *testing.T, c Config)
		wantErr []string
	}{
		{
			name: "defaults",
			check: func(t *testing.T, c Config) {
				got := []any{c.DefaultPlatform, c.InsecureRegistries, c.RegistryTimeout, c.ConfigCacheSize, c.TagCacheSize, c.TagTTL, c.NegativeTTL, c.Kubernetes, c.Kubeconfig}
				want := []any{resolve.Platform{OS: "linux", Architecture: "amd64"}, []string(nil), 4 * time.Second, 2048, 4096, time.Minute, 5 * time.Second, "auto", ""}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("defaults mismatch (-want +got):\n%s", diff)
				}
			},
		},
		{
			name: "flags and environment",
			args: []string{"--default-platform=linux/arm64/v8", "--insecure-registries= registry.local:5000 ,docker.io", "--tag-ttl=30s"},
			env:  map[string]string{"REGISTRY_TIMEOUT": "2s", "KUBECONFIG": "/tmp/kc", "KUBERNETES": "on", "CONFIG_CACHE_SIZE": "10"},
			check: func(t *testing.T, c Config) {
				got := []any{c.DefaultPlatform, c.InsecureRegistries, c.RegistryTimeout, c.TagTTL, c.Kubeconfig, c.Kubernetes, c.ConfigCacheSize}
				want := []any{resolve.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, []string{"registry.local:5000", "index.docker.io"}, 2 * time.Second, 30 * time.Second, "/tmp/kc", "on", 10}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("config mismatch (-want +got):\n%s", diff)
				}
			},
		},
		{
			name: "invalid values are all reported",
			args: []string{"--default-platform=linux", "--insecure-registries=https://x/y", "--registry-timeout=0s", "--config-cache-size=0", "--tag-ttl=-1s", "--kubernetes=maybe"},
			wantErr: []string{
				"--default-platform", "--insecure-registries", "--registry-timeout must be positive",
				"--config-cache-size must be at least 1", "--tag-ttl must not be negative", `--kubernetes "maybe"`,
			},
		},
		{
			name: "ECR",
			args: []string{"--ecr=on", "--ecr-registries= 127.0.0.1:5000=eu-west-3, ecr.internal.example=us-gov-west-1,"},
			check: func(t *testing.T, c Config) {
				got := []any{c.ECR, c.ECRRegistries}
				want := []any{"on", map[string]string{"127.0.0.1:5000": "eu-west-3", "ecr.internal.example": "us-gov-west-1"}}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("config mismatch (-want +got):\n%s", diff)
				}
			},
		},
		{
			name: "limits, internal destinations and pull-secret namespaces",
			args: []string{"--max-config-bytes=2048", "--max-cold-lookups=3", "--allow-internal-registries=registry.internal:5000, docker.io", "--allow-internal-networks=10.1.2.3/8,fd00::/8"},
			env:  map[string]string{"PULL_SECRET_NAMESPACES": "registry-creds"},
			check: func(t *testing.T, c Config) {
				got := []any{c.MaxManifestBytes, c.MaxConfigBytes, c.MaxColdLookups, c.Destinations, []string(c.PullSecretNamespaces)}
				want := []any{int64(resolve.DefaultMaxManifestBytes), int64(2048), 3, resolve.Destinations{
					Registries: []string{"registry.internal:5000", "index.docker.io"},
					Networks:   []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")},
				}, []string{"registry-creds"}}
				if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
					t.Errorf("config mismatch (-want +got):\n%s", diff)
				}
			},
		},
		{
			name:    "invalid limits and destinations",
			args:    []string{"--max-config-bytes=0", "--max-cold-lookups=0", "--allow-internal-registries=https://x/y", "--allow-internal-networks=10.0.0.0"},
			wantErr: []string{"--max-manifest-bytes and --max-config-bytes must be positive", "--max-cold-lookups must be at least 1", `--allow-internal-registries: "https://x/y"`, `--allow-internal-networks: "10.0.0.0" is not a CIDR`},
		},
		{
			name:  "ECR defaults to auto",
			check: func(t *testing.T, c Config) { checkECR(t, c, ECRAuto) },
		},
		{
			name:    "invalid ECR values",
			args:    []string{"--ecr=maybe", "--ecr-registries=registry.local,x.example/y=eu-west-1,r.example=Mars"},
			wantErr: []string{`--ecr "maybe"`, `"registry.local" is not host[:port]=region`, `"x.example/y=eu-west-1"`, `"Mars" is not an AWS region`},
		},
		{
			name:    "unparsable environment value",
			env:     map[string]string{"NEGATIVE_TTL": "soon"},
			wantErr: []string{`invalid value "soon" for NEGATIVE_TTL`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lookup := func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok }
			c, err := Load(append(append([]string{}, tls...), tt.args...), lookup, io.Discard)
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatal("Load() = nil error")
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not mention %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Load() = %v", err)
			}
			tt.check(t, c)
		})
	}
}

func checkECR(t *testing.T, c Config, mode string) {
	t.Helper()
	if c.ECR != mode || c.ECRRegistries != nil {
		t.Errorf("ECR = %q, %v; want %q, no registries", c.ECR, c.ECRRegistries, mode)
	}
}
