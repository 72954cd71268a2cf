package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/piggysec/piggy/libs/kubetest"
	"github.com/piggysec/piggy/libs/podidentity"
)

// originalLauncher is a container the original Piggy webhook launched, as
// its piggy-env sees itself: PIGGY_POD_NAME, PIGGY_UID and the signature
// of its command line.
type originalLauncher struct {
	podName, uid, signature string
}

// originalPod creates a pod as the original webhook (chart piggy-webhooks
// 0.7.x) left it: its piggy-uid annotation {uid: signature}, container
// "main" running /piggy/piggy-env -- <command> with the original's PIGGY_*
// env and literal references to db and api_key, and no PIGGY_GRANT.
func (w *world) originalPod(ns, name, sa string, annotations map[string]string) (*corev1.Pod, originalLauncher) {
	w.t.Helper()
	command := []string{"/app/server", "--port=8080"}
	// The original's UID: a UUID without dashes.
	l := originalLauncher{podName: name, uid: podidentity.NewUID(), signature: podidentity.Signature(command)}
	uids, _ := json.Marshal(map[string]string{l.uid: l.signature})
	pod, err := kubetest.CreatePod(context.Background(), w.cs, ns, name, sa, func(p *corev1.Pod) {
		p.Annotations = map[string]string{
			podidentity.AnnotationKey:    string(uids),
			"piggysec.com/piggy-address": "https://piggy-webhooks.piggy-webhooks.svc.cluster.local",
		}
		for k, v := range annotations {
			p.Annotations["piggysec.com/"+k] = v
		}
		secretName := ns + "/" + sa
		if n, ok := annotations["aws-secret-name"]; ok {
			secretName = n
		}
		c := &p.Spec.Containers[0]
		c.Command, c.Args = []string{"/piggy/piggy-env"}, append([]string{"--"}, command...)
		c.Env = []corev1.EnvVar{
			{Name: "DB_PASSWORD", Value: "piggy:db"},
			{Name: "API_KEY", Value: "piggy:api_key"},
			{Name: "LOG_LEVEL", Value: "info"},
			{Name: "PIGGY_AWS_SECRET_NAME", Value: secretName},
			{Name: "PIGGY_AWS_REGION", Value: ""},
			{Name: "PIGGY_AWS_SSM_PARAMETER_PATH", Value: ""},
			{Name: "PIGGY_ADDRESS", Value: "https://piggy-webhooks.piggy-webhooks.svc.cluster.local"},
			{Name: "PIGGY_POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
			{Name: "PIGGY_UID", Value: l.uid},
		}
		p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: "piggy-env", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}})
		c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: "piggy-env", MountPath: "/piggy/"})
	})
	if err != nil {
		w.t.Fatal(err)
	}
	return pod, l
}

// defaultToken is the token the kubelet mounts at
// /var/run/secrets/kubernetes.io/serviceaccount/token: for the API
// server's audiences, bound to the pod. The original piggy-env sends it.
func (w *world) defaultToken(pod *corev1.Pod) string {
	w.t.Helper()
	st, err := kubetest.RequestToken(context.Background(), w.cs, pod.Namespace, pod.Spec.ServiceAccountName, kubetest.TokenOptions{Pod: pod})
	if err != nil {
		w.t.Fatal(err)
	}
	return st.Token
}

// legacyAnswer is the answer to POST /secret.
type legacyAnswer struct {
	Status int
	Values map[string]string
	Text   string
}

// originalRequest calls POST /secret exactly as the original piggy-env
// does (piggy-env/main.go, requestSecrets), over TLS.
func (w *world) originalRequest(t testing.TB, token string, l originalLauncher) legacyAnswer {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"resources": "pods", "name": l.podName, "uid": l.uid, "signature": l.signature})
	req, err := http.NewRequest(http.MethodPost, "https://"+w.addrs["gateway"]+"/secret", bytes.NewBuffer(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Add("X-Token", token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.https.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	a := legacyAnswer{Status: resp.StatusCode, Text: string(data)}
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(data, &a.Values); err != nil {
			t.Fatalf("200 body %q is not the original's key/value object: %v", data, err)
		}
	}
	return a
}

// TestOriginalPiggyEnv plays pods the original Piggy webhook mutated,
// whose original piggy-env calls POST /secret at every container start,
// against the real broker, apiserver and AWS endpoint: refused (404) by
// default; with --legacy-secret-endpoint answered with the keys the
// container references, under the same authentication and authorisation as
// /v1/secrets, and counted and logged as deprecated.
func TestOriginalPiggyEnv(t *testing.T) {
	t.Run("off by default", func(t *testing.T) {
		w := newWorld(t, worldOptions{})
		ns := w.namespace("team-l-", "web")
		w.seed(ns+"/web", map[string]string{"db": secretValue("legacy-off")})
		pod, l := w.originalPod(ns, "web-1", "web", nil)
		if got := w.originalRequest(t, w.defaultToken(pod), l); got.Status != http.StatusNotFound || got.Values != nil {
			t.Errorf("POST /secret without the flag = %+v, want 404", got)
		}
	})

	w := newWorld(t, worldOptions{args: []string{"--legacy-secret-endpoint"}})
	ctx := t.Context()
	ns := w.namespace("team-l-", "web")
	db, apiKey, other := secretValue("legacy-db"), secretValue("legacy-api"), secretValue("legacy-other")
	w.seed(ns+"/web", map[string]string{"db": db, "api_key": apiKey, "other": other})
	foreign := "team-q-legacy/shared"
	w.seed(foreign, map[string]string{"db": secretValue("legacy-foreign"), "api_key": secretValue("legacy-foreign-api")})

	pod, l := w.originalPod(ns, "web-1", "web", nil)
	tok := w.defaultToken(pod)
	refused := func(t *testing.T, got legacyAnswer, status int, inText string) {
		t.Helper()
		if got.Status != status || got.Values != nil || !strings.Contains(got.Text, inText) {
			t.Errorf("answer = %+v, want HTTP %d with %q and no values", got, status, inText)
		}
		for _, v := range []string{db, apiKey, other} {
			if strings.Contains(got.Text, v) {
				t.Errorf("a refusal holds a secret value: %q", got.Text)
			}
		}
	}

	// Every refusal comes before the container's start is claimed, so the
	// launcher's own request below is still the first of its start.
	t.Run("a wrong uid is refused", func(t *testing.T) {
		wrong := l
		wrong.uid = podidentity.NewUID()
		refused(t, w.originalRequest(t, tok, wrong), http.StatusForbidden, "container UID matches no container")
	})
	t.Run("a wrong signature is refused", func(t *testing.T) {
		wrong := l
		wrong.signature = podidentity.Signature([]string{"/bin/sh", "-c", "env"})
		refused(t, w.originalRequest(t, tok, wrong), http.StatusForbidden, "command signature does not match")
	})
	t.Run("another pod's token is refused", func(t *testing.T) {
		pod2, l2 := w.originalPod(ns, "web-2", "web", nil)
		tok2 := w.defaultToken(pod2)
		// web-2's token naming web-1, and with web-1's container identity.
		refused(t, w.originalRequest(t, tok2, l), http.StatusForbidden, `names pod "web-1", but its token is bound to pod `+ns+"/web-2")
		borrowed := l
		borrowed.podName = l2.podName
		refused(t, w.originalRequest(t, tok2, borrowed), http.StatusForbidden, "container UID matches no container of pod "+ns+"/web-2")
	})
	t.Run("tokens that are not pod-bound API tokens are refused", func(t *testing.T) {
		unbound, err := kubetest.RequestToken(ctx, w.cs, ns, "web", kubetest.TokenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		refused(t, w.originalRequest(t, unbound.Token, l), http.StatusUnauthorized, "not bound to a pod")
		// This Piggy's projected token is for the broker, not the API server.
		refused(t, w.originalRequest(t, w.podToken(pod), l), http.StatusUnauthorized, "rejected by the Kubernetes API")
		refused(t, w.originalRequest(t, "", l), http.StatusUnauthorized, "X-Token")
	})
	t.Run("a signature planted in the annotation does not replace the spec's", func(t *testing.T) {
		pod3, l3 := w.originalPod(ns, "web-3", "web", nil)
		shell := podidentity.Signature([]string{"/bin/sh"})
		uids, _ := json.Marshal(map[string]string{l3.uid: shell})
		patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{podidentity.AnnotationKey: string(uids)}}})
		if _, err := w.cs.CoreV1().Pods(ns).Patch(ctx, pod3.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		planted := l3
		planted.signature = shell
		refused(t, w.originalRequest(t, w.defaultToken(pod3), planted), http.StatusForbidden, "command signature does not match")
	})

	t.Run("the launcher gets the keys its container references, and only those", func(t *testing.T) {
		got := w.originalRequest(t, tok, l)
		// "other" is in the secret, but no env value of the container
		// references it: the original webhook answered the whole secret.
		if diff := cmp.Diff(legacyAnswer{Status: http.StatusOK, Values: map[string]string{"db": db, "api_key": apiKey}, Text: got.Text}, got); diff != "" {
			t.Errorf("answer (-want +got):\n%s", diff)
		}
	})
	t.Run("a second request in the same start is refused", func(t *testing.T) {
		refused(t, w.originalRequest(t, tok, l), http.StatusForbidden, "already received its values for this start")
		// The kubelet reports the start the launcher was answered for,
		// then the container's restart.
		if w.restart(t, pod) == 0 {
			w.restart(t, pod)
		}
		if got := w.originalRequest(t, tok, l); got.Status != http.StatusOK || got.Values["db"] != db {
			t.Errorf("after a restart: %+v", got)
		}
	})
	t.Run("a name outside the policy is refused", func(t *testing.T) {
		podF, lF := w.originalPod(ns, "web-f", "web", map[string]string{"aws-secret-name": foreign})
		refused(t, w.originalRequest(t, w.defaultToken(podF), lF), http.StatusForbidden, "may not read")
	})

	t.Run("calls are counted and logged as deprecated", func(t *testing.T) {
		m := w.brokerMetrics(t)
		if n := metric(m, "piggy_secret_broker_legacy_requests_total", "outcome", "success"); n != 2 {
			t.Errorf("successful calls counted = %v, want 2", n)
		}
		// Refused by the broker: 2 container identities, 2 of another
		// pod, 2 tokens, the planted signature, the replay, the foreign
		// name. Invalid: the request without X-Token.
		if n := metric(m, "piggy_secret_broker_legacy_requests_total", "outcome", "refused"); n != 9 {
			t.Errorf("refused calls counted = %v, want 9", n)
		}
		if n := metric(m, "piggy_secret_broker_legacy_requests_total", "outcome", "invalid"); n != 1 {
			t.Errorf("invalid calls counted = %v, want 1", n)
		}
		// The same request metrics as /v1/secrets.
		if n := metric(m, "piggy_secret_broker_requests_total", "outcome", "success"); n != 2 {
			t.Errorf("piggy_secret_broker_requests_total{outcome=success} = %v, want 2", n)
		}
		w.proc.WaitForRecord(t, 5*time.Second, func(r map[string]any) bool {
			msg, _ := r["message"].(string)
			return r["level"] == "warn" && strings.HasPrefix(msg, "deprecated: a pod still runs the original Piggy's piggy-env") && r["namespace"] == ns
		})
		w.proc.WaitForRecord(t, 5*time.Second, func(r map[string]any) bool {
			return r["message"] == "Request from [sa="+ns+":web], [pod=web-1] was successful" && r["protocol"] == "original" && r["secret_name"] == ns+"/web"
		})
		if out := w.proc.Output(); strings.Contains(out, tok) || strings.Contains(out, db) {
			t.Error("the broker's log holds the token or a value")
		}
	})
}
