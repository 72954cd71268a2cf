// Package kubetest runs a real Kubernetes API (kube-apiserver backed by etcd)
// on loopback for tests.
//
// There is no kubelet, scheduler or controller manager: objects are stored and
// served, admission (including webhooks) and authentication run for real, but
// Pods stay Pending and no controller fills in objects behind your back. The
// one controller job done by hand is the "default" ServiceAccount, without
// which the ServiceAccount admission plugin rejects Pods: Start creates it in
// the "default" namespace and CreateNamespace in each namespace it creates.
// Namespaces created otherwise need their own (CreateServiceAccount).
//
// # Binaries
//
// kube-apiserver (from k8s.io/kubernetes) and etcd (from
// go.etcd.io/etcd/server/v3) are built from source through the Go module
// proxy the first time they are needed, once per version, and cached:
//
//	<CacheDir>/kubernetes-v1.37.2-2/kube-apiserver   (the suffix is the build recipe's revision)
//	<CacheDir>/etcd-v3.7.3/etcd
//
// where CacheDir defaults to <os.UserCacheDir()>/piggy/kube. A cold build
// takes several minutes (kube-apiserver is about 5 min on 2 cores); progress
// is printed while it runs. Test binaries of different packages that start at
// the same time coordinate through a file lock, so each binary is built once.
// Because a cold build can take a large part of go test's default 10 minute
// timeout, CI should warm the cache first:
//
//	go run github.com/piggysec/piggy/libs/kubetest/cmd/kubetest build
//
// Environment overrides, read only by DefaultOptions:
//
//	PIGGY_KUBE_CACHE_DIR  cache root instead of <os.UserCacheDir()>/piggy/kube
//	KUBEBUILDER_ASSETS    directory holding prebuilt kube-apiserver and etcd;
//	                      nothing is built when it is set
//
// # Use
//
// One cluster per test:
//
//	func TestWebhook(t *testing.T) {
//		c := kubetest.ForTest(t) // skips under -short
//		cs := c.Clientset()
//		...
//	}
//
// One cluster per package, started lazily by the first test that asks for it
// and stopped after all tests ran:
//
//	var kube = kubetest.NewShared(kubetest.DefaultOptions(os.Getenv))
//
//	func TestMain(m *testing.M) { os.Exit(kube.Run(m)) }
//
//	func TestA(t *testing.T) {
//		c := kube.Cluster(t) // skips under -short
//		ns, err := kubetest.CreateNamespace(t.Context(), c.Clientset(), "a-")
//		...
//	}
//
// Tests sharing a cluster should work in their own namespaces (a name ending
// in "-" makes CreateNamespace generate a unique one).
//
// Processes are started in their own process group and, on Linux, are killed
// by the kernel when the test binary dies (PR_SET_PDEATHSIG), so an aborted
// test run leaves nothing behind. The package needs a Unix system.
package kubetest
