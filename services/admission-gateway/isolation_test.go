package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"

	"github.com/piggysec/piggy/libs/kubetest"
	"github.com/piggysec/piggy/libs/proctest"
	"github.com/piggysec/piggy/libs/registrytest"
)

// TestBrokerAddressAllowlist is the admission issue's allowlist attack,
// through the real apiserver: with the broker's namespace allowed by a
// wildcard, a pod must not point piggy-env (and its pod-bound token) at a
// host that merely starts like an allowed one, or hides behind user
// information. An entry that is a raw string prefix (the old syntax that
// allowed both) is refused at start.
func TestBrokerAddressAllowlist(t *testing.T) {
	s := startStack(t, "allowlist", "", "--allowed-piggy-addresses=https://*.piggy.svc:8443")
	ns := s.namespace(t, nil)
	tests := []struct {
		name, addr, want string
	}{
		{"longer host", "https://piggy-secret-broker.piggy.svc.evil.example:8443", "is not an allowed broker address"},
		{"user information", "https://piggy-secret-broker.piggy.svc:8443@evil.example/", "has user information before the host"},
		{"two labels for the wildcard", "https://a.b.piggy.svc:8443", "is not an allowed broker address"},
		{"other port", "https://piggy-secret-broker.piggy.svc:9443", "is not an allowed broker address"},
		{"allowed", "https://piggy-secret-broker.piggy.svc:8443", ""},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.create(t, appPod(ns, "web-"+string(rune('a'+i)), map[string]string{"piggysec.com/piggy-address": tt.addr},
				corev1.Container{Image: "registry.example/app:1", Command: []string{"/a"}, Env: env("A", "piggy:A")}))
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("create: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("create error = %v, want %q", err, tt.want)
			}
		})
	}

	t.Run("prefix entry is refused at start", func(t *testing.T) {
		code, stderr := proctest.Run(t, proctest.Build(t, "."), append(s.pki.TLSArgs(),
			"--listen-address=127.0.0.1:0", "--grpc-address=127.0.0.1:0", "--metrics-address=127.0.0.1:0",
			"--kubeconfig", proctest.UnreachableKubeconfig(t), "--image-resolver-address=127.0.0.1:1",
			"--allowed-piggy-addresses=https://piggy-secret-broker.piggy.svc*"), nil)
		if code != 2 || !strings.Contains(stderr, "a wildcard may only be the whole leftmost DNS label") {
			t.Errorf("exit %d, stderr %q; want 2 and the wildcard rule", code, stderr)
		}
	})
}

// TestPullSecretOfAnotherNamespace is the admission issue's cross-namespace
// pull secret attack, through the real apiserver: a pod in one namespace
// names a pull secret of another namespace, whose image it could otherwise
// read the private command of (and learn whether the Secret exists). The
// pod is denied with one message whether or not the Secret exists.
func TestPullSecretOfAnotherNamespace(t *testing.T) {
	s := startStack(t, "pullsecret", "")
	victim, attacker := s.namespace(t, nil), s.namespace(t, nil)
	if _, err := s.cs.CoreV1().Secrets(victim).Create(t.Context(), registrytest.DockerConfigJSONSecret(victim, "regcred", s.private.Host, privateUser, privatePassword), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	s.private.Push(t, "victim-app:1", registrytest.Image(t, "linux/amd64", []string{"/victim-entry", "--token=private"}, nil))

	var messages []string
	for i, secret := range []string{"regcred", "no-such-secret"} {
		pod := appPod(attacker, fmt.Sprintf("thief-%d", i), map[string]string{
			"piggysec.com/aws-secret-name":             "team/app",
			"piggysec.com/image-pull-secret":           secret,
			"piggysec.com/image-pull-secret-namespace": victim,
		}, corev1.Container{Image: s.private.Ref("victim-app:1"), Env: env("A", "piggy:A")})
		p, err := s.create(t, pod)
		if err == nil {
			t.Fatalf("pull secret %s/%s: admitted, args %q", victim, secret, p.Spec.Containers[0].Args)
		}
		if strings.Contains(err.Error(), "victim-entry") {
			t.Errorf("the denial shows the victim's command: %v", err)
		}
		want := fmt.Sprintf(`pull secrets come from the pod's own namespace %q; namespace %q is not one the cluster operator shares pull secrets from`, attacker, victim)
		if !strings.Contains(err.Error(), want) {
			t.Errorf("pull secret %s/%s: error %v, want %q", victim, secret, err, want)
		}
		messages = append(messages, strings.ReplaceAll(err.Error(), pod.Name, "<pod>"))
	}
	if messages[0] != messages[1] {
		t.Errorf("an existing and a missing Secret are told apart:\n%s\n%s", messages[0], messages[1])
	}
}

// TestConfigMapReadsUnderABurst is the admission issue's rollout through
// the gateway's Kubernetes client: reviews that take env from ConfigMaps
// arrive at once. Pods that share a ConfigMap cost one read (a short
// cache, concurrent reads shared), and reviews that each need their own
// ConfigMap are all answered within the API server's webhook timeout
// (client-go's default limiter of 5 requests/s after a burst of 10 would
// hold the 60th read for at least 10 s). The gateway's API requests are
// counted by a proxy in front of the real apiserver.
func TestConfigMapReadsUnderABurst(t *testing.T) {
	proxy := startCountingProxy(t, kube.Cluster(t))
	s := startStack(t, "burst", "", "--kubeconfig", proxy.kubeconfig, "--configmap-cache-ttl=1m")
	ns := s.namespace(t, nil)
	const distinct = 60
	for i := range distinct + 1 {
		name := fmt.Sprintf("cm-%d", i)
		if i == distinct {
			name = "shared"
		}
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Data: map[string]string{"A": "piggy:A"}}
		if _, err := s.cs.CoreV1().ConfigMaps(ns).Create(t.Context(), cm, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	pod := func(i int, configMap string) *corev1.Pod {
		return appPod(ns, fmt.Sprintf("web-%d", i), map[string]string{"piggysec.com/aws-secret-name": "team/app"}, corev1.Container{
			Image: "registry.example/app:1", Command: []string{"/app"},
			Env: []corev1.EnvVar{{Name: "A", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
				LocalObjectReference: corev1.LocalObjectReference{Name: configMap}, Key: "A"}}}},
		})
	}
	// The API server gives the webhook the chart's timeoutSeconds (5).
	client := s.peerClient(5 * time.Second)
	burst := func(t *testing.T, n int, configMap func(int) string) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := range n {
			wg.Go(func() {
				resp, err := s.forge(t.Context(), client, ns, pod(i, configMap(i)))
				if err == nil && (!resp.Allowed || len(resp.Patch) == 0) {
					err = fmt.Errorf("review %d: allowed %v, patch %d bytes, result %+v", i, resp.Allowed, len(resp.Patch), resp.Result)
				}
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
	}

	t.Run("pods sharing a ConfigMap cost one read", func(t *testing.T) {
		burst(t, 50, func(int) string { return "shared" })
		if n := proxy.count("GET", "/api/v1/namespaces/"+ns+"/configmaps/shared"); n != 1 {
			t.Errorf("%d reads of the shared ConfigMap for 50 reviews, want 1", n)
		}
	})
	t.Run("a read per review is not throttled", func(t *testing.T) {
		burst(t, distinct, func(i int) string { return fmt.Sprintf("cm-%d", i) })
		for i := range distinct {
			if n := proxy.count("GET", fmt.Sprintf("/api/v1/namespaces/%s/configmaps/cm-%d", ns, i)); n != 1 {
				t.Errorf("ConfigMap cm-%d read %d times, want 1", i, n)
			}
		}
	})
}

// countingProxy serves the cluster's API on a loopback port with the
// cluster's admin credentials and counts requests by method and path.
type countingProxy struct {
	kubeconfig string
	mu         sync.Mutex
	counts     map[string]int
}

func startCountingProxy(t *testing.T, c *kubetest.Cluster) *countingProxy {
	t.Helper()
	rt, err := rest.TransportFor(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	target, err := url.Parse(c.Host())
	if err != nil {
		t.Fatal(err)
	}
	p := &countingProxy{counts: map[string]int{}}
	rp := &httputil.ReverseProxy{Transport: rt, Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(target)
		p.mu.Lock()
		p.counts[r.In.Method+" "+r.In.URL.Path]++
		p.mu.Unlock()
	}}
	srv := httptest.NewServer(rp)
	t.Cleanup(srv.Close)
	p.kubeconfig = filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(p.kubeconfig, fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters: [{name: proxy, cluster: {server: %q}}]
users: [{name: proxy, user: {}}]
contexts: [{name: proxy, context: {cluster: proxy, user: proxy}}]
current-context: proxy
`, srv.URL), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *countingProxy) count(method, path string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.counts[method+" "+path]
}

// peerClient is a client of the webhook port as any pod could be: it
// verifies the gateway's certificate and presents none.
func (s *stack) peerClient(timeout time.Duration) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.pki.CA.CertPEM)
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2: true,
	}}
}

// forge POSTs an AdmissionReview of pod in namespace to the gateway's
// /mutate, as the API server would, or as anybody who reaches the port.
func (s *stack) forge(ctx context.Context, client *http.Client, namespace string, pod *corev1.Pod) (*admissionv1.AdmissionResponse, error) {
	raw, err := json.Marshal(pod)
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{UID: "forged", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Operation: admissionv1.Create, Namespace: namespace, Object: runtime.RawExtension{Raw: raw}},
	})
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+s.webhook+"/mutate", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out admissionv1.AdmissionReview
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.Response == nil {
		return nil, fmt.Errorf("review answer (status %d): %v", resp.StatusCode, err)
	}
	return out.Response, nil
}

// TestReservedNames is the admission issue's reserved-name attack, through
// the real apiserver: a pod that brings its own piggy-env or piggy-token
// volume, install-piggy-env container, piggy-uid annotation, PIGGY_UID or
// already launched container had them kept as they were (a hostPath
// launcher, a token of another audience, a chosen UID, a broker address
// outside the allowlist). Each is denied with a message naming the pod's
// own object; a pod that is exactly what the webhook made of an earlier one
// (a persisted pod created again) is admitted unchanged.
func TestReservedNames(t *testing.T) {
	s := startStack(t, "reserved", "")
	ns := s.namespace(t, nil)
	annotations := map[string]string{"piggysec.com/aws-secret-name": "team/app"}
	app := func() corev1.Container {
		return corev1.Container{Image: "registry.example/app:1", Command: []string{"/app"}, Env: env("A", "piggy:A")}
	}
	// The first pod also waits for the webhook configuration to apply.
	original, err := s.create(t, appPod(ns, "original", annotations, app()))
	if err != nil {
		t.Fatal(err)
	}
	checkLaunched(t, original, "app", []string{"/app"})

	// copyOf is the persisted mutated pod as a new pod of the same spec.
	copyOf := func(name string, change func(*corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: maps.Clone(original.Annotations)}, Spec: *original.Spec.DeepCopy()}
		if change != nil {
			change(p)
		}
		return p
	}
	hostPath := corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/var/lib/kubelet/pods"}}
	foreignToken := corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{
		ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: "https://kubernetes.default.svc", Path: "token"}}}}}
	withVolume := func(name string, src corev1.VolumeSource, c corev1.Container) *corev1.Pod {
		p := appPod(ns, "", annotations, c)
		p.Spec.Volumes = []corev1.Volume{{Name: name, VolumeSource: src}}
		return p
	}
	plain := corev1.Container{Image: "registry.example/app:1", Command: []string{"/app"}, Env: env("A", "plain"),
		VolumeMounts: []corev1.VolumeMount{{Name: "piggy-token", MountPath: "/token"}}}

	tests := []struct {
		name string
		pod  *corev1.Pod
		want string
	}{
		{"hostPath launcher volume", withVolume("piggy-env", hostPath, app()), `piggy: volume "piggy-env" is reserved for Piggy; rename your volume`},
		{"hostPath token volume", withVolume("piggy-token", hostPath, app()), `piggy: volume "piggy-token" is reserved for Piggy; rename your volume`},
		{"token of another audience", withVolume("piggy-token", foreignToken, app()), `piggy: volume "piggy-token" is reserved for Piggy; rename your volume`},
		{"token of another audience on a pod without piggy: values", withVolume("piggy-token", foreignToken, plain), `piggy: volume "piggy-token" is reserved for Piggy; rename your volume`},
		{"own install init container", func() *corev1.Pod {
			p := appPod(ns, "", annotations, app())
			p.Spec.InitContainers = []corev1.Container{{Name: "install-piggy-env", Image: "registry.example/evil:1", Command: []string{"/evil", "/piggy"},
				VolumeMounts: []corev1.VolumeMount{{Name: "piggy-env", MountPath: "/piggy"}}}}
			return p
		}(), `piggy: init container "install-piggy-env" is reserved for Piggy; rename your container`},
		{"container named like the install container", func() *corev1.Pod {
			c := app()
			c.Name = "install-piggy-env"
			return appPod(ns, "", annotations, c)
		}(), `piggy: container name "install-piggy-env" is reserved for Piggy; rename your container`},
		{"chosen piggy-uid annotation", appPod(ns, "", map[string]string{"piggysec.com/aws-secret-name": "team/app",
			"piggysec.com/piggy-uid": `{"app":{"uid":"0123456789abcdef0123456789abcdef","signature":""}}`}, app()),
			`piggy: annotation piggysec.com/piggy-uid is written by Piggy; remove it`},
		{"chosen PIGGY_UID", func() *corev1.Pod {
			c := app()
			c.Env = append(c.Env, env("PIGGY_UID", "0123456789abcdef0123456789abcdef")...)
			return appPod(ns, "", annotations, c)
		}(), `piggy: container "app" sets PIGGY_UID, which is reserved for Piggy; remove it`},
		{"container that already starts piggy-env", appPod(ns, "", annotations, corev1.Container{Image: "registry.example/app:1",
			Command: []string{"/piggy/piggy-env"}, Args: []string{"--", "/app"}, Env: env("A", "piggy:A", "PIGGY_ADDRESS", "https://evil.example", "PIGGY_TOKEN_FILE", "/t/token"),
			VolumeMounts: []corev1.VolumeMount{{Name: "piggy-token", MountPath: "/t"}}}),
			`piggy: container "app" already starts through /piggy/piggy-env, which only Piggy sets up; give it its own command`},
		{"copy with another broker address", copyOf("", func(p *corev1.Pod) {
			p.Spec.Containers[0].Env = append(p.Spec.Containers[0].Env, env("PIGGY_ADDRESS", "https://evil.example")...)
		}), `piggy: container "app" starts through /piggy/piggy-env but PIGGY_ADDRESS is not what Piggy set`},
		{"copy with a chosen uid", copyOf("", func(p *corev1.Pod) {
			p.Annotations["piggysec.com/piggy-uid"] = strings.Replace(p.Annotations["piggysec.com/piggy-uid"], envOf(p.Spec.Containers[0], "PIGGY_UID"), "0123456789abcdef0123456789abcdef", 1)
		}), `piggy: annotation piggysec.com/piggy-uid does not match what Piggy set for container "app"`},
		{"copy with a hostPath launcher volume", copyOf("", func(p *corev1.Pod) {
			for i := range p.Spec.Volumes {
				if p.Spec.Volumes[i].Name == "piggy-env" {
					p.Spec.Volumes[i].VolumeSource = hostPath
				}
			}
		}), `piggy: volume "piggy-env" is reserved for Piggy; rename your volume`},
		{"copy with another install image", copyOf("", func(p *corev1.Pod) {
			p.Spec.InitContainers[0].Image = "registry.example/evil:1"
		}), `piggy: init container "install-piggy-env" is reserved for Piggy; rename your container`},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.pod.Name = fmt.Sprintf("reserved-%d", i)
			p, err := s.cs.CoreV1().Pods(ns).Create(t.Context(), tt.pod, metav1.CreateOptions{})
			if err == nil {
				var images []string
				for _, c := range p.Spec.InitContainers {
					images = append(images, c.Name+"="+c.Image)
				}
				t.Fatalf("admitted with init containers %v and piggy-uid %s", images, p.Annotations["piggysec.com/piggy-uid"])
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("create error = %v, want %q", err, tt.want)
			}
		})
	}

	t.Run("persisted pod created again is admitted unchanged", func(t *testing.T) {
		p, err := s.cs.CoreV1().Pods(ns).Create(t.Context(), copyOf("copy", nil), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Annotations["piggysec.com/piggy-uid"] != original.Annotations["piggysec.com/piggy-uid"] {
			t.Errorf("identities changed: %s, was %s", p.Annotations["piggysec.com/piggy-uid"], original.Annotations["piggysec.com/piggy-uid"])
		}
		if len(p.Spec.InitContainers) != 1 || len(p.Spec.Volumes) != len(original.Spec.Volumes) || !slices.Equal(p.Spec.Containers[0].Args, original.Spec.Containers[0].Args) {
			t.Errorf("pod was mutated again: init containers %v, volumes %v", p.Spec.InitContainers, p.Spec.Volumes)
		}
		checkLaunched(t, p, "app", []string{"/app"})
	})
}
