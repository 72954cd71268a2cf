package podcheck

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/piggysec/piggy/libs/podidentity"
	"github.com/piggysec/piggy/services/secret-broker/internal/fault"
)

func startPods(t *testing.T, informer bool, objs ...*corev1.Pod) (*Pods, *fake.Clientset) {
	t.Helper()
	cs := fake.NewClientset()
	for _, p := range objs {
		if _, err := cs.CoreV1().Pods(p.Namespace).Create(t.Context(), p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	p, err := NewPods(cs, PodsOptions{Informer: informer})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Start: %v", err)
		}
	})
	if informer {
		waitFor(t, p.Synced)
	}
	return p, cs
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func fullPod() *corev1.Pod {
	p := pod("web-1", "pod-uid-1", "web", identities())
	p.Annotations["unrelated"] = "x"
	p.Spec.Containers = []corev1.Container{{Name: "app", Image: "app", Env: []corev1.EnvVar{{Name: "DB", Value: "piggy:db"}}}}
	return p
}

func TestPodsInformerAndFallback(t *testing.T) {
	for _, informer := range []bool{true, false} {
		name := map[bool]string{true: "informer", false: "api only"}[informer]
		t.Run(name, func(t *testing.T) {
			pods, cs := startPods(t, informer, fullPod())
			got, err := pods.Pod(t.Context(), "team-a", "web-1", "pod-uid-1")
			if err != nil || got.UID != "pod-uid-1" || got.Spec.ServiceAccountName != "web" || got.Annotations[podidentity.AnnotationKey] == "" {
				t.Fatalf("Pod = %+v, %v", got, err)
			}
			if informer && (len(got.Spec.Containers) != 0 || got.Annotations["unrelated"] != "") {
				t.Errorf("cached pod is not trimmed: %+v", got)
			}
			// An unknown UID goes to the API, which has the real pod: the
			// caller then sees the UID differ.
			got, err = pods.Pod(t.Context(), "team-a", "web-1", "pod-uid-0")
			if err != nil || got.UID != "pod-uid-1" {
				t.Errorf("Pod with another UID = %v, %v", got, err)
			}
			if list, err := pods.PodsWithContainerUID(t.Context(), "team-a", uidApp); err != nil || len(list) != 1 {
				t.Errorf("PodsWithContainerUID = %v, %v", list, err)
			}
			if list, err := pods.PodsWithContainerUID(t.Context(), "team-b", uidApp); err != nil || len(list) != 0 {
				t.Errorf("PodsWithContainerUID in another namespace = %v, %v", list, err)
			}
			full, err := pods.GetPod(t.Context(), "team-a", "web-1")
			if err != nil || len(full.Spec.Containers) != 1 {
				t.Errorf("GetPod = %+v, %v", full, err)
			}

			if err := cs.CoreV1().Pods("team-a").Delete(t.Context(), "web-1", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			waitFor(t, func() bool {
				_, err := pods.Pod(t.Context(), "team-a", "web-1", "pod-uid-1")
				return fault.ReasonOf(err) == "pod_not_found" && fault.KindOf(err) == fault.PermissionDenied
			})
			if _, err := pods.GetPod(t.Context(), "team-a", "web-1"); fault.KindOf(err) != fault.NotFound {
				t.Errorf("GetPod of a deleted pod = %v, want NotFound", err)
			}
		})
	}
}
