package devstack

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/piggysec/piggy/libs/kubetest"
	"github.com/piggysec/piggy/libs/podidentity"
	"github.com/piggysec/piggy/libs/podrun"
)

// The original Piggy's Service, as its README and its pods' PIGGY_ADDRESS
// name it.
const (
	originalAddress = "https://piggy-webhooks.piggy-webhooks.svc.cluster.local"
	originalHost    = "piggy-webhooks.piggy-webhooks.svc.cluster.local"
	webhookLabel    = "piggysec.com/webhook"
)

// warnings collects the admission warnings the API server returns.
type warnings struct {
	mu   sync.Mutex
	list []string
}

func (w *warnings) HandleWarningHeaderWithContext(_ context.Context, _ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, text)
}

func (w *warnings) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	l := w.list
	w.list = nil
	return l
}

// originalMutatedPod is a pod as the original webhook (piggy-webhooks
// 0.7.x, mutate/pod.go) left it in proxy mode: its install container and
// volume, container "main" started as /piggy/piggy-env -- <command> with
// the original's PIGGY_* env and a literal reference, and the piggy-uid
// annotation {uid: signature}. It returns the pod and the UID and
// signature its original piggy-env sends.
func originalMutatedPod(ns, name, sa, image string) (*corev1.Pod, string, string) {
	command := []string{"/app/server", "--port=8080"}
	uid := podidentity.NewUID()
	sig := podidentity.Signature(command)
	uids, _ := json.Marshal(map[string]string{uid: sig})
	secret := ns + "/" + sa
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: map[string]string{
			"piggysec.com/piggy-address": originalAddress,
			podidentity.AnnotationKey:    string(uids),
		}},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa,
			Volumes:            []corev1.Volume{{Name: "piggy-env", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}}},
			InitContainers: []corev1.Container{{
				Name: "install-piggy-env", Image: "ghcr.io/kongz/piggy-env:0.7.0", ImagePullPolicy: corev1.PullAlways,
				Args:         []string{"install", "/piggy"},
				VolumeMounts: []corev1.VolumeMount{{Name: "piggy-env", MountPath: "/piggy/"}},
			}},
			Containers: []corev1.Container{{
				Name: "main", Image: image,
				Command: []string{"/piggy/piggy-env"}, Args: append([]string{"--"}, command...),
				Env: []corev1.EnvVar{
					{Name: "DB_PASSWORD", Value: "piggy:DB_PASSWORD"},
					{Name: "PIGGY_AWS_SECRET_NAME", Value: secret},
					{Name: "PIGGY_AWS_REGION", Value: ""},
					{Name: "PIGGY_ADDRESS", Value: originalAddress},
					{Name: "PIGGY_POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
					{Name: "PIGGY_POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
					{Name: "PIGGY_UID", Value: uid},
				},
				VolumeMounts: []corev1.VolumeMount{{Name: "piggy-env", MountPath: "/piggy/"}},
			}},
		},
	}, uid, sig
}

// originalLauncher plays the original piggy-env of a container the
// original webhook launched: at each start it POSTs /secret to
// PIGGY_ADDRESS with the pod's default service-account token in X-Token
// and {"resources","name","uid","signature"}, without verifying TLS (its
// default). The old Service name reaches the broker's HTTPS address, as
// the guide's ExternalName Service makes it.
type originalLauncher struct {
	client         *http.Client
	cs             kubernetes.Interface
	pod            *corev1.Pod
	uid, signature string
}

func newOriginalLauncher(s *Stack, cs kubernetes.Interface, pod *corev1.Pod, uid, sig string) *originalLauncher {
	broker := strings.TrimPrefix(s.BrokerURL(), "https://")
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	return &originalLauncher{cs: cs, pod: pod, uid: uid, signature: sig, client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // the original piggy-env's default (PIGGY_SKIP_VERIFY_TLS unset)
		DialContext: func(ctx context.Context, network, address string) (net.Conn, error) {
			if address == originalHost+":443" {
				address = broker
			}
			return dialer.DialContext(ctx, network, address)
		},
	}}}
}

// start reports the next start of container "main", as the kubelet does
// (restartCount one more after the first), and makes the request the
// original piggy-env makes then. It returns the status and the values.
func (l *originalLauncher) start(t *testing.T) (int, map[string]string) {
	t.Helper()
	ctx := t.Context()
	pods := l.cs.CoreV1().Pods(l.pod.Namespace)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		p, err := pods.Get(ctx, l.pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(p.Status.ContainerStatuses) == 0 {
			p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "main", Image: p.Spec.Containers[0].Image}}
		} else {
			p.Status.ContainerStatuses[0].RestartCount++
		}
		st := &p.Status.ContainerStatuses[0]
		st.ContainerID = "containerd://" + podidentity.NewUID()
		st.State = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}}
		started := true
		st.Started, st.Ready = &started, true
		p.Status.Phase = corev1.PodRunning
		_, err = pods.UpdateStatus(ctx, p, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := kubetest.RequestToken(ctx, l.cs, l.pod.Namespace, l.pod.Spec.ServiceAccountName, kubetest.TokenOptions{Pod: l.pod})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(map[string]string{"resources": "pods", "name": l.pod.Name, "uid": l.uid, "signature": l.signature})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, originalAddress+"/secret", bytes.NewBuffer(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Add("X-Token", tok.Token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := l.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]string
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(data, &values); err != nil {
			t.Fatalf("200 body %q is not the original's key/value object: %v", data, err)
		}
	} else {
		t.Logf("POST /secret: %d %s", resp.StatusCode, data)
	}
	return resp.StatusCode, values
}

// setWebhookSelector replaces the namespace labels the stack's webhook
// requires (besides its exclusions), as webhook.namespaceSelector does in
// charts/piggy.
func setWebhookSelector(ctx context.Context, t *testing.T, cs kubernetes.Interface, labels map[string]string) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		mwc, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "piggy-dev", metav1.GetOptions{})
		if err != nil {
			return err
		}
		mwc.Webhooks[0].NamespaceSelector.MatchLabels = labels
		_, err = cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Update(ctx, mwc, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func labelNamespace(t *testing.T, cs kubernetes.Interface, ns, value string) {
	t.Helper()
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]string{webhookLabel: value}}})
	if _, err := cs.CoreV1().Namespaces().Patch(t.Context(), ns, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestMigrationGuide plays docs/migration.md on the stack: a namespace
// whose pods the original Piggy mutated, the cut-over to this Piggy's
// webhook, pods of the original README's shape afterwards, and the old
// pods still answered after a restart.
func TestMigrationGuide(t *testing.T) {
	s := needStack(t)
	ctx := t.Context()
	rc := s.Cluster.RESTConfig()
	warned := &warnings{}
	rc.WarningHandlerWithContext = warned
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}

	// Before you start: the namespace is labelled as the original's.
	// A new name per run: without a controller manager a deleted
	// namespace never goes away.
	ns, sa := "legacy-shop-"+podidentity.NewUID()[:6], "web"
	if _, err := kubetest.CreateNamespace(ctx, cs, ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cs.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
	if _, err := kubetest.CreateServiceAccount(ctx, cs, ns, sa); err != nil {
		t.Fatal(err)
	}
	labelNamespace(t, cs, ns, "original")
	oldValue, readmeValue := "old-pod-db-password", "readme-test-env"
	for name, value := range map[string]string{
		ns + "/" + sa: `{"DB_PASSWORD": "` + oldValue + `"}`,
		// The README's example name, outside the namespace's own names:
		// the secret lets the namespace's service account read it.
		"myapp/sample/production": `{"TEST_ENV": "` + readmeValue + `", "PIGGY_ALLOWED_SA": "` + ns + `:` + sa + `"}`,
		"myapp/sample/staging":    `{"TEST_ENV": "not-for-legacy-shop"}`,
	} {
		if _, err := s.AWS.PutSecretString(name, value); err != nil {
			t.Fatal(err)
		}
	}

	// Step 2: this Piggy's webhook takes no namespace yet; the original
	// admitted the old pod.
	setWebhookSelector(ctx, t, cs, map[string]string{webhookLabel: "piggy"})
	t.Cleanup(func() { setWebhookSelector(context.Background(), t, cs, nil) })
	oldPod, uid, sig := originalMutatedPod(ns, "web-old", sa, s.DemoImage())
	created, err := cs.CoreV1().Pods(ns).Create(ctx, oldPod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	deleteAtCleanup(t, cs, created)
	old := newOriginalLauncher(s, cs, created, uid, sig)

	// Steps 3 and 4 (after the original is uninstalled): the broker
	// answers the original protocol, the old address reaches the broker
	// and is allowed, and only the myapp/ tree may be granted by
	// PIGGY_ALLOWED_SA.
	if err := s.Reconfigure(ctx,
		[]string{"--legacy-secret-endpoint", "--allowed-sa-names=myapp/*"},
		[]string{"--allowed-piggy-addresses=" + s.BrokerURL() + "," + originalAddress},
	); err != nil {
		t.Fatalf("reconfigure: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Reconfigure(context.Background(), nil, nil); err != nil {
			t.Errorf("restore the services: %v", err)
		}
	})
	if status, values := old.start(t); status != http.StatusOK || values["DB_PASSWORD"] != oldValue || len(values) != 1 {
		t.Fatalf("the old pod's original piggy-env before the cut-over: %d %v", status, values)
	}

	// Step 5: move the namespace. The README pod is mutated by this
	// Piggy (createMutated waits for the webhook to select it).
	labelNamespace(t, cs, ns, "piggy")
	readme := func(name, secret string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: map[string]string{
				"piggysec.com/piggy-address":   originalAddress,
				"piggysec.com/aws-secret-name": secret,
				"piggysec.com/aws-region":      s.opts.Region,
			}},
			Spec: corev1.PodSpec{ServiceAccountName: sa, Containers: []corev1.Container{{
				Name: "app", Image: s.DemoImage(),
				Env: []corev1.EnvVar{{Name: "TEST_ENV", Value: "piggy:TEST_ENV"}},
			}}},
		}
	}
	// The cluster's DNS: the old Service name (the guide's ExternalName
	// Service) reaches the broker, which listens on loopback here.
	viaOldService := func(r *podrun.Runner, p *corev1.Pod) {
		c := &r.Pod.Spec.Containers[0]
		for i := range c.Env {
			if c.Env[i].Name == "PIGGY_ADDRESS" {
				if c.Env[i].Value != originalAddress {
					t.Errorf("PIGGY_ADDRESS = %q, want the README's %q", c.Env[i].Value, originalAddress)
				}
				c.Env[i].Value = s.BrokerURL()
			}
		}
	}
	t.Run("a pod of the original README's shape gets its values", func(t *testing.T) {
		code, env, stderr := runPod(t, s, readme("readme-app", "myapp/sample/production"), viaOldService)
		if code != 0 || env["TEST_ENV"] != readmeValue {
			t.Errorf("exit %d, TEST_ENV=%q, want 0 and the secret's value; piggy-env: %s", code, env["TEST_ENV"], stderr)
		}
	})
	t.Run("a README name without PIGGY_ALLOWED_SA is refused", func(t *testing.T) {
		code, env, stderr := runPod(t, s, readme("readme-staging", "myapp/sample/staging"), viaOldService)
		if code == 0 || env != nil || !strings.Contains(stderr, "broker answered HTTP 403") {
			t.Errorf("exit %d, app env %v, want a refusal (403); piggy-env: %s", code, env, stderr)
		}
		assertNotContains(t, stderr, "not-for-legacy-shop")
	})
	t.Run("an original pod created again is admitted unchanged", func(t *testing.T) {
		again, _, _ := originalMutatedPod(ns, "web-old-again", sa, s.DemoImage())
		warned.take()
		got, err := cs.CoreV1().Pods(ns).Create(ctx, again, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("the webhook refused a pod the original mutated: %v", err)
		}
		deleteAtCleanup(t, cs, got)
		c := got.Spec.Containers[0]
		if got.Annotations[podidentity.AnnotationKey] != again.Annotations[podidentity.AnnotationKey] || len(got.Spec.InitContainers) != 1 ||
			len(c.Env) != len(again.Spec.Containers[0].Env) || strings.Join(c.Args, " ") != strings.Join(again.Spec.Containers[0].Args, " ") {
			t.Errorf("the pod was changed: annotation %q, %d init containers, env %v, args %q",
				got.Annotations[podidentity.AnnotationKey], len(got.Spec.InitContainers), c.Env, c.Args)
		}
		for _, v := range got.Spec.Volumes {
			if v.Name == "piggy-token" {
				t.Error("the pod got this Piggy's token volume")
			}
		}
		if w := strings.Join(warned.take(), "\n"); !strings.Contains(w, "mutated by the original Piggy webhook") {
			t.Errorf("admission warnings %q, want the original-webhook warning", w)
		}
	})

	// The old pod keeps working: its container restarts and the original
	// piggy-env is answered again through the legacy endpoint.
	t.Run("the old pod is answered after a restart", func(t *testing.T) {
		if status, values := old.start(t); status != http.StatusOK || values["DB_PASSWORD"] != oldValue {
			t.Errorf("after a restart: %d %v", status, values)
		}
	})
}

func assertNotContains(t *testing.T, s, value string) {
	t.Helper()
	if strings.Contains(s, value) {
		t.Errorf("%q holds a value it may not see", s)
	}
}
