package deploytest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"github.com/piggysec/piggy/libs/kubetest"
)

// kube is the package's shared cluster for tests that leave no state behind
// that could disturb others (server-side dry-run); tests that install
// cluster-scoped objects (webhooks, policies) start their own.
var kube = kubetest.NewShared(kubetest.DefaultOptions(os.Getenv))

// crdSources are the real CRDs of the chart's CRD-backed kinds, read from
// the projects' Go modules (served by the module proxy) at pinned versions.
var crdSources = []struct {
	module, version string
	files           []string
}{
	{"github.com/cert-manager/cert-manager", "v1.21.2", []string{
		"deploy/crds/cert-manager.io_certificates.yaml",
		"deploy/crds/cert-manager.io_issuers.yaml",
	}},
	{"github.com/prometheus-operator/prometheus-operator", "v0.85.0", []string{
		"example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
	}},
}

// moduleDir downloads module@version through the Go module proxy (or finds
// it in the module cache) and returns its directory.
func moduleDir(t testing.TB, module, version string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module deploytest.invalid/crds\n\ngo 1.26\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "mod", "download", "-json", module+"@"+version)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go mod download %s@%s: %v\n%s", module, version, err, out)
	}
	var info struct{ Dir, Error string }
	if err := json.Unmarshal(out, &info); err != nil || info.Dir == "" {
		t.Fatalf("go mod download %s@%s: %s %v", module, version, info.Error, err)
	}
	return info.Dir
}

// client bundles what the cluster tests use.
type client struct {
	cs     kubernetes.Interface
	dyn    dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
}

func newClient(t testing.TB, cfg *rest.Config) *client {
	t.Helper()
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &client{cs: cs, dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(cs.Discovery()))}
}

// resource finds the REST resource of an object.
func (c *client) resource(t testing.TB, u *unstructured.Unstructured) dynamic.ResourceInterface {
	t.Helper()
	gvk := u.GroupVersionKind()
	m, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		t.Fatalf("%s %s: no REST mapping: %v", gvk, u.GetName(), err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return c.dyn.Resource(m.Resource).Namespace(u.GetNamespace())
	}
	return c.dyn.Resource(m.Resource)
}

// installCRDs creates the pinned CRDs (once per cluster) and waits until
// they are served.
func installCRDs(t testing.TB, c *client) {
	t.Helper()
	ctx := t.Context()
	crdRes := c.dyn.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	var names []string
	for _, src := range crdSources {
		dir := moduleDir(t, src.module, src.version)
		for _, f := range src.files {
			raw, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				t.Fatal(err)
			}
			for _, u := range decodeObjects(t, string(raw)) {
				if _, err := crdRes.Create(ctx, u, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
					t.Fatalf("create CRD %s from %s@%s: %v", u.GetName(), src.module, src.version, err)
				}
				names = append(names, u.GetName())
			}
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, n := range names {
		for {
			u, err := crdRes.Get(ctx, n, metav1.GetOptions{})
			if err == nil && established(u) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("CRD %s not established: %v", n, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	c.mapper.Reset()
}

func established(u *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}

var sharedCRDs sync.Once

// TestServerSideDryRun sends every object of every variant to a real
// kube-apiserver with dryRun=All: schemas, defaulting, CEL (webhook match
// conditions, the admission policy) and admission all run; nothing is stored.
func TestServerSideDryRun(t *testing.T) {
	cl := kube.Cluster(t)
	c := newClient(t, cl.RESTConfig())
	sharedCRDs.Do(func() { installCRDs(t, c) })
	if _, err := kubetest.CreateNamespace(t.Context(), c.cs, releaseNamespace); err != nil && !apierrors.IsAlreadyExists(errors.Unwrap(err)) {
		t.Fatal(err)
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			objs := helmTemplate(t, v.args...)
			kinds := map[string]int{}
			for _, u := range objs {
				if _, err := c.resource(t, u).Create(t.Context(), u, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict"}); err != nil {
					t.Errorf("dry-run create %s %s: %v", u.GetKind(), u.GetName(), err)
				}
				kinds[u.GetKind()]++
			}
			t.Logf("%d objects accepted: %v", len(objs), kinds)
		})
	}
}

// helmCmd runs helm against a cluster.
func helmCmd(t *testing.T, kubeconfig string, args ...string) string {
	t.Helper()
	out, err := run(t, repoRoot(), []string{"HELM_CACHE_HOME=" + t.TempDir(), "HELM_CONFIG_HOME=" + t.TempDir(), "HELM_DATA_HOME=" + t.TempDir()},
		helmBin(t), append(args, "--kubeconfig", kubeconfig)...)
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// tlsState is what an upgrade must keep (or change) of the generated TLS.
type tlsState struct {
	data      map[string]map[string][]byte // Secret name → data
	checksums map[string]string            // Deployment name → checksum/tls
	caBundle  []byte
}

func readTLSState(t *testing.T, cs kubernetes.Interface, ns, release string) tlsState {
	t.Helper()
	s := tlsState{data: map[string]map[string][]byte{}, checksums: map[string]string{}}
	for _, n := range []string{release + "-ca", release + "-admission-gateway-tls", release + "-image-resolver-tls", release + "-secret-broker-tls"} {
		sec, err := cs.CoreV1().Secrets(ns).Get(t.Context(), n, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s.data[n] = sec.Data
	}
	for _, c := range components {
		d, err := cs.AppsV1().Deployments(ns).Get(t.Context(), release+"-"+c, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s.checksums[c] = d.Spec.Template.Annotations["checksum/tls"]
	}
	m, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(t.Context(), release+"-admission-gateway", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.caBundle = m.Webhooks[0].ClientConfig.CABundle
	return s
}

// TestHelmInstallAndUpgrade installs the chart on a real API server, then
// upgrades it: the generated CA and certificates are reused (and the pods'
// checksum annotations stay put), a certificate near expiry is reissued
// (only its pods roll), the services' RBAC is exactly what they need, and
// the cert-manager mode installs its Issuers and Certificates.
func TestHelmInstallAndUpgrade(t *testing.T) {
	cl := kubetest.ForTest(t)
	c := newClient(t, cl.RESTConfig())
	ctx := t.Context()
	kc := cl.KubeconfigPath()

	if _, err := kubetest.CreateNamespace(ctx, c.cs, "team-a"); err != nil {
		t.Fatal(err)
	}
	// The gateway may read Secrets in team-a; every upgrade keeps it.
	readSecrets := []string{"--set-json", `admission-gateway.secretReadNamespaces=["team-a"]`}
	helmCmd(t, kc, append([]string{"install", releaseName, chartDir(), "--namespace", releaseNamespace, "--create-namespace"}, readSecrets...)...)
	first := readTLSState(t, c.cs, releaseNamespace, releaseName)
	if !bytes.Equal(first.caBundle, first.data[releaseName+"-ca"]["tls.crt"]) {
		t.Fatal("the installed webhook's caBundle is not the installed CA")
	}
	for _, c := range components {
		if first.checksums[c] == "" {
			t.Errorf("%s has no checksum/tls annotation", c)
		}
	}

	t.Run("upgrade reuses certificates", func(t *testing.T) {
		helmCmd(t, kc, append([]string{"upgrade", releaseName, chartDir(), "--namespace", releaseNamespace, "--set", "global.logLevel=warn"}, readSecrets...)...)
		second := readTLSState(t, c.cs, releaseNamespace, releaseName)
		for n, d := range first.data {
			for k, v := range d {
				if !bytes.Equal(v, second.data[n][k]) {
					t.Errorf("upgrade changed %s %s", n, k)
				}
			}
		}
		for comp, sum := range first.checksums {
			if second.checksums[comp] != sum {
				t.Errorf("upgrade changed the checksum of %s: pods would restart for nothing", comp)
			}
		}
		if !bytes.Equal(first.caBundle, second.caBundle) {
			t.Error("upgrade changed the webhook caBundle")
		}
	})

	t.Run("upgrade renews a certificate near expiry", func(t *testing.T) {
		secret := releaseName + "-image-resolver-tls"
		soon := fmt.Sprint(time.Now().Add(24 * time.Hour).Unix())
		patch := fmt.Sprintf(`{"metadata":{"annotations":{"piggysec.com/not-after":%q}}}`, soon)
		if _, err := c.cs.CoreV1().Secrets(releaseNamespace).Patch(ctx, secret, "application/merge-patch+json", []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		helmCmd(t, kc, append([]string{"upgrade", releaseName, chartDir(), "--namespace", releaseNamespace, "--set", "global.logLevel=warn"}, readSecrets...)...)
		third := readTLSState(t, c.cs, releaseNamespace, releaseName)
		if bytes.Equal(first.data[secret]["tls.crt"], third.data[secret]["tls.crt"]) {
			t.Error("the certificate near expiry was not reissued")
		}
		if !bytes.Equal(first.data[releaseName+"-ca"]["tls.crt"], third.data[releaseName+"-ca"]["tls.crt"]) ||
			!bytes.Equal(third.data[secret]["ca.crt"], first.data[releaseName+"-ca"]["tls.crt"]) {
			t.Error("renewing one certificate changed the CA")
		}
		if third.checksums["image-resolver"] == first.checksums["image-resolver"] {
			t.Error("the image-resolver's pods would not restart onto the new certificate")
		}
		for _, comp := range []string{"admission-gateway", "secret-broker"} {
			if third.checksums[comp] != first.checksums[comp] {
				t.Errorf("%s's checksum changed although its certificate did not", comp)
			}
		}
	})

	t.Run("RBAC is least privilege", func(t *testing.T) {
		type check struct {
			verb, group, resource, namespace string
			allowed                          bool
		}
		cases := map[string][]check{
			"admission-gateway": {
				{"get", "", "configmaps", "team-a", true}, {"get", "", "secrets", "team-a", true},
				{"get", "", "secrets", "team-b", false}, {"get", "", "secrets", releaseNamespace, false},
				{"list", "", "secrets", "team-a", false}, {"watch", "", "configmaps", "", false},
				{"create", "", "pods", "team-a", false}, {"get", "", "pods", "team-a", false},
				{"create", "authentication.k8s.io", "tokenreviews", "", false},
			},
			"image-resolver": {
				{"get", "", "secrets", "team-a", true}, {"get", "", "serviceaccounts", "team-a", true},
				{"list", "", "secrets", "", false}, {"get", "", "configmaps", "team-a", false}, {"update", "", "secrets", "team-a", false},
			},
			"secret-broker": {
				{"create", "authentication.k8s.io", "tokenreviews", "", true},
				{"get", "", "pods", "team-a", true}, {"list", "", "pods", "", true}, {"watch", "", "pods", "", true},
				{"get", "", "secrets", "team-a", false}, {"get", "", "configmaps", "team-a", false},
				{"delete", "", "pods", "team-a", false}, {"create", "", "serviceaccounts/token", "team-a", false},
			},
		}
		for comp, checks := range cases {
			user := "system:serviceaccount:" + releaseNamespace + ":" + releaseName + "-" + comp
			for _, ch := range checks {
				allowed := subjectAllowed(t, c.cs, user, ch.verb, ch.group, ch.resource, ch.namespace)
				if allowed != ch.allowed {
					t.Errorf("%s may %s %s/%s in %q: %t, want %t", comp, ch.verb, ch.group, ch.resource, ch.namespace, allowed, ch.allowed)
				}
			}
		}
	})

	t.Run("cert-manager mode installs its issuers and certificates", func(t *testing.T) {
		installCRDs(t, c)
		const release, ns = "piggy-cm", "piggy-cm"
		helmCmd(t, kc, "install", release, chartDir(), "--namespace", ns, "--create-namespace", "--set", "global.tls.mode=cert-manager")
		for _, kind := range []struct{ resource, name string }{
			{"issuers", release + "-selfsigned"}, {"issuers", release + "-ca"}, {"certificates", release + "-ca"},
			{"certificates", release + "-admission-gateway"}, {"certificates", release + "-image-resolver"}, {"certificates", release + "-secret-broker"},
		} {
			gvr := schema.GroupVersionResource{Group: "cert-manager.io", Version: "v1", Resource: kind.resource}
			if _, err := c.dyn.Resource(gvr).Namespace(ns).Get(ctx, kind.name, metav1.GetOptions{}); err != nil {
				t.Errorf("%s %s: %v", kind.resource, kind.name, err)
			}
		}
		m, err := c.cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, release+"-admission-gateway", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if m.Annotations["cert-manager.io/inject-ca-from"] != ns+"/"+release+"-admission-gateway" {
			t.Errorf("inject-ca-from = %q", m.Annotations["cert-manager.io/inject-ca-from"])
		}
		if list, _ := c.cs.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{}); len(list.Items) != 1 { // the helm release record only
			t.Errorf("cert-manager mode created %d Secrets; cert-manager owns the TLS Secrets", len(list.Items)-1)
		}
	})
}

// subjectAllowed asks the API server's authorizer (RBAC) through a
// SubjectAccessReview.
func subjectAllowed(t *testing.T, cs kubernetes.Interface, user, verb, group, resource, namespace string) bool {
	t.Helper()
	res, sub, _ := strings.Cut(resource, "/")
	groups := []string{"system:serviceaccounts", "system:serviceaccounts:" + releaseNamespace, "system:authenticated"}
	review, err := cs.AuthorizationV1().SubjectAccessReviews().Create(t.Context(), &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{
			User:   user,
			Groups: groups,
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: verb, Group: group, Resource: res, Subresource: sub, Namespace: namespace,
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return review.Status.Allowed
}
