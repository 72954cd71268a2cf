package podcheck

import (
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// events records PodEvents.
type events struct {
	mu               sync.Mutex
	changed, deleted map[string]int
}

func (e *events) PodChanged(uid string) { e.mu.Lock(); e.changed[uid]++; e.mu.Unlock() }
func (e *events) PodDeleted(uid string) { e.mu.Lock(); e.deleted[uid]++; e.mu.Unlock() }
func (e *events) count(m map[string]int, uid string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return m[uid]
}

// The informer keeps the restart counts of launched containers and tells
// about changes and deletions of pods with one.
func TestRestartCountsAndPodEvents(t *testing.T) {
	launchedPod := pod("web-1", "pod-uid-1", "web", identities())
	launchedPod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", RestartCount: 2, ContainerID: "containerd://abc"}, {Name: "other", RestartCount: 9}}
	plain := plainPod("plain", "pod-uid-2", "web", nil)
	pods, cs := startPods(t, true)
	ev := &events{changed: map[string]int{}, deleted: map[string]int{}}
	if err := pods.Watch(ev); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*corev1.Pod{launchedPod, plain} {
		if _, err := cs.CoreV1().Pods(p.Namespace).Create(t.Context(), p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool { return ev.count(ev.changed, "pod-uid-1") > 0 })
	got, err := pods.Pod(t.Context(), "team-a", "web-1", "pod-uid-1")
	if err != nil {
		t.Fatal(err)
	}
	if n := RestartCount(got, "app"); n != 2 || len(got.Status.ContainerStatuses) != 1 || got.Status.ContainerStatuses[0].ContainerID != "" {
		t.Errorf("cached statuses %+v, restart count %d", got.Status.ContainerStatuses, n)
	}
	if n := RestartCount(got, "job"); n != 0 {
		t.Errorf("restart count without a status = %d", n)
	}
	launchedPod.Status.ContainerStatuses[0].RestartCount = 3
	if _, err := cs.CoreV1().Pods("team-a").UpdateStatus(t.Context(), launchedPod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		p, err := pods.Pod(t.Context(), "team-a", "web-1", "pod-uid-1")
		return err == nil && RestartCount(p, "app") == 3
	})
	// The plain pod goes first: its events, if any, come before the last.
	for _, p := range []*corev1.Pod{plain, launchedPod} {
		if err := cs.CoreV1().Pods(p.Namespace).Delete(t.Context(), p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool { return ev.count(ev.deleted, "pod-uid-1") == 1 })
	if ev.count(ev.changed, "pod-uid-2")+ev.count(ev.deleted, "pod-uid-2") != 0 {
		t.Error("events for a pod without a launched container")
	}
}

func TestWatchNeedsTheInformer(t *testing.T) {
	pods, _ := startPods(t, false)
	if err := pods.Watch(&events{}); err == nil {
		t.Error("Watch without an informer succeeded")
	}
}
