package deploytest

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	imageresolverv1 "github.com/piggysec/piggy/libs/gen/piggy/imageresolver/v1"
	"github.com/piggysec/piggy/libs/proctest"
)

// local describes how a rendered container is run as a local process.
type local struct {
	// tlsDir replaces /etc/piggy/tls (tls.crt, tls.key, ca.crt).
	tlsDir string
	// kubeconfig is passed as --kubeconfig (the pods use in-cluster config).
	kubeconfig string
	// flags replaces the value of these flags (name without dashes).
	flags map[string]string
	// env adds or replaces env vars.
	env map[string]string
}

// serverFlags are bound to free loopback ports locally.
var serverFlags = []string{"listen-address", "grpc-address", "metrics-address"}

// startRendered starts the binary of component with the args and env of its
// rendered Deployment: paths under /etc/piggy/tls point at l.tlsDir, server
// addresses at free loopback ports, downward-API env gets stand-in values and
// $(VAR) references are expanded as the kubelet does.
func startRendered(t *testing.T, objs []*unstructured.Unstructured, component string, l local) *proctest.Process {
	t.Helper()
	ctr := one[appsv1.Deployment](t, objs, "Deployment", name(component)).Spec.Template.Spec.Containers[0]
	args := localArgs(t, ctr.Args, l)
	return proctest.Start(t, serviceBinary(t, component), args, localEnv(ctr, component, l))
}

func localArgs(t *testing.T, rendered []string, l local) []string {
	t.Helper()
	var args []string
	for _, a := range rendered {
		flag, value, ok := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !ok || !strings.HasPrefix(a, "--") {
			t.Fatalf("rendered argument %q is not --flag=value", a)
		}
		switch {
		case l.flags[flag] != "":
			value = l.flags[flag]
		case containsString(serverFlags, flag):
			value = "127.0.0.1:0"
		case strings.HasPrefix(value, "/etc/piggy/tls/"):
			value = filepath.Join(l.tlsDir, strings.TrimPrefix(value, "/etc/piggy/tls/"))
		}
		args = append(args, "--"+flag+"="+value)
	}
	if l.kubeconfig != "" {
		args = append(args, "--kubeconfig="+l.kubeconfig)
	}
	return args
}

var envRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

func localEnv(ctr corev1.Container, component string, l local) []string {
	defined := map[string]string{}
	var out []string
	for _, e := range ctr.Env {
		v := e.Value
		if e.ValueFrom != nil && e.ValueFrom.ResourceFieldRef != nil {
			// The kubelet resolves limits.memory to bytes.
			v = map[string]string{"limits.memory": "268435456"}[e.ValueFrom.ResourceFieldRef.Resource]
		}
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			v = map[string]string{
				"metadata.name":      component + "-7d9f8-abcde",
				"metadata.namespace": releaseNamespace,
				"spec.nodeName":      "node-1",
			}[e.ValueFrom.FieldRef.FieldPath]
		}
		v = envRef.ReplaceAllStringFunc(v, func(ref string) string {
			if d, ok := defined[ref[2:len(ref)-1]]; ok {
				return d
			}
			return ref
		})
		if o, ok := l.env[e.Name]; ok {
			v = o
		}
		defined[e.Name] = v
		out = append(out, e.Name+"="+v)
	}
	for k, v := range l.env {
		if _, ok := defined[k]; !ok {
			out = append(out, k+"="+v)
		}
	}
	return out
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// writeRenderedTLS writes a component's rendered TLS Secret (generated mode)
// to a directory as the Secret volume would.
func writeRenderedTLS(t *testing.T, objs []*unstructured.Unstructured, component string) string {
	t.Helper()
	s := one[corev1.Secret](t, objs, "Secret", name(component)+"-tls")
	dir := t.TempDir()
	for k, v := range s.Data {
		if err := os.WriteFile(filepath.Join(dir, k), v, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// unreachableKubeconfig points at a closed port: the services build their
// clients lazily, so they start; calls fail fast.
func unreachableKubeconfig(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := `apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]
users: [{name: none, user: {token: none}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func port(addr string) string { return addr[strings.LastIndex(addr, ":")+1:] }

// metricValue sums the samples of a metric (exact name) on a Prometheus
// text endpoint whose labels contain every given label="value".
func metricValue(t *testing.T, metricsAddr, metric string, labels ...string) float64 {
	t.Helper()
	code, body := proctest.Get(t, "http://"+metricsAddr+"/metrics", nil)
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d", code)
	}
	var sum float64
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, metric+"{") && !strings.HasPrefix(line, metric+" ") {
			continue
		}
		matches := true
		for _, l := range labels {
			if !strings.Contains(line, l) {
				matches = false
			}
		}
		if !matches {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(line[strings.LastIndex(line, " ")+1:], &v); err == nil {
			sum += v
		}
	}
	return sum
}

func waitReady(t *testing.T, metricsAddr string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + metricsAddr + "/readyz")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("/readyz on %s: %d %s", metricsAddr, resp.StatusCode, body)
			}
		} else if time.Now().After(deadline) {
			t.Fatalf("/readyz on %s: %v", metricsAddr, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestChartStartsServices: the chart's args and env, with the certificates
// the chart generates, start the real binaries (every flag exists and every
// value parses), the gateway reaches the resolver over mTLS, and the helm
// test pod's script passes against them (and fails when a service is down).
func TestChartStartsServices(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the service binaries")
	}
	// "localhost" in every certificate lets local clients verify them.
	objs := helmTemplate(t,
		"--set", "admission-gateway.tls.extraDnsNames={localhost}",
		"--set", "image-resolver.tls.extraDnsNames={localhost}",
		"--set", "secret-broker.tls.extraDnsNames={localhost}",
		"--set", "global.podDefaults.aws-region=eu-west-1",
		"--set", "secret-broker.gogc=200",
		"--set-json", `global.lockedSettings=["piggy-enforce-integrity"]`,
		"--set", "global.debug=true")
	kubeconfig := unreachableKubeconfig(t)
	tlsDirs := map[string]string{}
	for _, c := range components {
		tlsDirs[c] = writeRenderedTLS(t, objs, c)
	}

	resolver := startRendered(t, objs, "image-resolver", local{tlsDir: tlsDirs["image-resolver"], kubeconfig: kubeconfig})
	ra := resolver.Addresses(t, "grpc", "metrics")
	waitReady(t, ra["metrics"])

	broker := startRendered(t, objs, "secret-broker", local{tlsDir: tlsDirs["secret-broker"], kubeconfig: kubeconfig,
		env: map[string]string{"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}})
	ba := broker.Addresses(t, "gateway", "grpc", "metrics")
	waitReady(t, ba["metrics"])

	gateway := startRendered(t, objs, "admission-gateway", local{tlsDir: tlsDirs["admission-gateway"], kubeconfig: kubeconfig,
		flags: map[string]string{"image-resolver-address": "localhost:" + port(ra["grpc"])}})
	ga := gateway.Addresses(t, "webhook", "grpc", "metrics")
	waitReady(t, ga["metrics"])

	// The chart's CA verifies every service, and the gRPC ports take the
	// chart's client identities (mTLS).
	caPEM, err := os.ReadFile(filepath.Join(tlsDirs["admission-gateway"], "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	for c, addr := range map[string]string{"image-resolver": ra["grpc"], "secret-broker": ba["grpc"], "admission-gateway": ga["grpc"]} {
		client, err := tls.LoadX509KeyPair(filepath.Join(tlsDirs["admission-gateway"], "tls.crt"), filepath.Join(tlsDirs["admission-gateway"], "tls.key"))
		if err != nil {
			t.Fatal(err)
		}
		t.Run("gRPC health of "+c, func(t *testing.T) {
			proctest.CheckGRPCHealth(t, "localhost:"+port(addr), &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{client}, ServerName: "localhost"})
		})
	}

	// Diagnostics answer the chart's operator certificate, and refuse the
	// service identities: the chart passes --operator-identities and issues
	// <prefix>-operator-tls.
	t.Run("diagnostics answer the operator certificate only", func(t *testing.T) {
		operator := writeRenderedTLS(t, objs, "operator")
		for who, dir := range map[string]string{"operator": operator, "admission-gateway": tlsDirs["admission-gateway"]} {
			cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"))
			if err != nil {
				t.Fatal(err)
			}
			conn, err := grpc.NewClient("localhost:"+port(ra["grpc"]), grpc.WithTransportCredentials(credentials.NewTLS(
				&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: "localhost"})))
			if err != nil {
				t.Fatal(err)
			}
			_, err = imageresolverv1.NewImageResolverServiceClient(conn).GetCacheStats(t.Context(), &imageresolverv1.GetCacheStatsRequest{})
			conn.Close()
			if want := map[string]codes.Code{"operator": codes.OK, "admission-gateway": codes.PermissionDenied}[who]; status.Code(err) != want {
				t.Errorf("GetCacheStats as %s: %v, want %v", who, err, want)
			}
		}
	})

	// A pod without command makes the gateway ask the resolver: the lookup
	// reaches it over mTLS with the gateway's identity (its counter moves),
	// whatever the registry answers.
	before := metricValue(t, ra["metrics"], "piggy_image_resolver_lookups_total")
	review := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","kind":{"group":"","version":"v1","kind":"Pod"},` +
		`"resource":{"group":"","version":"v1","resource":"pods"},"namespace":"team-a","operation":"CREATE","object":{"apiVersion":"v1","kind":"Pod",` +
		`"metadata":{"name":"app","annotations":{"piggysec.com/aws-secret-name":"team-a/app"}},"spec":{"containers":[{"name":"app","image":"registry.invalid/app:1","env":[{"name":"X","value":"piggy:X"}]}]}}}}`
	https := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := https.Post("https://localhost:"+port(ga["webhook"])+"/mutate", "application/json", strings.NewReader(review))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"uid":"u1"`) {
		t.Fatalf("review answered %d: %s", resp.StatusCode, body)
	}
	if after := metricValue(t, ra["metrics"], "piggy_image_resolver_lookups_total"); after <= before {
		t.Errorf("the resolver saw no lookup (%v → %v); gateway answered %s\ngateway log:\n%s", before, after, body, gateway.Output())
	}

	t.Run("helm test script", func(t *testing.T) {
		if _, err := exec.LookPath("curl"); err != nil {
			t.Fatal("curl is needed to run the helm test pod's script locally (apt-get install curl)")
		}
		pod := one[corev1.Pod](t, objs, "Pod", releaseName+"-test")
		ctr := pod.Spec.Containers[0]
		envs := map[string]string{
			"CA_FILE":     filepath.Join(tlsDirs["admission-gateway"], "ca.crt"),
			"GATEWAY_URL": "https://localhost:" + port(ga["webhook"]),
			"BROKER_URL":  "https://localhost:" + port(ba["gateway"]),
		}
		for _, e := range ctr.Env {
			if _, ok := envs[e.Name]; !ok {
				t.Errorf("the test pod sets %s, which this test does not map", e.Name)
			}
		}
		script := append(append([]string{}, ctr.Command[1:]...), ctr.Args...)
		reviews := metricValue(t, ga["metrics"], "piggy_admission_reviews_total", `outcome="unchanged"`)
		out, err := run(t, t.TempDir(), mapEnv(envs), ctr.Command[0], script...)
		if err != nil || !strings.Contains(out, "PASS") {
			t.Fatalf("helm test script failed: %v\n%s", err, out)
		}
		if got := metricValue(t, ga["metrics"], "piggy_admission_reviews_total", `outcome="unchanged"`); got != reviews+1 {
			t.Errorf("the script's AdmissionReview was not answered as unchanged (%v → %v)", reviews, got)
		}
		// It must fail when a service does not answer.
		envs["BROKER_URL"] = "https://localhost:1"
		if out, err := run(t, t.TempDir(), mapEnv(envs), ctr.Command[0], script...); err == nil {
			t.Fatalf("helm test script passed with the broker unreachable:\n%s", out)
		}
	})
}

func mapEnv(m map[string]string) []string {
	var out []string
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	return out
}
