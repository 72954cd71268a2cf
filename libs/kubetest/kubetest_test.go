package kubetest_test

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/piggysec/piggy/libs/kubetest"
)

// kube is the package's shared cluster (see TestShared); the other tests
// start their own.
var kube = kubetest.NewShared(kubetest.DefaultOptions(os.Getenv))

func TestMain(m *testing.M) { os.Exit(kube.Run(m)) }

// TestShared checks that tests of a package get one cluster from Shared.
func TestShared(t *testing.T) {
	var got []*kubetest.Cluster
	for _, name := range []string{"first", "second"} {
		t.Run(name, func(t *testing.T) {
			c := kube.Cluster(t)
			if !c.Running() {
				t.Fatal("shared cluster not running")
			}
			if _, err := kubetest.CreateNamespace(t.Context(), c.Clientset(), name+"-"); err != nil {
				t.Fatal(err)
			}
			got = append(got, c)
		})
	}
	if len(got) == 2 && got[0] != got[1] {
		t.Error("Shared.Cluster started two clusters")
	}
}

// TestSmoke drives a real kube-apiserver through the calls Piggy relies on:
// namespaces, service accounts, Pods, TokenRequest bound to a Pod and
// TokenReview with audiences.
func TestSmoke(t *testing.T) {
	start := time.Now()
	c := kubetest.ForTest(t)
	t.Logf("cluster ready in %s at %s", time.Since(start).Round(time.Millisecond), c.Host())
	ctx := t.Context()
	cs := c.Clientset()

	// The binary carries its release version, as clients such as helm check it.
	if v, err := cs.Discovery().ServerVersion(); err != nil || v.GitVersion != kubetest.DefaultKubernetesVersion {
		t.Errorf("server version = %v, %v; want %s", v, err, kubetest.DefaultKubernetesVersion)
	}

	ns, err := kubetest.CreateNamespace(ctx, cs, "smoke-")
	if err != nil {
		t.Fatal(err)
	}
	sa, err := kubetest.CreateServiceAccount(ctx, cs, ns.Name, "workload")
	if err != nil {
		t.Fatal(err)
	}
	pod, err := kubetest.CreatePod(ctx, cs, ns.Name, "app-", sa.Name)
	if err != nil {
		t.Fatal(err)
	}
	other, err := kubetest.CreatePod(ctx, cs, ns.Name, "other-", sa.Name)
	if err != nil {
		t.Fatal(err)
	}
	if pod.UID == "" || pod.Name == other.Name {
		t.Fatalf("pods not stored as expected: %q (uid %q), %q", pod.Name, pod.UID, other.Name)
	}

	token, err := kubetest.RequestPodToken(ctx, cs, pod, "piggy")
	if err != nil {
		t.Fatal(err)
	}
	otherToken, err := kubetest.RequestPodToken(ctx, cs, other, "piggy")
	if err != nil {
		t.Fatal(err)
	}

	wantUser := "system:serviceaccount:" + ns.Name + ":" + sa.Name
	for _, tc := range []struct {
		name  string
		token string
		pod   *corev1.Pod
	}{
		{name: "own pod", token: token, pod: pod},
		{name: "other pod", token: otherToken, pod: other},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, err := kubetest.ReviewToken(t.Context(), cs, tc.token, "piggy")
			if err != nil {
				t.Fatal(err)
			}
			if !status.Authenticated {
				t.Fatalf("not authenticated: %q", status.Error)
			}
			if diff := cmp.Diff([]string{"piggy"}, status.Audiences); diff != "" {
				t.Errorf("audiences (-want +got):\n%s", diff)
			}
			if status.User.Username != wantUser {
				t.Errorf("username = %q, want %q", status.User.Username, wantUser)
			}
			want := map[string]authenticationv1.ExtraValue{
				"authentication.kubernetes.io/pod-name": {tc.pod.Name},
				"authentication.kubernetes.io/pod-uid":  {string(tc.pod.UID)},
			}
			got := map[string]authenticationv1.ExtraValue{}
			for k := range want {
				got[k] = status.User.Extra[k]
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("pod binding in user.extra (-want +got):\n%s\nall extra: %v", diff, status.User.Extra)
			}
		})
	}

	t.Run("wrong audience", func(t *testing.T) {
		status, err := kubetest.ReviewToken(t.Context(), cs, token, "not-piggy")
		if err != nil {
			t.Fatal(err)
		}
		if status.Authenticated {
			t.Fatalf("authenticated as %q with the wrong audience", status.User.Username)
		}
	})

	t.Run("deleted pod", func(t *testing.T) {
		if err := cs.CoreV1().Pods(ns.Name).Delete(t.Context(), other.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		// The apiserver caches successful token authentications for 10s
		// (kube-apiserver's token success cache), so revocation by Pod
		// deletion is eventual.
		deleted := time.Now()
		for {
			status, err := kubetest.ReviewToken(t.Context(), cs, otherToken, "piggy")
			if err != nil {
				t.Fatal(err)
			}
			if !status.Authenticated {
				t.Logf("token rejected %s after the pod was deleted: %q", time.Since(deleted).Round(100*time.Millisecond), status.Error)
				return
			}
			if time.Since(deleted) > 30*time.Second {
				t.Fatalf("token of a deleted pod still authenticates as %q after 30s", status.User.Username)
			}
			time.Sleep(250 * time.Millisecond)
		}
	})

	t.Run("default service account", func(t *testing.T) {
		p, err := kubetest.CreatePod(t.Context(), cs, ns.Name, "defaultsa-", "")
		if err != nil {
			t.Fatal(err)
		}
		if p.Spec.ServiceAccountName != "default" {
			t.Errorf("serviceAccountName = %q, want default", p.Spec.ServiceAccountName)
		}
	})

	t.Run("default namespace", func(t *testing.T) {
		p, err := kubetest.CreatePod(t.Context(), cs, "default", "smoke-", "")
		if err != nil {
			t.Fatal(err)
		}
		if err := cs.CoreV1().Pods("default").Delete(t.Context(), p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("kubeconfig", func(t *testing.T) {
		cfg, err := clientcmd.BuildConfigFromFlags("", c.KubeconfigPath())
		if err != nil {
			t.Fatal(err)
		}
		kcs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kcs.CoreV1().Namespaces().Get(t.Context(), ns.Name, metav1.GetOptions{}); err != nil {
			t.Fatalf("get namespace through the kubeconfig: %v", err)
		}
	})

	t.Run("logs", func(t *testing.T) {
		for _, p := range []string{c.APIServerLog(), c.EtcdLog()} {
			if _, err := os.Stat(p); err != nil {
				t.Error(err)
			}
		}
		if !strings.HasPrefix(c.Host(), "https://127.0.0.1:") {
			t.Errorf("host = %q", c.Host())
		}
	})
}

// TestStop checks that Stop ends both processes and removes the directory.
func TestStop(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a real kube-apiserver")
	}
	c, err := kubetest.Start(t.Context(), kubetest.DefaultOptions(os.Getenv))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop() })
	if !c.Running() {
		t.Fatal("cluster not running after Start")
	}
	stopStart := time.Now()
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("stopped in %s", time.Since(stopStart).Round(time.Millisecond))
	if c.Running() {
		t.Error("processes still running after Stop")
	}
	if _, err := os.Stat(c.Dir()); !os.IsNotExist(err) {
		t.Errorf("directory %s still there after Stop: %v", c.Dir(), err)
	}
	if err := c.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}
