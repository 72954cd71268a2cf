package mutate

import (
	"encoding/json"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/piggysec/piggy/libs/podidentity"
)

// originalPodJSON is a pod as the original webhook (piggy-webhooks 0.7.x,
// mutate/pod.go) left it in proxy mode: its install container, volume,
// launched container and piggy-uid annotation {uid: signature}.
func originalPodJSON(t *testing.T) string {
	t.Helper()
	uids, _ := json.Marshal(map[string]string{"0c8a3c1e5b2d4f6a8b9c0d1e2f3a4b5c": podidentity.Signature([]string{"/app/server", "--port=8080"})})
	return `{"metadata": {"name": "web-1", "annotations": {
		"piggysec.com/aws-secret-name": "myapp/sample/production",
		"piggysec.com/aws-region": "ap-southeast-1",
		"piggysec.com/piggy-address": "https://piggy-webhooks.piggy-webhooks.svc.cluster.local",
		"piggysec.com/piggy-uid": ` + string(mustMarshal(t, string(uids))) + `}},
	"spec": {
		"volumes": [{"name": "piggy-env", "emptyDir": {"medium": "Memory"}}],
		"initContainers": [{"name": "install-piggy-env", "image": "ghcr.io/kongz/piggy-env:0.7.0", "imagePullPolicy": "Always",
			"args": ["install", "/piggy"], "volumeMounts": [{"name": "piggy-env", "mountPath": "/piggy/"}],
			"securityContext": {"allowPrivilegeEscalation": false},
			"resources": {"limits": {"cpu": "200m", "memory": "64Mi"}, "requests": {"cpu": "50m", "memory": "64Mi"}}}],
		"containers": [{"name": "main", "image": "app", "command": ["/piggy/piggy-env"], "args": ["--", "/app/server", "--port=8080"],
			"env": [
				{"name": "DB_PASSWORD", "value": "piggy:db"},
				{"name": "PIGGY_AWS_SECRET_NAME", "value": "myapp/sample/production"},
				{"name": "PIGGY_AWS_REGION", "value": "ap-southeast-1"},
				{"name": "PIGGY_ADDRESS", "value": "https://piggy-webhooks.piggy-webhooks.svc.cluster.local"},
				{"name": "PIGGY_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
				{"name": "PIGGY_POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
				{"name": "PIGGY_UID", "value": "0c8a3c1e5b2d4f6a8b9c0d1e2f3a4b5c"}],
			"volumeMounts": [{"name": "piggy-env", "mountPath": "/piggy/"}]}]}}`
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestOriginalMutationAdmittedUnchanged: a pod the original webhook
// mutated is neither mutated again nor refused, and its piggy-uid is not
// overwritten: no patch and a warning naming the original webhook. Pods
// that only look partly like it keep this webhook's rules.
func TestOriginalMutationAdmittedUnchanged(t *testing.T) {
	m := newTestMutator(Config{}, &fakeResolver{}, fakeEnv{})
	original := func(t *testing.T, change func(*corev1.Pod)) *corev1.Pod {
		pod, _ := podJSON(t, originalPodJSON(t))
		if change != nil {
			change(pod)
		}
		return pod
	}
	unchanged := func(t *testing.T, pod *corev1.Pod) {
		t.Helper()
		before := pod.DeepCopy()
		out := m.Mutate(t.Context(), pod, "shop")
		if out.Denied != "" || len(out.Patch) != 0 || len(out.Mutated) != 0 {
			t.Fatalf("outcome = %+v, want the pod admitted unchanged", out)
		}
		if len(out.Warnings) != 1 || !strings.Contains(out.Warnings[0], "mutated by the original Piggy webhook") {
			t.Errorf("warnings = %q, want one naming the original webhook", out.Warnings)
		}
		if pod.Annotations[podidentity.AnnotationKey] != before.Annotations[podidentity.AnnotationKey] {
			t.Error("the pod's piggy-uid changed")
		}
	}
	t.Run("proxy mode, as the original left it", func(t *testing.T) {
		// Its piggy-address is not in this webhook's allowlist: the pod
		// is not this webhook's to check.
		unchanged(t, original(t, nil))
	})
	t.Run("without the annotation (a copy of the spec)", func(t *testing.T) {
		unchanged(t, original(t, func(p *corev1.Pod) { delete(p.Annotations, podidentity.AnnotationKey) }))
	})
	t.Run("standalone mode", func(t *testing.T) {
		unchanged(t, original(t, func(p *corev1.Pod) {
			c := &p.Spec.Containers[0]
			c.Env = append(c.Env[:3:3], corev1.EnvVar{Name: "PIGGY_STANDALONE", Value: "true"})
			p.Annotations["piggysec.com/standalone"] = "true"
		}))
	})

	denied := func(t *testing.T, pod *corev1.Pod, inMessage string) {
		t.Helper()
		out := m.Mutate(t.Context(), pod, "shop")
		if !strings.Contains(out.Denied, inMessage) || len(out.Patch) != 0 {
			t.Errorf("outcome = %+v, want denied with %q", out, inMessage)
		}
		for _, w := range out.Warnings {
			if strings.Contains(w, "original Piggy webhook") {
				t.Errorf("taken for the original's output: %q", w)
			}
		}
	}
	t.Run("this webhook's piggy-uid format is not the original's", func(t *testing.T) {
		denied(t, original(t, func(p *corev1.Pod) {
			p.Annotations[podidentity.AnnotationKey] = podidentity.Identities{"main": {UID: "0c8a3c1e5b2d4f6a8b9c0d1e2f3a4b5c", Signature: "x"}}.Format()
		}), "is reserved for Piggy")
	})
	t.Run("a container with PIGGY_GRANT was admitted by this webhook", func(t *testing.T) {
		denied(t, original(t, func(p *corev1.Pod) {
			p.Spec.Containers[0].Env = append(p.Spec.Containers[0].Env, corev1.EnvVar{Name: "PIGGY_GRANT", Value: "{}"})
		}), "is reserved for Piggy")
	})
	t.Run("no install container: a hand-written launcher", func(t *testing.T) {
		denied(t, original(t, func(p *corev1.Pod) { p.Spec.InitContainers = nil }), "is reserved for Piggy")
	})
	t.Run("an original annotation on a pod nobody launched", func(t *testing.T) {
		denied(t, original(t, func(p *corev1.Pod) {
			c := &p.Spec.Containers[0]
			c.Command, c.Args = []string{"/app/server"}, []string{"--port=8080"}
		}), "is reserved for Piggy")
	})
}
