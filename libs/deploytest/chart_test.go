package deploytest

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/piggysec/piggy/libs/podsettings"
)

var components = []string{"admission-gateway", "image-resolver", "secret-broker"}

// variants are the configurations every structural check, the dry-run and
// the lint run over.
var variants = []struct {
	name string
	args []string
	// disabled components.
	disabled []string
}{
	{name: "defaults"},
	{name: "cert-manager", args: []string{"--set", "global.tls.mode=cert-manager"}},
	{name: "cert-manager-external-issuer", args: []string{"--set", "global.tls.mode=cert-manager",
		"--set", "global.tls.certManager.issuerRef.name=corp-ca", "--set", "global.tls.certManager.issuerRef.kind=ClusterIssuer",
		"--set", "global.tls.certManager.issuerRef.group=cert-manager.io"}},
	{name: "generated", args: []string{"--set", "global.tls.mode=generated"}},
	{name: "hpa", args: []string{"--set", "admission-gateway.autoscaling.enabled=true",
		"--set", "image-resolver.autoscaling.enabled=true", "--set", "secret-broker.autoscaling.enabled=true"}},
	{name: "no-image-resolver", args: []string{"--set", "image-resolver.enabled=false",
		"--set", "admission-gateway.imageResolverAddress=resolver.example.net:9443"}, disabled: []string{"image-resolver"}},
	{name: "no-secret-broker", args: []string{"--set", "secret-broker.enabled=false",
		"--set", "global.podDefaults.piggy-address=https://broker.example.net"}, disabled: []string{"secret-broker"}},
	{name: "no-admission-gateway", args: []string{"--set", "admission-gateway.enabled=false"}, disabled: []string{"admission-gateway"}},
	{name: "observability", args: []string{"--set", "dashboards.enabled=true", "--set", "global.serviceMonitor.enabled=true",
		"--set", "global.otlp.endpoint=http://otel-collector.observability:4318", "--set", "global.debug=true",
		"--set-json", `global.networkPolicy.adminFrom=[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"ops"}}}]`}},
	{name: "open-webhook", args: []string{"--set", "webhook.annotatedPodsOnly=false", "--set", "webhook.failurePolicy=Ignore",
		"--set-json", `webhook.objectSelector={"matchExpressions":[{"key":"piggysec.com/skip","operator":"DoesNotExist"}]}`,
		"--set-json", `webhook.excludeNamespaces=["monitoring"]`}},
}

func TestHelmLint(t *testing.T) {
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			args := append([]string{"lint", chartDir(), "--strict", "--namespace", releaseNamespace, "--kube-version", "1.37.2"}, v.args...)
			if out, err := run(t, repoRoot(), nil, helmBin(t), args...); err != nil {
				t.Fatalf("helm lint: %v\n%s", err, out)
			}
		})
	}
}

// TestRenderVariants checks what every variant must get right.
func TestRenderVariants(t *testing.T) {
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			objs := helmTemplate(t, v.args...)
			for _, c := range components {
				enabled := !slices.Contains(v.disabled, c)
				if got := len(find(objs, "Deployment", name(c))); (got == 1) != enabled {
					t.Errorf("%s: %d Deployments, enabled=%t", c, got, enabled)
				}
				if enabled {
					checkDeployment(t, objs, c, v.name == "hpa")
				}
			}
			gwEnabled := !slices.Contains(v.disabled, "admission-gateway")
			if got := len(find(objs, "MutatingWebhookConfiguration", "")); (got == 1) != gwEnabled {
				t.Errorf("%d MutatingWebhookConfigurations with the gateway enabled=%t", got, gwEnabled)
			}
			if got := len(find(objs, "ValidatingAdmissionPolicy", "")); (got == 1) != gwEnabled {
				t.Errorf("%d ValidatingAdmissionPolicies with the gateway enabled=%t", got, gwEnabled)
			}
			if gwEnabled {
				checkWebhook(t, objs, v.name)
			}
			checkTLS(t, objs, v.name, v.disabled)
			checkNetworkPolicies(t, objs, v.disabled)
			for _, o := range objs {
				if ns := o.GetNamespace(); ns != "" && ns != releaseNamespace {
					t.Errorf("%s/%s in namespace %q, want the release namespace", o.GetKind(), o.GetName(), ns)
				}
			}
		})
	}
}

// checkDeployment: replicas, PDB, probes, secure defaults, TLS mount.
func checkDeployment(t *testing.T, objs []*unstructured.Unstructured, c string, hpa bool) {
	t.Helper()
	d := one[appsv1.Deployment](t, objs, "Deployment", name(c))
	if hpa {
		if d.Spec.Replicas != nil {
			t.Errorf("%s: replicas set with an HPA", c)
		}
		h := one[autoscalingv2.HorizontalPodAutoscaler](t, objs, "HorizontalPodAutoscaler", name(c))
		if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < 2 || h.Spec.ScaleTargetRef.Name != name(c) {
			t.Errorf("%s: HPA %+v", c, h.Spec)
		}
	} else if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
		t.Errorf("%s: replicas %v, want at least 2", c, d.Spec.Replicas)
	}
	pdb := one[policyv1.PodDisruptionBudget](t, objs, "PodDisruptionBudget", name(c))
	if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 || pdb.Spec.MinAvailable != nil {
		t.Errorf("%s: PDB %+v, want maxUnavailable 1 (one of >= 2 pods stays up, drains never hang)", c, pdb.Spec)
	}
	if diff := cmp.Diff(d.Spec.Selector.MatchLabels, pdb.Spec.Selector.MatchLabels); diff != "" {
		t.Errorf("%s: PDB selector differs from the Deployment's (-deploy +pdb):\n%s", c, diff)
	}
	p := d.Spec.Template.Spec
	if p.SecurityContext == nil || p.SecurityContext.RunAsNonRoot == nil || !*p.SecurityContext.RunAsNonRoot ||
		p.SecurityContext.SeccompProfile == nil || p.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: pod security context %+v", c, p.SecurityContext)
	}
	if p.AutomountServiceAccountToken == nil {
		t.Errorf("%s: automountServiceAccountToken not explicit", c)
	}
	if len(p.TopologySpreadConstraints) == 0 {
		t.Errorf("%s: no topology spread", c)
	}
	if len(p.Containers) != 1 {
		t.Fatalf("%s: %d containers", c, len(p.Containers))
	}
	ctr := p.Containers[0]
	sc := ctr.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		t.Errorf("%s: container security context %+v", c, sc)
	}
	for probe, path := range map[*corev1.Probe]string{ctr.LivenessProbe: "/healthz", ctr.ReadinessProbe: "/readyz"} {
		if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != path || probe.HTTPGet.Port.String() != "metrics" {
			t.Errorf("%s: probe for %s is %+v", c, path, probe)
		}
	}
	if port := containerPort(ctr, "metrics"); port != 9090 {
		t.Errorf("%s: metrics port %d", c, port)
	}
	for _, flag := range []string{"--tls-cert-file=/etc/piggy/tls/tls.crt", "--tls-key-file=/etc/piggy/tls/tls.key", "--tls-ca-file=/etc/piggy/tls/ca.crt", "--metrics-address=:9090"} {
		if !slices.Contains(ctr.Args, flag) {
			t.Errorf("%s: args lack %s: %v", c, flag, ctr.Args)
		}
	}
	if len(p.Volumes) == 0 || p.Volumes[0].Secret == nil || p.Volumes[0].Secret.SecretName != name(c)+"-tls" {
		t.Errorf("%s: TLS volume %+v", c, p.Volumes)
	}
	if ctr.Resources.Requests.Memory().IsZero() || ctr.Resources.Limits.Memory().IsZero() {
		t.Errorf("%s: resources %+v", c, ctr.Resources)
	}
	// SIGTERM comes after the preStop sleep; the grace period must cover
	// the sleep and the service's own drain bound (--shutdown-grace).
	grace, err := time.ParseDuration(flagValue(ctr.Args, "shutdown-grace"))
	if err != nil {
		t.Errorf("%s: --shutdown-grace: %v", c, err)
	}
	var sleep time.Duration
	if ctr.Lifecycle != nil && ctr.Lifecycle.PreStop != nil && ctr.Lifecycle.PreStop.Sleep != nil {
		sleep = time.Duration(ctr.Lifecycle.PreStop.Sleep.Seconds) * time.Second
	}
	if p.TerminationGracePeriodSeconds == nil || time.Duration(*p.TerminationGracePeriodSeconds)*time.Second <= sleep+grace {
		t.Errorf("%s: terminationGracePeriodSeconds %v does not cover preStop %s + shutdown grace %s", c, p.TerminationGracePeriodSeconds, sleep, grace)
	}
	if env(ctr, "OTEL_SERVICE_NAME") != c {
		t.Errorf("%s: OTEL_SERVICE_NAME=%q", c, env(ctr, "OTEL_SERVICE_NAME"))
	}
}

func containerPort(c corev1.Container, name string) int32 {
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	return 0
}

// env returns the literal value of an env var of c ("" when absent).
func env(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

func hasEnv(c corev1.Container, name string) bool {
	return slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == name })
}

func checkWebhook(t *testing.T, objs []*unstructured.Unstructured, variant string) {
	t.Helper()
	m := one[admissionregistrationv1.MutatingWebhookConfiguration](t, objs, "MutatingWebhookConfiguration", name("admission-gateway"))
	if len(m.Webhooks) != 1 {
		t.Fatalf("%d webhooks", len(m.Webhooks))
	}
	w := m.Webhooks[0]
	wantFail := admissionregistrationv1.Fail
	if variant == "open-webhook" {
		wantFail = admissionregistrationv1.Ignore
	}
	if *w.FailurePolicy != wantFail || *w.SideEffects != admissionregistrationv1.SideEffectClassNone || *w.TimeoutSeconds != 5 ||
		*w.ReinvocationPolicy != admissionregistrationv1.IfNeededReinvocationPolicy || !slices.Equal(w.AdmissionReviewVersions, []string{"v1"}) {
		t.Errorf("webhook settings: failurePolicy %v sideEffects %v timeout %v reinvocation %v versions %v",
			*w.FailurePolicy, *w.SideEffects, *w.TimeoutSeconds, *w.ReinvocationPolicy, w.AdmissionReviewVersions)
	}
	if len(w.Rules) != 1 || !slices.Equal(w.Rules[0].Operations, []admissionregistrationv1.OperationType{admissionregistrationv1.Create}) ||
		!slices.Equal(w.Rules[0].Resources, []string{"pods"}) || !slices.Equal(w.Rules[0].APIGroups, []string{""}) {
		t.Errorf("rules %+v", w.Rules)
	}
	svc := w.ClientConfig.Service
	if svc == nil || svc.Name != name("admission-gateway") || svc.Namespace != releaseNamespace || *svc.Path != "/mutate" || *svc.Port != 443 {
		t.Errorf("clientConfig %+v", w.ClientConfig)
	}
	excluded := namespaceExclusions(w.NamespaceSelector)
	for _, ns := range []string{"kube-system", releaseNamespace} {
		if !slices.Contains(excluded, ns) {
			t.Errorf("namespaceSelector does not exclude %s: %+v", ns, w.NamespaceSelector)
		}
	}
	if variant == "open-webhook" {
		if len(w.MatchConditions) != 0 || !slices.Contains(excluded, "monitoring") || w.ObjectSelector == nil || len(w.ObjectSelector.MatchExpressions) != 1 {
			t.Errorf("open webhook: matchConditions %v, excluded %v, objectSelector %v", w.MatchConditions, excluded, w.ObjectSelector)
		}
	} else if len(w.MatchConditions) != 1 || !strings.Contains(w.MatchConditions[0].Expression, "startsWith('piggysec.com/')") {
		t.Errorf("matchConditions %+v", w.MatchConditions)
	}
	certManager := strings.HasPrefix(variant, "cert-manager")
	if got := m.Annotations["cert-manager.io/inject-ca-from"]; certManager != (got == releaseNamespace+"/"+name("admission-gateway")) {
		t.Errorf("inject-ca-from = %q in variant %s", got, variant)
	}
	if certManager != (len(w.ClientConfig.CABundle) == 0) {
		t.Errorf("caBundle of %d bytes in variant %s", len(w.ClientConfig.CABundle), variant)
	}

	vap := one[admissionregistrationv1.ValidatingAdmissionPolicy](t, objs, "ValidatingAdmissionPolicy", releaseName+"-launcher-required")
	if len(vap.Spec.Validations) != 3 || !strings.Contains(vap.Spec.Variables[1].Expression, "/piggy/piggy-env") {
		t.Errorf("admission policy %+v", vap.Spec)
	}
	b := one[admissionregistrationv1.ValidatingAdmissionPolicyBinding](t, objs, "ValidatingAdmissionPolicyBinding", releaseName+"-launcher-required")
	if b.Spec.PolicyName != vap.Name || !slices.Equal(b.Spec.ValidationActions, []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny}) {
		t.Errorf("binding %+v", b.Spec)
	}
	if diff := cmp.Diff(w.NamespaceSelector, b.Spec.MatchResources.NamespaceSelector); diff != "" {
		t.Errorf("the policy covers other namespaces than the webhook (-webhook +policy):\n%s", diff)
	}
}

func namespaceExclusions(sel *metav1.LabelSelector) []string {
	var out []string
	if sel == nil {
		return nil
	}
	for _, e := range sel.MatchExpressions {
		if e.Key == "kubernetes.io/metadata.name" && e.Operator == "NotIn" {
			out = append(out, e.Values...)
		}
	}
	return out
}

// checkTLS: generated mode has a CA and per-service certificates that chain
// to it with the right names and usages; cert-manager mode has the issuer
// chain and Certificates instead.
func checkTLS(t *testing.T, objs []*unstructured.Unstructured, variant string, disabled []string) {
	t.Helper()
	certManager := strings.HasPrefix(variant, "cert-manager")
	if got := len(find(objs, "Certificate", "")); certManager != (got > 0) {
		t.Errorf("%d Certificates in variant %s", got, variant)
	}
	if certManager {
		external := variant == "cert-manager-external-issuer"
		if got := len(find(objs, "Issuer", "")); (got == 2) == external {
			t.Errorf("%d Issuers (external issuer: %t)", got, external)
		}
		for _, c := range components {
			certs := find(objs, "Certificate", name(c))
			if slices.Contains(disabled, c) {
				continue
			}
			if len(certs) != 1 {
				t.Fatalf("%s: %d Certificates", c, len(certs))
			}
			spec, _, _ := unstructured.NestedMap(certs[0].Object, "spec")
			usages, _, _ := unstructured.NestedStringSlice(spec, "usages")
			dns, _, _ := unstructured.NestedStringSlice(spec, "dnsNames")
			issuer, _, _ := unstructured.NestedString(spec, "issuerRef", "name")
			if !slices.Contains(usages, "server auth") || !slices.Contains(usages, "client auth") ||
				!slices.Contains(dns, name(c)+"."+releaseNamespace+".svc") || spec["secretName"] != name(c)+"-tls" ||
				(external && issuer != "corp-ca") || (!external && issuer != releaseName+"-ca") {
				t.Errorf("%s: Certificate spec %v", c, spec)
			}
		}
		if len(find(objs, "Secret", "")) != 0 {
			t.Errorf("cert-manager mode renders Secrets: %s", names(find(objs, "Secret", "")))
		}
		return
	}
	ca := secretCert(t, objs, releaseName+"-ca", "tls.crt")
	if !ca.IsCA {
		t.Fatal("the CA Secret holds no CA certificate")
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	for _, c := range components {
		if slices.Contains(disabled, c) {
			if len(find(objs, "Secret", name(c)+"-tls")) != 0 {
				t.Errorf("%s is disabled but has a TLS Secret", c)
			}
			continue
		}
		leaf := secretCert(t, objs, name(c)+"-tls", "tls.crt")
		host := name(c) + "." + releaseNamespace + ".svc"
		for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
			if _, err := leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
				t.Errorf("%s certificate for %s, usage %v: %v", c, host, usage, err)
			}
		}
		if bundle := secretCert(t, objs, name(c)+"-tls", "ca.crt"); !bundle.Equal(ca) {
			t.Errorf("%s: ca.crt is not the chart's CA", c)
		}
		if validity := leaf.NotAfter.Sub(leaf.NotBefore); validity < 300*24*time.Hour {
			t.Errorf("%s: certificate valid for %s", c, validity)
		}
		// The pods' checksum is the hash of exactly this material, even
		// when it was generated in this render.
		s := one[corev1.Secret](t, objs, "Secret", name(c)+"-tls")
		d := one[appsv1.Deployment](t, objs, "Deployment", name(c))
		want := fmt.Sprintf("%x", sha256.Sum256(append(append([]byte{}, s.Data["ca.crt"]...), s.Data["tls.crt"]...)))
		if got := d.Spec.Template.Annotations["checksum/tls"]; got != want {
			t.Errorf("%s: checksum/tls %q is not the hash of its rendered certificate (%q)", c, got, want)
		}
	}
	if !slices.Contains(disabled, "admission-gateway") {
		m := one[admissionregistrationv1.MutatingWebhookConfiguration](t, objs, "MutatingWebhookConfiguration", name("admission-gateway"))
		block, _ := pem.Decode(m.Webhooks[0].ClientConfig.CABundle)
		if block == nil {
			t.Fatal("webhook caBundle is not PEM")
		}
		if got, _ := x509.ParseCertificate(block.Bytes); got == nil || !got.Equal(ca) {
			t.Error("webhook caBundle is not the CA that signed the gateway's certificate")
		}
	}
}

func secretCert(t *testing.T, objs []*unstructured.Unstructured, secret, key string) *x509.Certificate {
	t.Helper()
	s := one[corev1.Secret](t, objs, "Secret", secret)
	block, _ := pem.Decode(s.Data[key])
	if block == nil {
		t.Fatalf("Secret %s key %s holds no PEM", secret, key)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("Secret %s key %s: %v", secret, key, err)
	}
	return cert
}

func checkNetworkPolicies(t *testing.T, objs []*unstructured.Unstructured, disabled []string) {
	t.Helper()
	for _, c := range components {
		if slices.Contains(disabled, c) {
			continue
		}
		np := one[networkingv1.NetworkPolicy](t, objs, "NetworkPolicy", name(c))
		rules := map[string]networkingv1.NetworkPolicyIngressRule{}
		for _, r := range np.Spec.Ingress {
			for _, p := range r.Ports {
				rules[p.Port.String()] = r
			}
		}
		switch c {
		case "admission-gateway":
			// Only the listed sources (none by default) and the helm test pod.
			if r, ok := rules["webhook"]; !ok || len(r.From) != 1 || r.From[0].PodSelector == nil || r.From[0].PodSelector.MatchLabels["app.kubernetes.io/name"] != "test" {
				t.Errorf("gateway webhook port must admit only the test pod by default: %+v", r)
			}
		case "image-resolver":
			r := rules["grpc"]
			if len(r.From) == 0 || r.From[0].PodSelector == nil || r.From[0].PodSelector.MatchLabels["app.kubernetes.io/name"] != "admission-gateway" {
				t.Errorf("resolver gRPC must be reachable from the gateway only: %+v", r)
			}
		case "secret-broker":
			r := rules["https"]
			if len(r.From) != 1 || r.From[0].NamespaceSelector == nil || len(r.From[0].NamespaceSelector.MatchLabels) != 0 {
				t.Errorf("broker HTTPS must be open to all pods: %+v", r)
			}
		}
		if _, ok := rules["metrics"]; !ok {
			t.Errorf("%s: no metrics ingress rule", c)
		}
	}
}

// TestPodDefaults: every annotation of libs/podsettings has a cluster-wide
// default in values.yaml, and a set value reaches the gateway and the broker
// as the env var podsettings reads.
func TestPodDefaults(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(chartDir(), "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var values struct {
		Global struct {
			PodDefaults map[string]any `json:"podDefaults"`
		} `json:"global"`
	}
	if err := yaml.Unmarshal(raw, &values); err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, n := range podsettings.Names {
		// piggysec.com/debug's default is global.debug (DEBUG), which also
		// switches the services to debug logs, as in the original chart.
		if n != podsettings.Debug {
			want = append(want, n)
		}
	}
	var got []string
	for k := range values.Global.PodDefaults {
		got = append(got, k)
	}
	slices.Sort(want)
	slices.Sort(got)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("global.podDefaults keys differ from podsettings.Names (-want +got):\n%s", diff)
	}

	var args []string
	for i, n := range want {
		v := "v" + strings.Repeat("x", i)
		switch n {
		case podsettings.PiggyAddress:
			v = "https://broker.example.net"
		case podsettings.Standalone, podsettings.IgnoreNoEnv, podsettings.EnforceIntegrity, podsettings.EnforceServiceAccount,
			podsettings.PSPAllowPrivilegeEscalation, podsettings.ImageSkipVerifyRegistry:
			v = "true"
		case podsettings.PiggyEnvImagePullPolicy:
			v = "Always"
		case podsettings.DNSResolver:
			v = "tcp"
		case podsettings.Retries, podsettings.NumberOfRetry:
			v = "3"
		}
		args = append(args, "--set-string", "global.podDefaults."+n+"="+v)
		values.Global.PodDefaults[n] = v
	}
	args = append(args, "--set", "global.debug=true", "--set-json", `global.lockedSettings=["piggy-enforce-integrity"]`)
	objs := helmTemplate(t, args...)
	for _, c := range []string{"admission-gateway", "secret-broker"} {
		ctr := one[appsv1.Deployment](t, objs, "Deployment", name(c)).Spec.Template.Spec.Containers[0]
		for _, n := range want {
			if got, want := env(ctr, podsettings.EnvName(n)), values.Global.PodDefaults[n]; got != want {
				t.Errorf("%s: %s=%q, want %q", c, podsettings.EnvName(n), got, want)
			}
		}
		if env(ctr, "LOCKED_SETTINGS") != "piggy-enforce-integrity" {
			t.Errorf("%s: LOCKED_SETTINGS=%q", c, env(ctr, "LOCKED_SETTINGS"))
		}
	}
	for _, c := range components {
		ctr := one[appsv1.Deployment](t, objs, "Deployment", name(c)).Spec.Template.Spec.Containers[0]
		if env(ctr, "DEBUG") != "true" {
			t.Errorf("%s: debug=true did not set DEBUG=true", c)
		}
	}

	// Defaults: the chart's broker and piggy-env image, and nothing else.
	objs = helmTemplate(t)
	gw := one[appsv1.Deployment](t, objs, "Deployment", name("admission-gateway")).Spec.Template.Spec.Containers[0]
	broker := "https://" + name("secret-broker") + "." + releaseNamespace + ".svc"
	if env(gw, "PIGGY_ADDRESS") != broker || !strings.HasSuffix(env(gw, "PIGGY_ENV_IMAGE"), "/piggy-env:0.1.0") {
		t.Errorf("default PIGGY_ADDRESS=%q PIGGY_ENV_IMAGE=%q", env(gw, "PIGGY_ADDRESS"), env(gw, "PIGGY_ENV_IMAGE"))
	}
	if !slices.Contains(gw.Args, "--allowed-piggy-addresses="+broker) || !slices.Contains(gw.Args, "--broker-ca-file=/etc/piggy/tls/ca.crt") {
		t.Errorf("gateway args %v", gw.Args)
	}
	for _, n := range want {
		if n != podsettings.PiggyAddress && n != podsettings.PiggyEnvImage && hasEnv(gw, podsettings.EnvName(n)) {
			t.Errorf("default render sets %s", podsettings.EnvName(n))
		}
	}
	if hasEnv(gw, "DEBUG") || hasEnv(gw, "OTEL_EXPORTER_OTLP_ENDPOINT") {
		t.Error("defaults set DEBUG or an OTLP endpoint")
	}
}

// TestCallerIdentities: the names the services expect of their callers
// follow the release prefix, and pull-secret namespaces reach both the
// gateway and the resolver.
func TestCallerIdentities(t *testing.T) {
	objs := helmTemplate(t, "--set", "global.fullnameOverride=acme", "--set-json", `global.pullSecretNamespaces=["registry-creds"]`,
		"--set", "global.podDefaults.image-pull-secret-namespace=ci")
	args := func(c string) []string {
		return one[appsv1.Deployment](t, objs, "Deployment", "acme-"+c).Spec.Template.Spec.Containers[0].Args
	}
	for _, c := range components {
		if !slices.Contains(args(c), "--operator-identities=acme-operator") {
			t.Errorf("%s args %v: no --operator-identities=acme-operator", c, args(c))
		}
	}
	if !slices.Contains(args("image-resolver"), "--gateway-identities=acme-admission-gateway") {
		t.Errorf("resolver args %v: no --gateway-identities=acme-admission-gateway", args("image-resolver"))
	}
	for _, c := range []string{"admission-gateway", "image-resolver"} {
		if !slices.Contains(args(c), "--pull-secret-namespaces=registry-creds,ci") {
			t.Errorf("%s args %v: no --pull-secret-namespaces=registry-creds,ci", c, args(c))
		}
	}
	op := secretCert(t, objs, "acme-operator-tls", "tls.crt")
	if op.Subject.CommonName != "acme-operator" {
		t.Errorf("operator certificate names %q", op.Subject.CommonName)
	}
	if _, err := op.Verify(x509.VerifyOptions{Roots: rootsOf(secretCert(t, objs, "acme-ca", "tls.crt")), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("operator certificate: %v", err)
	}
	if objs := helmTemplate(t, "--set", "global.tls.operatorCertificate=false"); len(find(objs, "Secret", name("operator")+"-tls")) != 0 {
		t.Error("operatorCertificate=false still renders the operator Secret")
	}
}

func rootsOf(ca *x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca)
	return p
}

// TestOTLPAndServiceMonitors: the OTLP endpoint reaches every service;
// ServiceMonitors and dashboards render when asked.
func TestOTLPAndServiceMonitors(t *testing.T) {
	objs := helmTemplate(t, "--set", "global.otlp.endpoint=http://collector:4318", "--set", "global.otlp.exportMetrics=false",
		"--set", "global.serviceMonitor.enabled=true", "--set", "dashboards.enabled=true")
	for _, c := range components {
		ctr := one[appsv1.Deployment](t, objs, "Deployment", name(c)).Spec.Template.Spec.Containers[0]
		if env(ctr, "OTEL_EXPORTER_OTLP_ENDPOINT") != "http://collector:4318" || env(ctr, "OTEL_METRICS_EXPORTER") != "none" ||
			!strings.Contains(env(ctr, "OTEL_RESOURCE_ATTRIBUTES"), "k8s.pod.name=$(POD_NAME)") {
			t.Errorf("%s: OTLP env %v", c, ctr.Env)
		}
		if len(find(objs, "ServiceMonitor", name(c))) != 1 {
			t.Errorf("%s: no ServiceMonitor", c)
		}
	}
	dashboards := find(objs, "ConfigMap", "")
	if len(dashboards) != 3 {
		t.Fatalf("%d dashboard ConfigMaps", len(dashboards))
	}
	for _, d := range dashboards {
		if d.GetLabels()["grafana_dashboard"] != "1" {
			t.Errorf("%s lacks grafana_dashboard=1", d.GetName())
		}
	}
}

// TestRBAC: each service gets exactly the verbs it uses.
func TestRBAC(t *testing.T) {
	objs := helmTemplate(t)
	want := map[string][]rbacv1.PolicyRule{
		"admission-gateway": {{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get"}}},
		"image-resolver":    {{APIGroups: []string{""}, Resources: []string{"secrets", "serviceaccounts"}, Verbs: []string{"get"}}},
		"secret-broker": {
			{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}},
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}},
		},
	}
	for c, rules := range want {
		cr := one[rbacv1.ClusterRole](t, objs, "ClusterRole", name(c))
		if diff := cmp.Diff(rules, cr.Rules); diff != "" {
			t.Errorf("%s rules (-want +got):\n%s", c, diff)
		}
		crb := one[rbacv1.ClusterRoleBinding](t, objs, "ClusterRoleBinding", name(c))
		if len(crb.Subjects) != 1 || crb.Subjects[0].Name != name(c) || crb.Subjects[0].Namespace != releaseNamespace || crb.RoleRef.Name != name(c) {
			t.Errorf("%s binding %+v", c, crb)
		}
		sa := one[corev1.ServiceAccount](t, objs, "ServiceAccount", name(c))
		if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
			t.Errorf("%s: ServiceAccount mounts its token by default", c)
		}
	}
	// The only Role by default: the broker's start claims, Leases in the
	// release namespace.
	claims := one[rbacv1.Role](t, objs, "Role", name("secret-broker")+"-start-claims")
	wantClaims := []rbacv1.PolicyRule{{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"create", "get", "delete", "deletecollection"}}}
	if diff := cmp.Diff(wantClaims, claims.Rules); diff != "" || claims.Namespace != releaseNamespace {
		t.Errorf("start claims Role in %q (-want +got):\n%s", claims.Namespace, diff)
	}
	rb := one[rbacv1.RoleBinding](t, objs, "RoleBinding", name("secret-broker")+"-start-claims")
	if rb.Namespace != releaseNamespace || len(rb.Subjects) != 1 || rb.Subjects[0].Name != name("secret-broker") || rb.RoleRef.Name != claims.Name {
		t.Errorf("start claims binding %+v", rb)
	}
	if roles := find(objs, "Role", ""); len(roles) != 1 {
		t.Errorf("default render grants Secret reads: %s", names(roles))
	}
	// Secret reads are granted per listed namespace, never in the
	// release namespace (the CA key).
	gwObjs := helmTemplate(t, "--set-json", `admission-gateway.secretReadNamespaces=["team-a","team-b"]`)
	for _, ns := range []string{"team-a", "team-b"} {
		var role *rbacv1.Role
		for _, r := range find(gwObjs, "Role", name("admission-gateway")+"-secrets") {
			if r.GetNamespace() == ns {
				role = convert[rbacv1.Role](t, r)
			}
		}
		if role == nil || !cmp.Equal(role.Rules, []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get"}}}) {
			t.Errorf("namespace %s: Role %+v", ns, role)
		}
	}
	if gw := one[appsv1.Deployment](t, gwObjs, "Deployment", name("admission-gateway")).Spec.Template.Spec.Containers[0]; !slices.Contains(gw.Args, "--secret-read-namespaces=team-a,team-b") {
		t.Errorf("gateway args %v", gw.Args)
	}
	if out, err := helmTemplateRaw(t, "--set-json", `admission-gateway.secretReadNamespaces=["`+releaseNamespace+`"]`); err == nil || !strings.Contains(out, "must not list the release namespace") {
		t.Errorf("secretReadNamespaces with the release namespace rendered: %v\n%.300s", err, out)
	}
	objs = helmTemplate(t, "--set", "secret-broker.podInformer=false", "--set", "secret-broker.oncePerStart=false", "--set", "image-resolver.pullSecrets=false",
		"--set", "secret-broker.aws.roleArn=arn:aws:iam::123456789012:role/piggy-broker")
	cr := one[rbacv1.ClusterRole](t, objs, "ClusterRole", name("secret-broker"))
	if !slices.Equal(cr.Rules[1].Verbs, []string{"get"}) {
		t.Errorf("without the informer the broker needs get only, has %v", cr.Rules[1].Verbs)
	}
	if len(find(objs, "Role", "")) != 0 {
		t.Errorf("without once-per-start the broker still has a Role: %s", names(find(objs, "Role", "")))
	}
	if len(find(objs, "ClusterRole", name("image-resolver"))) != 0 {
		t.Error("image-resolver without pull secrets still has a ClusterRole")
	}
	d := one[appsv1.Deployment](t, objs, "Deployment", name("image-resolver"))
	if *d.Spec.Template.Spec.AutomountServiceAccountToken || !slices.Contains(d.Spec.Template.Spec.Containers[0].Args, "--kubernetes=off") {
		t.Error("image-resolver without pull secrets still mounts a token or reads Kubernetes")
	}
	sa := one[corev1.ServiceAccount](t, objs, "ServiceAccount", name("secret-broker"))
	if sa.Annotations["eks.amazonaws.com/role-arn"] != "arn:aws:iam::123456789012:role/piggy-broker" {
		t.Errorf("broker ServiceAccount annotations %v", sa.Annotations)
	}
}

// TestRefusedValues: the schema and the chart's own checks refuse values
// that cannot work, with messages that say what to do.
func TestRefusedValues(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown global", []string{"--set", "global.tsl.mode=generated"}, "additional properties 'tsl' not allowed"},
		{"unknown subchart value", []string{"--set", "secret-broker.replicas=3"}, "additional properties 'replicas' not allowed"},
		{"unknown pod default", []string{"--set", "global.podDefaults.aws-regoin=eu-west-1"}, "aws-regoin"},
		{"bad TLS mode", []string{"--set", "global.tls.mode=selfsigned"}, "global/tls/mode"},
		{"broker disabled without address", []string{"--set", "secret-broker.enabled=false"}, "secret-broker.enabled=false but global.podDefaults.piggy-address"},
		{"resolver disabled without address", []string{"--set", "image-resolver.enabled=false"}, "image-resolver.enabled=false but admission-gateway.imageResolverAddress"},
		{"PDB that blocks drains", []string{"--set", "secret-broker.replicaCount=1", "--set", "secret-broker.podDisruptionBudget.minAvailable=1"}, "allows no voluntary disruption"},
		{"webhook timeout", []string{"--set", "webhook.timeoutSeconds=31"}, "timeoutSeconds"},
		{"once per start without the informer", []string{"--set", "secret-broker.podInformer=false"}, "secret-broker.oncePerStart needs secret-broker.podInformer"},
		{"bad locked setting", []string{"--set-json", `global.lockedSettings=["aws-regoin"]`}, "lockedSettings"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := helmTemplateRaw(t, tt.args...)
			if err == nil {
				t.Fatalf("rendered; want an error mentioning %q", tt.want)
			}
			if !strings.Contains(out, tt.want) {
				t.Errorf("error does not mention %q:\n%s", tt.want, out)
			}
		})
	}
}

// TestHelmUnittest runs the helm-unittest suites (charts/piggy/tests), whose
// snapshot pins the complete default render.
func TestHelmUnittest(t *testing.T) {
	bin := tool(t, "PIGGY_HELM_UNITTEST", "helm-unittest")
	out, err := run(t, repoRoot(), nil, bin, "--strict", "--color=false", "--file", "tests/*_test.yaml", chartDir())
	t.Log(out)
	if err != nil {
		t.Fatalf("helm-unittest: %v", err)
	}
}
