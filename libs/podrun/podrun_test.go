package podrun

import (
	"io"
	"os"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/piggysec/piggy/libs/kubetest"
)

func TestMapPath(t *testing.T) {
	mounts := []mount{
		{path: "/var/run/secrets/piggysec.com/serviceaccount", host: "/h/token"},
		{path: "/piggy", host: "/h/piggy"},
	}
	tests := map[string]string{
		"/piggy/piggy-env": "/h/piggy/piggy-env",
		"/piggy":           "/h/piggy",
		"/piggyback":       "/piggyback",
		"/var/run/secrets/piggysec.com/serviceaccount/token": "/h/token/token",
		"piggy:KEY": "piggy:KEY",
		"":          "",
	}
	for in, want := range tests {
		if got := mapPath(in, mounts); got != want {
			t.Errorf("mapPath(%q) = %q, want %q", in, got, want)
		}
	}
}

var kube = kubetest.NewShared(kubetest.DefaultOptions(os.Getenv))

func TestMain(m *testing.M) { os.Exit(kube.Run(m)) }

// Each run of a container is reported as a kubelet reports a start: a new
// container ID, running, then terminated with its exit code, and one more
// restart when it ran before.
func TestRunReportsContainerStatus(t *testing.T) {
	ctx := t.Context()
	cs := kube.Cluster(t).Clientset()
	ns, err := kubetest.CreateNamespace(ctx, cs, "podrun-")
	if err != nil {
		t.Fatal(err)
	}
	pod, err := kubetest.CreatePod(ctx, cs, ns.Name, "app", "", func(p *corev1.Pod) {
		p.Spec.Containers[0].Command = []string{"sh", "-c", "exit 3"}
	})
	if err != nil {
		t.Fatal(err)
	}
	r := &Runner{Client: cs, Pod: pod, Root: t.TempDir(), Path: "/usr/bin:/bin", Stdout: io.Discard, Stderr: io.Discard}
	var ids []string
	for run := range 2 {
		res, err := r.Run(ctx, "main")
		if err != nil || res.ExitCode != 3 {
			t.Fatalf("run %d: %+v, %v", run, res, err)
		}
		got, err := cs.CoreV1().Pods(ns.Name).Get(ctx, "app", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Status.ContainerStatuses) != 1 {
			t.Fatalf("statuses %+v", got.Status.ContainerStatuses)
		}
		st := got.Status.ContainerStatuses[0]
		if st.Name != "main" || st.RestartCount != int32(run) || st.State.Terminated == nil || st.State.Terminated.ExitCode != 3 || st.ContainerID == "" {
			t.Errorf("run %d: status %+v", run, st)
		}
		ids = append(ids, st.ContainerID)
	}
	if ids[0] == ids[1] {
		t.Errorf("both runs have container ID %s", ids[0])
	}
}
