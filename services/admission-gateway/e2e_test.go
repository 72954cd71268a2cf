package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"

	"github.com/piggysec/piggy/libs/kubetest"
	"github.com/piggysec/piggy/libs/podidentity"
	"github.com/piggysec/piggy/libs/proctest"
	"github.com/piggysec/piggy/libs/registrytest"
	"github.com/piggysec/piggy/libs/testca"
	"github.com/piggysec/piggy/libs/tlsreload"
)

// These tests run the real admission-gateway and image-resolver binaries
// behind a real kube-apiserver: Pods are created through the API and the
// persisted objects are checked.

var kube = kubetest.NewShared(kubetest.DefaultOptions(os.Getenv))

func TestMain(m *testing.M) { os.Exit(kube.Run(m)) }

const brokerURL = "https://piggy-secret-broker.piggy.svc:8443"

// stack is a running gateway (and resolver) registered with the cluster
// for namespaces labelled piggy-e2e=<label>.
type stack struct {
	cs      kubernetes.Interface
	pki     *proctest.PKI
	gateway *proctest.Process
	webhook string // host:port of the gateway's HTTPS port
	public  *registrytest.Registry
	private *registrytest.Registry
	label   string
}

const privateUser, privatePassword = "puller", "s3cret-pull"

func startStack(t *testing.T, label string, resolverAddr string, gatewayArgs ...string) *stack {
	t.Helper()
	return startStackOn(t, kube.Cluster(t), label, resolverAddr, gatewayArgs...)
}

// startStackOn is startStack on cluster c (one started with flags of its own).
func startStackOn(t *testing.T, c *kubetest.Cluster, label string, resolverAddr string, gatewayArgs ...string) *stack {
	t.Helper()
	s := &stack{cs: c.Clientset(), pki: proctest.NewPKI(t), label: label}
	s.public = registrytest.New(t, registrytest.Options{})
	s.private = registrytest.New(t, registrytest.Options{Username: privateUser, Password: privatePassword})

	caFile := t.TempDir() + "/registries.pem"
	var pem []byte
	for _, r := range []*registrytest.Registry{s.public, s.private} {
		b, err := os.ReadFile(r.CAFile(t))
		if err != nil {
			t.Fatal(err)
		}
		pem = append(pem, b...)
	}
	if err := os.WriteFile(caFile, pem, 0o600); err != nil {
		t.Fatal(err)
	}

	if resolverAddr == "" {
		resolver := proctest.Start(t, proctest.Build(t, "../image-resolver"), append(s.pki.TLSArgs(),
			"--grpc-address=127.0.0.1:0", "--metrics-address=127.0.0.1:0",
			"--kubeconfig", c.KubeconfigPath(), "--registry-ca-file", caFile, "--allow-internal-networks=127.0.0.0/8"), nil)
		resolverAddr = resolver.Addresses(t, "grpc")["grpc"]
	}
	// gatewayArgs come last: they override the defaults here.
	s.gateway = proctest.Start(t, proctest.Build(t, "."), append(append(s.pki.TLSArgs(),
		"--listen-address=127.0.0.1:0", "--grpc-address=127.0.0.1:0", "--metrics-address=127.0.0.1:0",
		"--kubeconfig", c.KubeconfigPath(), "--image-resolver-address", resolverAddr,
		"--image-resolver-timeout=2s", "--broker-ca-file", s.pki.Service.CAFile), gatewayArgs...),
		[]string{"PIGGY_ADDRESS=" + brokerURL})
	s.webhook = s.gateway.Addresses(t, "webhook")["webhook"]
	s.register(t, "piggy-"+label, "https://"+s.webhook+"/mutate", s.pki.CA.CertPEM, admissionregistrationv1.IfNeededReinvocationPolicy)
	return s
}

// register creates a MutatingWebhookConfiguration for pods in namespaces
// labelled piggy-e2e=<s.label>, like the chart's.
func (s *stack) register(t *testing.T, name, url string, caPEM []byte, reinvoke admissionregistrationv1.ReinvocationPolicyType) {
	t.Helper()
	fail := admissionregistrationv1.Fail
	none := admissionregistrationv1.SideEffectClassNone
	timeout := int32(5)
	cfg := &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:                    name + ".piggysec.com",
			ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: caPEM},
			Rules:                   []admissionregistrationv1.RuleWithOperations{{Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create}, Rule: admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}}}},
			FailurePolicy:           &fail,
			SideEffects:             &none,
			TimeoutSeconds:          &timeout,
			AdmissionReviewVersions: []string{"v1"},
			ReinvocationPolicy:      &reinvoke,
			NamespaceSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"piggy-e2e": s.label}},
		}},
	}
	ctx := t.Context()
	if _, err := s.cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, cfg, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = s.cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
}

// namespace creates a labelled namespace whose pods go to the stack.
func (s *stack) namespace(t *testing.T, extraLabels map[string]string) string {
	t.Helper()
	labels := map[string]string{"piggy-e2e": s.label}
	for k, v := range extraLabels {
		labels[k] = v
	}
	ns, err := s.cs.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "e2e-", Labels: labels}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kubetest.CreateServiceAccount(t.Context(), s.cs, ns.Name, "default"); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

func (s *stack) create(t *testing.T, pod *corev1.Pod) (*corev1.Pod, error) {
	t.Helper()
	var (
		got *corev1.Pod
		err error
	)
	// A new webhook configuration becomes active within a second or so.
	deadline := time.Now().Add(15 * time.Second)
	for {
		got, err = s.cs.CoreV1().Pods(pod.Namespace).Create(t.Context(), pod.DeepCopy(), metav1.CreateOptions{})
		if err != nil || time.Now().After(deadline) || mutated(got) || !wantsMutation(pod) {
			return got, err
		}
		_ = s.cs.CoreV1().Pods(pod.Namespace).Delete(t.Context(), got.Name, metav1.DeleteOptions{})
		time.Sleep(200 * time.Millisecond)
	}
}

func wantsMutation(p *corev1.Pod) bool {
	for _, c := range append(slices.Clone(p.Spec.InitContainers), p.Spec.Containers...) {
		for _, e := range c.Env {
			if strings.HasPrefix(e.Value, "piggy:") {
				return true
			}
		}
	}
	return false
}

func mutated(p *corev1.Pod) bool {
	return len(p.Spec.InitContainers) > 0 && p.Spec.InitContainers[0].Name == "install-piggy-env"
}

func appPod(ns, name string, annotations map[string]string, c corev1.Container) *corev1.Pod {
	if c.Name == "" {
		c.Name = "app"
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: annotations},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{c}},
	}
}

func env(pairs ...string) []corev1.EnvVar {
	var out []corev1.EnvVar
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, corev1.EnvVar{Name: pairs[i], Value: pairs[i+1]})
	}
	return out
}

func envOf(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// checkLaunched asserts everything Piggy adds around a launched container.
func checkLaunched(t *testing.T, p *corev1.Pod, container string, wantCommandLine []string) {
	t.Helper()
	if !mutated(p) {
		t.Fatalf("pod %s was not mutated: init containers %v", p.Name, p.Spec.InitContainers)
	}
	install := p.Spec.InitContainers[0]
	sc := install.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
		sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("install container security context = %+v", sc)
	}
	if !slices.Equal(install.Args, []string{"install", "/piggy"}) || envOf(install, "PIGGY_CA_BUNDLE") == "" {
		t.Errorf("install container = %+v", install)
	}
	var launcher, token *corev1.Volume
	for i := range p.Spec.Volumes {
		switch v := &p.Spec.Volumes[i]; v.Name {
		case "piggy-env":
			launcher = v
		case "piggy-token":
			token = v
		}
	}
	if launcher == nil || launcher.EmptyDir == nil || launcher.EmptyDir.Medium != corev1.StorageMediumMemory {
		t.Errorf("launcher volume = %+v", launcher)
	}
	if token == nil || token.Projected == nil || len(token.Projected.Sources) != 1 || token.Projected.Sources[0].ServiceAccountToken == nil ||
		token.Projected.Sources[0].ServiceAccountToken.Audience != "piggy" || *token.Projected.Sources[0].ServiceAccountToken.ExpirationSeconds != 600 {
		t.Errorf("token volume = %+v", token)
	}
	var c *corev1.Container
	for i := range p.Spec.Containers {
		if p.Spec.Containers[i].Name == container {
			c = &p.Spec.Containers[i]
		}
	}
	for i := range p.Spec.InitContainers {
		if p.Spec.InitContainers[i].Name == container {
			c = &p.Spec.InitContainers[i]
		}
	}
	if c == nil {
		t.Fatalf("no container %q", container)
	}
	if !slices.Equal(c.Command, []string{"/piggy/piggy-env"}) || !slices.Equal(c.Args, append([]string{"--"}, wantCommandLine...)) {
		t.Errorf("container %s command/args = %q %q, want piggy-env -- %q", c.Name, c.Command, c.Args, wantCommandLine)
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m
	}
	if m := mounts["piggy-env"]; m.MountPath != "/piggy" || !m.ReadOnly {
		t.Errorf("launcher mount = %+v, want /piggy read-only", m)
	}
	if m := mounts["piggy-token"]; m.MountPath != "/var/run/secrets/piggysec.com/serviceaccount" || !m.ReadOnly {
		t.Errorf("token mount = %+v", m)
	}
	if envOf(*c, "PIGGY_ADDRESS") != brokerURL || envOf(*c, "PIGGY_CA_FILE") != "/piggy/ca.crt" || envOf(*c, "PIGGY_SKIP_VERIFY_TLS") != "false" {
		t.Errorf("container env = %+v", c.Env)
	}
	ids, err := podidentity.Parse(p.Annotations[podidentity.AnnotationKey])
	if err != nil {
		t.Fatal(err)
	}
	entry := ids[container]
	if entry.UID == "" || entry.UID != envOf(*c, "PIGGY_UID") || entry.Signature != podidentity.Signature(wantCommandLine) {
		t.Errorf("identity %+v does not match PIGGY_UID %q and the command line", entry, envOf(*c, "PIGGY_UID"))
	}
}

func TestAdmission(t *testing.T) {
	s := startStack(t, "main", "")
	ctx := t.Context()
	annotations := map[string]string{"piggysec.com/aws-secret-name": "team/app"}

	appImage := s.public.Ref("app:1")
	s.public.Push(t, "app:1", registrytest.Image(t, "linux/amd64", []string{"/app"}, []string{"serve", "--port=80"}))
	privImage := s.private.Ref("secret-app:2")
	s.private.Push(t, "secret-app:2", registrytest.Image(t, "linux/amd64", []string{"/private-entry"}, []string{"run"}))

	t.Run("explicit command", func(t *testing.T) {
		ns := s.namespace(t, nil)
		p, err := s.create(t, appPod(ns, "web", annotations, corev1.Container{Image: appImage, Command: []string{"/bin/app"}, Args: []string{"--port", "80"}, Env: env("DB_PASSWORD", "piggy:DB_PASSWORD")}))
		if err != nil {
			t.Fatal(err)
		}
		checkLaunched(t, p, "app", []string{"/bin/app", "--port", "80"})
	})

	t.Run("no command, image behind a pull secret", func(t *testing.T) {
		ns := s.namespace(t, nil)
		if _, err := s.cs.CoreV1().Secrets(ns).Create(ctx, registrytest.DockerConfigJSONSecret(ns, "regcred", s.private.Host, privateUser, privatePassword), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		pod := appPod(ns, "private", annotations, corev1.Container{Image: privImage, Env: env("TOKEN", "piggy:TOKEN")})
		pod.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "regcred"}}
		p, err := s.create(t, pod)
		if err != nil {
			t.Fatal(err)
		}
		checkLaunched(t, p, "app", []string{"/private-entry", "run"})
	})

	t.Run("pod that needs nothing is unchanged", func(t *testing.T) {
		ns := s.namespace(t, nil)
		pod := appPod(ns, "plain", annotations, corev1.Container{Image: appImage, Env: env("A", "plain")})
		p, err := s.create(t, pod)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Spec.InitContainers) != 0 || p.Spec.Containers[0].Command != nil || p.Annotations[podidentity.AnnotationKey] != "" {
			t.Errorf("pod was changed: %+v", p.Spec)
		}
	})

	t.Run("no annotations, cluster-wide default address", func(t *testing.T) {
		ns := s.namespace(t, nil)
		p, err := s.create(t, appPod(ns, "defaults", nil, corev1.Container{Image: appImage, Command: []string{"/a"}, Env: env("A", "piggy:A")}))
		if err != nil {
			t.Fatal(err)
		}
		checkLaunched(t, p, "app", []string{"/a"})
	})

	t.Run("address outside the allowlist is denied", func(t *testing.T) {
		ns := s.namespace(t, nil)
		_, err := s.create(t, appPod(ns, "evil", map[string]string{"piggysec.com/piggy-address": "https://attacker.example"}, corev1.Container{Image: appImage, Command: []string{"/a"}, Env: env("A", "piggy:A")}))
		if err == nil || !strings.Contains(err.Error(), `"https://attacker.example" is not an allowed broker address`) {
			t.Errorf("create error = %v, want the allowlist denial", err)
		}
	})

	t.Run("restricted Pod Security Standard still holds", func(t *testing.T) {
		ns := s.namespace(t, map[string]string{"pod-security.kubernetes.io/enforce": "restricted"})
		pod := appPod(ns, "restricted", annotations, corev1.Container{Image: appImage, Command: []string{"/a"}, Env: env("A", "piggy:A"),
			SecurityContext: &corev1.SecurityContext{
				AllowPrivilegeEscalation: ptr(false), RunAsNonRoot: ptr(true),
				Capabilities:   &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			}})
		p, err := s.create(t, pod)
		if err != nil {
			t.Fatalf("restricted pod refused after mutation: %v", err)
		}
		checkLaunched(t, p, "app", []string{"/a"})
	})

	t.Run("re-invocation after another webhook changes the pod", func(t *testing.T) {
		ns := s.namespace(t, nil)
		s.registerAnnotator(t)
		p, err := s.create(t, appPod(ns, "reinvoked", annotations, corev1.Container{Image: appImage, Command: []string{"/a"}, Env: env("A", "piggy:A")}))
		if err != nil {
			t.Fatal(err)
		}
		if p.Annotations["e2e.piggysec.com/touched"] != "true" {
			t.Fatalf("second webhook did not run: %v", p.Annotations)
		}
		checkLaunched(t, p, "app", []string{"/a"})
		if n := len(p.Spec.InitContainers); n != 1 {
			t.Errorf("%d init containers after re-invocation, want 1", n)
		}
		// The persisted pod sent again yields an allowed review without a patch.
		resp := s.review(t, p)
		if !resp.Allowed || len(resp.Patch) != 0 {
			t.Errorf("review of the persisted pod = allowed %v, patch %s; want no patch", resp.Allowed, resp.Patch)
		}
	})

	t.Run("fields unknown to the compiled API survive the patch", func(t *testing.T) {
		raw := []byte(`{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "future", "namespace": "x", "futureMeta": 1},
			"spec": {"futureSpec": {"a": [1]}, "containers": [{"name": "app", "image": "i", "command": ["/a"], "futureContainer": "keep",
				"env": [{"name": "A", "value": "piggy:A"}]}]}}`)
		resp := s.reviewRaw(t, raw)
		patch, err := jsonpatch.DecodePatch(resp.Patch)
		if err != nil {
			t.Fatal(err)
		}
		out, err := patch.Apply(raw)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{`"futureMeta":1`, `"futureSpec":{"a":[1]}`, `"futureContainer":"keep"`} {
			if !bytes.Contains(out, []byte(want)) {
				t.Errorf("patched pod lost %s: %s", want, out)
			}
		}
	})

	t.Run("many admissions in parallel", func(t *testing.T) {
		ns := s.namespace(t, nil)
		var wg sync.WaitGroup
		errs := make(chan error, 20)
		for i := range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := corev1.Container{Image: appImage, Env: env("A", "piggy:A")}
				if i%2 == 0 {
					c.Command = []string{"/a"}
				}
				p, err := s.cs.CoreV1().Pods(ns).Create(ctx, appPod(ns, fmt.Sprintf("p-%d", i), annotations, c), metav1.CreateOptions{})
				if err == nil && !mutated(p) {
					err = fmt.Errorf("pod %s not mutated", p.Name)
				}
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
	})
}

func TestResolverUnavailableDenies(t *testing.T) {
	dead := registrytest.ClosedPort(t)
	s := startStack(t, "deadresolver", dead)
	ns := s.namespace(t, nil)
	_, err := s.create(t, appPod(ns, "web", map[string]string{"piggysec.com/aws-secret-name": "x"},
		corev1.Container{Name: "api", Image: "registry.example/team/api:1", Env: env("A", "piggy:A")}))
	for _, want := range []string{`container "api"`, `image "registry.example/team/api:1"`, "image-resolver unavailable", "set the container's command explicitly"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("create error = %v, want it to contain %q", err, want)
		}
	}
	// The denial says what failed without the resolver's address.
	if err != nil && strings.Contains(err.Error(), dead) {
		t.Errorf("create error names the resolver's address: %v", err)
	}
	// A pod that sets its command needs no resolver and is admitted.
	p, err := s.create(t, appPod(ns, "ok", map[string]string{"piggysec.com/aws-secret-name": "x"},
		corev1.Container{Name: "api", Image: "registry.example/team/api:1", Command: []string{"/api"}, Env: env("A", "piggy:A")}))
	if err != nil {
		t.Fatal(err)
	}
	checkLaunched(t, p, "api", []string{"/api"})
}

// registerAnnotator runs a second webhook (ordered after Piggy's by name)
// that adds an annotation, which makes the apiserver re-invoke Piggy's.
func (s *stack) registerAnnotator(t *testing.T) {
	t.Helper()
	ca, err := testca.New("annotator")
	if err != nil {
		t.Fatal(err)
	}
	files, err := ca.WriteFiles(t.TempDir(), "annotator", testca.Request{CommonName: "annotator", Hosts: testca.LoopbackHosts, Usage: testca.Server})
	if err != nil {
		t.Fatal(err)
	}
	src, err := tlsreload.Load(files)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		var in admissionv1.AdmissionReview
		_ = json.NewDecoder(r.Body).Decode(&in)
		var pod corev1.Pod
		_ = json.Unmarshal(in.Request.Object.Raw, &pod)
		resp := &admissionv1.AdmissionResponse{UID: in.Request.UID, Allowed: true}
		if pod.Annotations["e2e.piggysec.com/touched"] == "" {
			pt := admissionv1.PatchTypeJSONPatch
			resp.PatchType = &pt
			resp.Patch = []byte(`[{"op":"add","path":"/metadata/annotations/e2e.piggysec.com~1touched","value":"true"}]`)
		}
		_ = json.NewEncoder(w).Encode(admissionv1.AdmissionReview{TypeMeta: in.TypeMeta, Response: resp})
	})
	srv := &http.Server{Handler: mux, TLSConfig: src.ServerConfig(false), ReadHeaderTimeout: 5 * time.Second}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })
	s.register(t, "zz-annotator-"+s.label, "https://"+ln.Addr().String()+"/", ca.CertPEM, admissionregistrationv1.NeverReinvocationPolicy)
}

// review posts pod to the gateway's /mutate over HTTPS as the apiserver would.
func (s *stack) review(t *testing.T, p *corev1.Pod) *admissionv1.AdmissionResponse {
	t.Helper()
	raw, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return s.reviewRaw(t, raw)
}

func (s *stack) reviewRaw(t *testing.T, raw []byte) *admissionv1.AdmissionResponse {
	t.Helper()
	body, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{UID: "e2e", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Operation: admissionv1.Create, Namespace: "x", Object: runtime.RawExtension{Raw: raw}},
	})
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: s.pki.Client.ClientConfig("127.0.0.1")}}
	resp, err := client.Post("https://"+s.webhook+"/mutate", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out admissionv1.AdmissionReview
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.Response == nil {
		t.Fatalf("review answer: %v (status %d)", err, resp.StatusCode)
	}
	return out.Response
}

func ptr[T any](v T) *T { return &v }
