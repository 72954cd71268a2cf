package deploytest

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/piggysec/piggy/libs/kubetest"
	"github.com/piggysec/piggy/libs/proctest"
)

// TestWebhookEndToEnd registers the chart's rendered admission objects on a
// real kube-apiserver, with the webhook's clientConfig pointed at an
// admission-gateway started locally from the chart's args and env and
// authenticated as the chart's ServiceAccount (with the chart's RBAC). Pods
// created through the API then show that the rules, the match condition, the
// namespace selector, the admission policy and the broker CA delivery work.
func TestWebhookEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a real kube-apiserver and the service binaries")
	}
	cl := kubetest.ForTest(t)
	c := newClient(t, cl.RESTConfig())
	ctx := t.Context()

	// The gateway certificate also names localhost: the apiserver calls
	// https://localhost:<port>/mutate.
	// The team namespace is one the gateway may read Secrets in.
	team, err := kubetest.CreateNamespace(ctx, c.cs, "team-a-")
	if err != nil {
		t.Fatal(err)
	}
	ns := team.Name
	objs := helmTemplate(t, "--set", "admission-gateway.tls.extraDnsNames={localhost}", "--set-json", `admission-gateway.secretReadNamespaces=["`+ns+`"]`)
	if _, err := kubetest.CreateNamespace(ctx, c.cs, releaseNamespace); err != nil {
		t.Fatal(err)
	}
	// The gateway's identity and RBAC, as rendered.
	for _, kind := range []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} {
		objName := name("admission-gateway")
		if kind == "Role" || kind == "RoleBinding" {
			objName += "-secrets"
		}
		for _, u := range find(objs, kind, objName) {
			if _, err := c.resource(t, u).Create(ctx, u, metav1.CreateOptions{}); err != nil {
				t.Fatalf("create %s: %v", kind, err)
			}
		}
	}
	token, err := kubetest.RequestToken(ctx, c.cs, releaseNamespace, name("admission-gateway"), kubetest.TokenOptions{Expiration: 2 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters: [{name: kubetest, cluster: {server: %q, certificate-authority-data: %s}}]
users: [{name: gateway, user: {token: %q}}]
contexts: [{name: kubetest, context: {cluster: kubetest, user: gateway}}]
current-context: kubetest
`, cl.Host(), base64.StdEncoding.EncodeToString(cl.CAPEM()), token.Token), 0o600); err != nil {
		t.Fatal(err)
	}

	tlsDir := writeRenderedTLS(t, objs, "admission-gateway")
	gateway := startRendered(t, objs, "admission-gateway", local{tlsDir: tlsDir, kubeconfig: kubeconfig})
	addrs := gateway.Addresses(t, "webhook", "metrics")
	waitReady(t, addrs["metrics"])
	reviews := func() float64 { return metricValue(t, addrs["metrics"], "piggy_admission_reviews_total") }

	// The rendered webhook, policy and binding; only the clientConfig
	// changes from the in-cluster Service to the local process.
	mwc := one[admissionregistrationv1.MutatingWebhookConfiguration](t, objs, "MutatingWebhookConfiguration", name("admission-gateway"))
	pointAtLocal(mwc, "https://localhost:"+port(addrs["webhook"])+"/mutate")
	if _, err := c.cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, mwc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} {
		u := find(objs, kind, "")[0]
		if _, err := c.resource(t, u).Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create %s: %v", kind, err)
		}
	}

	annotated := func(p *corev1.Pod) {
		p.Annotations = map[string]string{"piggysec.com/aws-secret-name": ns + "/app"}
		p.Spec.Containers[0].Command = []string{"/app", "serve"}
		p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "DB_PASSWORD", Value: "piggy:DB_PASSWORD"}}
	}

	// Webhooks and policies take effect shortly after creation: retry the
	// first mutation until it happens.
	var mutated *corev1.Pod
	eventually(t, 30*time.Second, "the webhook to mutate an annotated pod", func() error {
		p, err := kubetest.CreatePod(ctx, c.cs, ns, "annotated-", "", annotated)
		if err != nil {
			return err
		}
		if !isLaunched(p.Spec.Containers[0]) {
			_ = c.cs.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{})
			return fmt.Errorf("pod %s was created unmutated: %v", p.Name, p.Spec.Containers[0].Command)
		}
		mutated = p
		return nil
	})

	t.Run("annotated pod is mutated", func(t *testing.T) {
		p := mutated
		if got := p.Spec.Containers[0].Args; !slices.Equal(got, []string{"--", "/app", "serve"}) {
			t.Errorf("args %v", got)
		}
		if len(p.Spec.InitContainers) == 0 || p.Spec.InitContainers[0].Name != "install-piggy-env" ||
			!slices.Equal(p.Spec.InitContainers[0].Args, []string{"install", "/piggy"}) {
			t.Fatalf("install init container %+v", p.Spec.InitContainers)
		}
		if p.Annotations["piggysec.com/piggy-uid"] == "" {
			t.Error("no piggy-uid annotation")
		}
		if img := p.Spec.InitContainers[0].Image; img != env(gatewayContainer(t, objs), "PIGGY_ENV_IMAGE") {
			t.Errorf("install image %s is not the chart's piggy-env image", img)
		}
		if env(p.Spec.Containers[0], "PIGGY_ADDRESS") != "https://"+name("secret-broker")+"."+releaseNamespace+".svc" {
			t.Errorf("PIGGY_ADDRESS=%q", env(p.Spec.Containers[0], "PIGGY_ADDRESS"))
		}
	})

	t.Run("piggy-env image runs the install init container", func(t *testing.T) {
		// The kubelet would run the image's ENTRYPOINT with the init
		// container's args: run the same binary the Dockerfile copies to
		// the ENTRYPOINT path, with /piggy mapped to a directory.
		entry := dockerfileEntrypoint(t, "piggy-env")
		if len(entry) != 1 || entry[0] != "/usr/local/bin/piggy-env" {
			t.Fatalf("piggy-env ENTRYPOINT %v; the webhook only sets args, so it must be the binary alone", entry)
		}
		ic := mutated.Spec.InitContainers[0]
		dir := t.TempDir()
		args := slices.Clone(ic.Args)
		for i, a := range args {
			args[i] = strings.Replace(a, "/piggy", dir, 1)
		}
		var envs []string
		for _, e := range ic.Env {
			envs = append(envs, e.Name+"="+e.Value)
		}
		code, out := proctest.Run(t, serviceBinary(t, "piggy-env"), args, envs)
		if code != 0 {
			t.Fatalf("piggy-env %v exited %d: %s", args, code, out)
		}
		if _, err := os.Stat(filepath.Join(dir, "piggy-env")); err != nil {
			t.Error(err)
		}
		ca, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
		if err != nil {
			t.Fatalf("the broker CA did not reach the pod: %v", err)
		}
		want := one[corev1.Secret](t, objs, "Secret", name("secret-broker")+"-tls").Data["ca.crt"]
		if !bytes.Equal(bytes.TrimSpace(ca), bytes.TrimSpace(want)) {
			t.Error("the CA installed for piggy-env is not the CA of the broker's certificate")
		}
	})

	t.Run("valueFrom secret reference is seen with the chart's RBAC", func(t *testing.T) {
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "app-env", Namespace: ns}, StringData: map[string]string{"password": "piggy:DB_PASSWORD"}}
		if _, err := c.cs.CoreV1().Secrets(ns).Create(ctx, sec, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		p, err := kubetest.CreatePod(ctx, c.cs, ns, "valuefrom-", "", func(p *corev1.Pod) {
			p.Annotations = map[string]string{"piggysec.com/aws-secret-name": ns + "/app"}
			p.Spec.Containers[0].Command = []string{"/app"}
			p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "DB_PASSWORD", ValueFrom: &corev1.EnvVarSource{
				SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "app-env"}, Key: "password"}}}}
		})
		if err != nil {
			t.Fatal(err)
		}
		if !isLaunched(p.Spec.Containers[0]) {
			t.Errorf("pod referencing piggy: through a Secret was not mutated: %v", p.Spec.Containers[0].Command)
		}
	})

	t.Run("pod without piggy annotations is not sent", func(t *testing.T) {
		before := reviews()
		if _, err := kubetest.CreatePod(ctx, c.cs, ns, "plain-", ""); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
		if after := reviews(); after != before {
			t.Errorf("the gateway reviewed a pod without piggy annotations (%v → %v reviews)", before, after)
		}
	})

	t.Run("unmutated piggy reference is refused by the policy", func(t *testing.T) {
		before := reviews()
		// No annotation: the match condition keeps it from the gateway, so
		// it would start with the literal placeholder.
		var lastErr error
		eventually(t, 30*time.Second, "the admission policy to refuse the pod", func() error {
			p, err := kubetest.CreatePod(ctx, c.cs, ns, "literal-", "", func(p *corev1.Pod) {
				p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "TOKEN", Value: "piggy:TOKEN"}}
			})
			if err == nil {
				_ = c.cs.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{})
				return fmt.Errorf("pod %s with a literal piggy: value was admitted", p.Name)
			}
			lastErr = err
			return nil
		})
		if !strings.Contains(lastErr.Error(), "/piggy/piggy-env") || !strings.Contains(lastErr.Error(), "container(s) main") {
			t.Errorf("refused with an unexpected message (want the policy's, naming container main): %v", lastErr)
		}
		if after := reviews(); after != before {
			t.Errorf("the pod reached the gateway (%v → %v reviews)", before, after)
		}
	})

	t.Run("release namespace is not sent", func(t *testing.T) {
		before := reviews()
		p, err := kubetest.CreatePod(ctx, c.cs, releaseNamespace, "annotated-", "", annotated)
		if err != nil {
			t.Fatal(err)
		}
		if isLaunched(p.Spec.Containers[0]) || reviews() != before {
			t.Error("a pod in the release namespace was sent to the webhook")
		}
	})

	t.Run("annotatedPodsOnly=false sends every pod", func(t *testing.T) {
		open := helmTemplate(t, "--set", "admission-gateway.tls.extraDnsNames={localhost}", "--set", "webhook.annotatedPodsOnly=false")
		m := one[admissionregistrationv1.MutatingWebhookConfiguration](t, open, "MutatingWebhookConfiguration", name("admission-gateway"))
		if len(m.Webhooks[0].MatchConditions) != 0 {
			t.Fatal("the switch left the match condition in place")
		}
		current, err := c.cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, mwc.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		current.Webhooks[0].MatchConditions = nil
		if _, err := c.cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Update(ctx, current, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "a pod without annotations to reach the gateway", func() error {
			before := reviews()
			if _, err := kubetest.CreatePod(ctx, c.cs, ns, "plain-", ""); err != nil {
				return err
			}
			if reviews() == before {
				return fmt.Errorf("not reviewed")
			}
			return nil
		})
	})
}

// pointAtLocal replaces the webhook's Service reference by a URL.
func pointAtLocal(m *admissionregistrationv1.MutatingWebhookConfiguration, url string) {
	for i := range m.Webhooks {
		m.Webhooks[i].ClientConfig.Service = nil
		m.Webhooks[i].ClientConfig.URL = &url
	}
}

func isLaunched(c corev1.Container) bool {
	return len(c.Command) == 1 && c.Command[0] == "/piggy/piggy-env"
}

func gatewayContainer(t *testing.T, objs []*unstructured.Unstructured) corev1.Container {
	t.Helper()
	return one[appsv1.Deployment](t, objs, "Deployment", name("admission-gateway")).Spec.Template.Spec.Containers[0]
}

// eventually retries f until it returns nil or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(300 * time.Millisecond)
	}
}
