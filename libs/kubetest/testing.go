package kubetest

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"
)

// deadlineMargin is left between a start bounded by a test's deadline and
// the deadline itself, so the test fails with the reason instead of go
// test's timeout panic.
const deadlineMargin = 30 * time.Second

// ForTest starts a cluster with DefaultOptions(os.Getenv) and stops it when
// t's test ends. See ForTestWithOptions.
func ForTest(t testing.TB) *Cluster {
	t.Helper()
	return ForTestWithOptions(t, DefaultOptions(os.Getenv))
}

// ForTestWithOptions starts a cluster for t and registers its Stop with
// t.Cleanup. It skips t under -short (a real apiserver is never short) and
// fails t, never skips it, when the binaries cannot be built or the cluster
// does not start. Build progress also goes to t.Logf. When t has failed, the
// cluster's directory (logs, kubeconfig) is kept and its path logged.
func ForTestWithOptions(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("kubetest: needs a real kube-apiserver; skipped with -short")
	}
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	ctx, cancel := startContext(t)
	defer cancel()
	c, err := Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	c.opts.Logf = nil // t.Logf must not outlive the test
	t.Cleanup(func() {
		if t.Failed() {
			c.opts.KeepDir = true
			t.Logf("kubetest: test failed; cluster directory kept: %s (kube-apiserver.log, etcd.log, kubeconfig)", c.Dir())
		}
		if err := c.Stop(); err != nil {
			t.Errorf("kubetest: stop: %v", err)
		}
	})
	return c
}

// startContext bounds a start by t's context and, when t has a deadline,
// by that deadline minus deadlineMargin.
func startContext(t testing.TB) (context.Context, context.CancelFunc) {
	ctx := t.Context()
	if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if deadline, ok := d.Deadline(); ok {
			return context.WithDeadline(ctx, deadline.Add(-deadlineMargin))
		}
	}
	return context.WithCancel(ctx)
}

// Shared is one cluster shared by the tests of a package. The first call to
// Cluster starts it; Run stops it after all tests. Use it from TestMain:
//
//	var kube = kubetest.NewShared(kubetest.DefaultOptions(os.Getenv))
//
//	func TestMain(m *testing.M) { os.Exit(kube.Run(m)) }
//
//	func TestX(t *testing.T) { c := kube.Cluster(t); ... }
//
// Tests that share a cluster share its state: give each its own namespace.
type Shared struct {
	opts Options

	mu      sync.Mutex
	started bool
	cluster *Cluster
	err     error
}

// NewShared returns a Shared that will start its cluster with opts.
func NewShared(opts Options) *Shared {
	return &Shared{opts: opts}
}

// Cluster returns the shared cluster, starting it on first use. Like
// ForTest it skips t under -short and fails t if the cluster cannot start;
// a failed start is not retried, every later caller fails with the same
// error.
func (s *Shared) Cluster(t testing.TB) *Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("kubetest: needs a real kube-apiserver; skipped with -short")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.started {
		s.started = true
		opts := s.opts
		if opts.Logf == nil {
			opts.Logf = t.Logf
		}
		ctx, cancel := startContext(t)
		s.cluster, s.err = Start(ctx, opts)
		cancel()
		if s.cluster != nil {
			s.cluster.opts.Logf = nil
		}
	}
	if s.err != nil {
		t.Fatalf("kubetest: shared cluster: %v", s.err)
	}
	return s.cluster
}

// Run runs the package's tests with m.Run, then stops the cluster if a test
// started it, and returns the exit code for os.Exit.
func (s *Shared) Run(m *testing.M) int {
	code := m.Run()
	if err := s.Stop(); err != nil {
		os.Stderr.WriteString("kubetest: stop shared cluster: " + err.Error() + "\n")
		if code == 0 {
			code = 1
		}
	}
	return code
}

// Stop stops the cluster if it was started. Run calls it.
func (s *Shared) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cluster == nil {
		return nil
	}
	return s.cluster.Stop()
}
