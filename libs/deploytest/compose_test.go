package deploytest

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"sigs.k8s.io/yaml"

	"github.com/piggysec/piggy/libs/proctest"
)

// piggyServices are the compose services built from deploy/docker.
var piggyServices = []string{"admission-gateway", "image-resolver", "secret-broker"}

// loadCompose loads docker-compose.yaml the way docker compose does
// (compose-go: schema validation, interpolation, normalization).
func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	opts, err := cli.NewProjectOptions([]string{filepath.Join(repoRoot(), "docker-compose.yaml")},
		cli.WithWorkingDirectory(repoRoot()), cli.WithInterpolation(true), cli.WithNormalization(true), cli.WithConsistency(true))
	if err != nil {
		t.Fatal(err)
	}
	p, err := cli.ProjectFromOptions(t.Context(), opts)
	if err != nil {
		t.Fatalf("docker-compose.yaml does not load: %v", err)
	}
	return p
}

func service(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, ok := p.Services[name]
	if !ok {
		t.Fatalf("compose service %s is missing", name)
	}
	return s
}

// flagValue returns --name=value from a command line.
func flagValue(cmd []string, name string) string {
	for _, a := range cmd {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	return ""
}

func envValue(s types.ServiceConfig, name string) string {
	if v := s.Environment[name]; v != nil {
		return *v
	}
	return ""
}

// TestComposeFile: the stack has the services, health checks, ports and
// wiring the issue asks for, and its config files agree with it.
func TestComposeFile(t *testing.T) {
	p := loadCompose(t)
	for _, n := range append(slices.Clone(piggyServices), "localstack", "registry", "otel-collector", "jaeger", "prometheus", "certs", "kube-apiserver", "etcd", "kube-setup") {
		service(t, p, n)
	}

	// Health checks on everything long-running, except images that have no
	// binary to run one (said in the file next to them).
	noHealthcheck := map[string]string{
		"otel-collector": "image without shell or HTTP client",
		"kube-apiserver": "distroless image; kube-setup polls /readyz",
		"certs":          "one-shot", "kube-setup": "one-shot",
	}
	for name, s := range p.Services {
		if _, ok := noHealthcheck[name]; ok {
			if s.HealthCheck != nil && !s.HealthCheck.Disable {
				t.Errorf("%s has a healthcheck now; remove it from the exceptions", name)
			}
			continue
		}
		if s.HealthCheck == nil || len(s.HealthCheck.Test) < 2 {
			t.Errorf("%s has no healthcheck", name)
		}
	}
	for _, n := range []string{"certs", "kube-setup"} {
		if s := service(t, p, n); s.Restart != "no" {
			t.Errorf("one-shot %s restarts (%q)", n, s.Restart)
		}
	}

	// Published host ports are unique.
	published := map[string]string{}
	for name, s := range p.Services {
		for _, port := range s.Ports {
			if other, dup := published[port.Published]; dup {
				t.Errorf("host port %s published by %s and %s", port.Published, name, other)
			}
			published[port.Published] = name
		}
	}
	for port, want := range map[string]string{"8443": "admission-gateway", "8444": "secret-broker", "4566": "localstack", "9090": "prometheus", "16686": "jaeger", "5000": "registry"} {
		if published[port] != want {
			t.Errorf("host port %s is %q, want %s", port, published[port], want)
		}
	}

	for _, n := range piggyServices {
		s := service(t, p, n)
		if s.Build == nil || s.Build.Dockerfile != "deploy/docker/"+n+".Dockerfile" || s.Build.Target != "compose" {
			t.Errorf("%s build %+v; want deploy/docker/%s.Dockerfile target compose (it has the healthcheck binary)", n, s.Build, n)
		}
		if hc := strings.Join(s.HealthCheck.Test, " "); hc != "CMD /usr/local/bin/healthcheck http://127.0.0.1:9090/readyz" || flagValue(s.Command, "metrics-address") != ":9090" {
			t.Errorf("%s healthcheck %q with metrics address %q", n, hc, flagValue(s.Command, "metrics-address"))
		}
		if s.User != "65532:65532" || !s.ReadOnly || !slices.Contains(s.CapDrop, "ALL") {
			t.Errorf("%s: user %q read_only %t cap_drop %v", n, s.User, s.ReadOnly, s.CapDrop)
		}
		if d, ok := s.DependsOn["certs"]; !ok || d.Condition != types.ServiceConditionCompletedSuccessfully {
			t.Errorf("%s does not wait for the certificates: %+v", n, s.DependsOn)
		}
		for _, f := range []string{"tls-cert-file", "tls-key-file", "tls-ca-file", "kubeconfig"} {
			if !strings.HasPrefix(flagValue(s.Command, f), "/state/") {
				t.Errorf("%s --%s=%q is not under /state", n, f, flagValue(s.Command, f))
			}
		}
		if env := envValue(s, "OTEL_EXPORTER_OTLP_ENDPOINT"); env != "http://otel-collector:4318" {
			t.Errorf("%s OTLP endpoint %q", n, env)
		}
	}

	gw, broker, resolver := service(t, p, "admission-gateway"), service(t, p, "secret-broker"), service(t, p, "image-resolver")
	if got := flagValue(gw.Command, "image-resolver-address"); got != "image-resolver:"+port(flagValue(resolver.Command, "grpc-address")) {
		t.Errorf("gateway → resolver %q, resolver listens on %q", got, flagValue(resolver.Command, "grpc-address"))
	}
	if d := gw.DependsOn["image-resolver"]; d.Condition != types.ServiceConditionHealthy {
		t.Errorf("gateway does not wait for a healthy resolver: %+v", gw.DependsOn)
	}
	brokerURL := "https://secret-broker:" + port(flagValue(broker.Command, "listen-address"))
	if envValue(gw, "PIGGY_ADDRESS") != brokerURL || flagValue(gw.Command, "allowed-piggy-addresses") != brokerURL || envValue(broker, "PIGGY_ADDRESS") != brokerURL {
		t.Errorf("PIGGY_ADDRESS %q / allowed %q, broker at %s", envValue(gw, "PIGGY_ADDRESS"), flagValue(gw.Command, "allowed-piggy-addresses"), brokerURL)
	}
	if flagValue(gw.Command, "broker-ca-file") != flagValue(broker.Command, "tls-ca-file") {
		t.Error("the gateway does not hand pods the CA of the broker's certificate")
	}
	if flagValue(broker.Command, "gateway-tls-server-name") != "secret-broker" {
		t.Errorf("broker --gateway-tls-server-name %q (its certificate names secret-broker)", flagValue(broker.Command, "gateway-tls-server-name"))
	}
	if flagValue(gw.Command, "token-audience") != flagValue(broker.Command, "token-audience") {
		t.Error("gateway and broker disagree on the token audience")
	}
	localstack := service(t, p, "localstack")
	for _, v := range []string{"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_ENDPOINT_URL_SSM"} {
		if envValue(broker, v) != "http://localstack:4566" {
			t.Errorf("broker %s=%q, want LocalStack", v, envValue(broker, v))
		}
	}
	for _, svc := range []string{"secretsmanager", "ssm", "sts"} {
		if !slices.Contains(strings.Split(envValue(localstack, "SERVICES"), ","), svc) {
			t.Errorf("LocalStack does not run %s", svc)
		}
	}
	if envValue(broker, "AWS_ROLE_ARN") == "" || !strings.HasPrefix(envValue(broker, "AWS_WEB_IDENTITY_TOKEN_FILE"), "/state/") {
		t.Error("the broker does not use web identity (IRSA-style) credentials")
	}
	if d := broker.DependsOn["localstack"]; d.Condition != types.ServiceConditionHealthy {
		t.Error("the broker does not wait for LocalStack")
	}
	if got := flagValue(resolver.Command, "insecure-registries"); got != "registry:5000" {
		t.Errorf("resolver insecure registries %q", got)
	}
	if got := flagValue(resolver.Command, "allow-internal-registries"); got != "registry:5000" {
		t.Errorf("resolver internal registries %q: the compose registry has a private address", got)
	}
	if d := service(t, p, "kube-setup").DependsOn["admission-gateway"]; d.Condition != types.ServiceConditionHealthy {
		t.Error("kube-setup registers the webhook before the gateway is healthy")
	}

	// Prometheus scrapes every service's metrics port; the collector
	// receives OTLP/HTTP on 4318 and sends traces to Jaeger.
	var prom struct {
		ScrapeConfigs []struct {
			JobName       string `json:"job_name"`
			StaticConfigs []struct {
				Targets []string `json:"targets"`
			} `json:"static_configs"`
		} `json:"scrape_configs"`
	}
	readYAML(t, "deploy/compose/prometheus.yml", &prom)
	var targets []string
	for _, sc := range prom.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			targets = append(targets, st.Targets...)
		}
	}
	for _, n := range piggyServices {
		if !slices.Contains(targets, n+":9090") {
			t.Errorf("Prometheus does not scrape %s:9090 (%v)", n, targets)
		}
	}
	var otel struct {
		Receivers struct {
			OTLP struct {
				Protocols struct {
					HTTP struct{ Endpoint string } `json:"http"`
				} `json:"protocols"`
			} `json:"otlp"`
		} `json:"receivers"`
		Exporters map[string]struct{ Endpoint string } `json:"exporters"`
	}
	readYAML(t, "deploy/compose/otel-collector.yaml", &otel)
	if !strings.HasSuffix(otel.Receivers.OTLP.Protocols.HTTP.Endpoint, ":4318") || otel.Exporters["otlp/jaeger"].Endpoint != "jaeger:4317" {
		t.Errorf("collector config: %+v", otel)
	}
	for _, mount := range []struct{ svc, file string }{
		{"prometheus", "deploy/compose/prometheus.yml"}, {"otel-collector", "deploy/compose/otel-collector.yaml"}, {"localstack", "deploy/compose/localstack/seed.sh"},
	} {
		found := false
		for _, v := range service(t, p, mount.svc).Volumes {
			if v.Source == filepath.Join(repoRoot(), mount.file) {
				found = true
			}
		}
		if !found {
			t.Errorf("%s does not mount %s", mount.svc, mount.file)
		}
	}

	// The compose webhook registration uses the chart's match condition.
	chartMWC := one[admissionregistrationv1.MutatingWebhookConfiguration](t, helmTemplate(t), "MutatingWebhookConfiguration", name("admission-gateway"))
	certgen, err := os.ReadFile(filepath.Join(repoRoot(), "deploy/compose/certgen/main.go"))
	if err != nil {
		t.Fatal(err)
	}
	if expr := strings.Join(strings.Fields(chartMWC.Webhooks[0].MatchConditions[0].Expression), " "); !strings.Contains(string(certgen), expr) {
		t.Errorf("certgen's webhook does not use the chart's match condition %q", expr)
	}
}

func readYAML(t *testing.T, rel string, v any) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot(), rel))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, v); err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
}

// TestComposeStartsServices runs deploy/compose/certgen as the certs service
// does, checks its certificates against the names the services use, and
// starts each Piggy service with its compose command and environment (paths
// under /state mapped to the generated directory, servers on loopback): the
// flags exist, the values parse, and the services become ready.
func TestComposeStartsServices(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the service binaries")
	}
	p := loadCompose(t)
	state := t.TempDir()
	certs := service(t, p, "certs")
	cmd := exec.Command("go", append([]string{"run", "./deploy/compose/certgen/main.go"}, certs.Command[3:]...)...)
	cmd.Args = append(cmd.Args[:len(cmd.Args)-1], "-dir="+state) // -dir=/state → the temp dir
	cmd.Dir = repoRoot()
	cmd.Env = append(os.Environ(), "GOWORK=off", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("certgen: %v\n%s", err, out)
	}

	caPEM, err := os.ReadFile(filepath.Join(state, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	for _, n := range append(slices.Clone(piggyServices), "kube-apiserver") {
		raw, err := os.ReadFile(filepath.Join(state, n+".crt"))
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(raw)
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
			if _, err := cert.Verify(x509.VerifyOptions{DNSName: n, Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
				t.Errorf("%s certificate for host %s: %v", n, n, err)
			}
		}
	}
	// Every /state file a service or the apiserver reads exists.
	for name, s := range p.Services {
		for _, a := range append(slices.Clone(s.Command), envValues(s)...) {
			if _, v, ok := strings.Cut(a, "/state/"); ok && (strings.HasPrefix(a, "--") || strings.HasPrefix(a, "/state/")) {
				if _, err := os.Stat(filepath.Join(state, v)); err != nil {
					t.Errorf("%s reads /state/%s, which certgen does not write", name, v)
				}
			}
		}
	}

	resolverAddr := ""
	for _, n := range []string{"image-resolver", "secret-broker", "admission-gateway"} {
		s := service(t, p, n)
		var args []string
		for _, a := range s.Command {
			flag, value, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
			switch {
			case containsString(serverFlags, flag):
				value = "127.0.0.1:0"
			case flag == "image-resolver-address":
				value = resolverAddr
			}
			args = append(args, "--"+flag+"="+strings.ReplaceAll(value, "/state/", state+"/"))
		}
		var env []string
		for k, v := range s.Environment {
			if v != nil {
				env = append(env, k+"="+strings.ReplaceAll(*v, "/state/", state+"/"))
			}
		}
		proc := proctest.Start(t, serviceBinary(t, n), args, env)
		names := map[string][]string{"image-resolver": {"grpc", "metrics"}, "secret-broker": {"gateway", "grpc", "metrics"}, "admission-gateway": {"webhook", "grpc", "metrics"}}[n]
		addrs := proc.Addresses(t, names...)
		waitReady(t, addrs["metrics"])
		if n == "image-resolver" {
			resolverAddr = "localhost:" + port(addrs["grpc"])
		}
	}
}

func envValues(s types.ServiceConfig) []string {
	var out []string
	for _, v := range s.Environment {
		if v != nil {
			out = append(out, *v)
		}
	}
	return out
}
