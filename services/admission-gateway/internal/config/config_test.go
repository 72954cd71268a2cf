package config

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/piggysec/piggy/services/admission-gateway/internal/mutate"
)

func load(t *testing.T, args []string, env map[string]string) (Config, error) {
	t.Helper()
	tls := []string{"--tls-cert-file", "c", "--tls-key-file", "k", "--tls-ca-file", "ca"}
	return Load(append(tls, args...), func(k string) (string, bool) { v, ok := env[k]; return v, ok }, io.Discard)
}

func TestDefaults(t *testing.T) {
	c, err := load(t, nil, map[string]string{"PIGGY_ADDRESS": "https://broker:8443", "PIGGY_ENV_IMAGE": "reg/piggy-env:1", "AWS_REGION": "eu-west-1"})
	if err != nil {
		t.Fatal(err)
	}
	m := c.Mutation
	if m.EnvImage != "reg/piggy-env:1" || m.TokenAudience != "piggy" || m.TokenExpiration != 10*time.Minute ||
		m.OnResolveFailure != mutate.DenyOnResolveFailure || m.InstallRunAsUser == nil || *m.InstallRunAsUser != 65532 || m.SkipVerifyTLS {
		t.Errorf("mutation config = %+v", m)
	}
	if len(m.AllowedAddresses) != 1 || m.AllowedAddresses[0] != "https://broker:8443" {
		t.Errorf("allowed addresses = %v, want the default PIGGY_ADDRESS", m.AllowedAddresses)
	}
	if m.Defaults.Values["aws-region"] != "eu-west-1" {
		t.Errorf("cluster-wide defaults = %v", m.Defaults.Values)
	}
}

func TestPullSecretNamespaces(t *testing.T) {
	c, err := load(t, nil, nil)
	if err != nil || len(c.Mutation.PullSecretNamespaces) != 0 {
		t.Fatalf("Load = %v, namespaces %v; want none by default", err, c.Mutation.PullSecretNamespaces)
	}
	c, err = load(t, []string{"--pull-secret-namespaces", "registry-creds, ci"}, map[string]string{"IMAGE_PULL_SECRET_NAMESPACE": "shared"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.Mutation.PullSecretNamespaces, []string{"registry-creds", "ci", "shared"}; !slices.Equal(got, want) {
		t.Errorf("namespaces = %v, want %v (the flag and the operator's default)", got, want)
	}
}

func TestWebhookClientsAndSecretReads(t *testing.T) {
	c, err := load(t, nil, nil)
	if err != nil || c.WebhookClients.CAFile != "" || len(c.EnvSource.SecretNamespaces) != 0 {
		t.Fatalf("Load = %v, %+v, secret namespaces %v; want no client certificates and no Secret reads by default", err, c.WebhookClients, c.EnvSource.SecretNamespaces)
	}
	c, err = load(t, []string{"--webhook-client-ca-file=/ca.crt", "--webhook-client-names=kube-apiserver", "--secret-read-namespaces=team-a, team-b"}, nil)
	if err != nil || c.WebhookClients.CAFile != "/ca.crt" || !slices.Equal(c.WebhookClients.Names, []string{"kube-apiserver"}) ||
		!slices.Equal(c.EnvSource.SecretNamespaces, []string{"team-a", "team-b"}) {
		t.Errorf("Load = %v, %+v, secret namespaces %v", err, c.WebhookClients, c.EnvSource.SecretNamespaces)
	}
}

func TestBrokerCAFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(good, []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := load(t, []string{"--broker-ca-file", good}, nil)
	if err != nil || !strings.Contains(c.Mutation.BrokerCABundle, "BEGIN CERTIFICATE") {
		t.Fatalf("Load = %v, bundle %q", err, c.Mutation.BrokerCABundle)
	}
}

func TestRejects(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"resolve policy", []string{"--on-resolve-failure", "ignore"}, nil, `"ignore" is not deny or admit`},
		{"short token", []string{"--token-expiration", "5m"}, nil, "below the Kubernetes minimum"},
		{"empty audience", []string{"--token-audience", ""}, nil, "--token-audience must not be empty"},
		{"resolver address", []string{"--image-resolver-address", "resolver"}, nil, `--image-resolver-address "resolver"`},
		{"missing CA file", []string{"--broker-ca-file", filepath.Join(dir, "none")}, nil, "--broker-ca-file"},
		{"CA file not PEM", []string{"--broker-ca-file", notPEM}, nil, "holds no PEM certificate"},
		{"client names without a client CA", []string{"--webhook-client-names", "kube-apiserver"}, nil, "--webhook-client-names needs --webhook-client-ca-file"},
		{"bad env bool", nil, map[string]string{"PIGGY_ENV_SKIP_VERIFY_TLS": "maybe"}, `invalid value "maybe" for PIGGY_ENV_SKIP_VERIFY_TLS`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := load(t, tt.args, tt.env)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Load error = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}
