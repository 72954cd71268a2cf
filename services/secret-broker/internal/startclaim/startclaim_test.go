package startclaim

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/piggysec/piggy/services/secret-broker/internal/fault"
)

const ns = "piggy-system"

// restarts is a container's restart count as the informer sees it.
type restarts struct{ n atomic.Int32 }

func (r *restarts) current(context.Context, Start) (int32, error) { return r.n.Load(), nil }

func newClaims(t *testing.T, wait time.Duration) (*Claims, *fake.Clientset, *restarts) {
	t.Helper()
	cs := fake.NewClientset()
	r := &restarts{}
	c := New(cs.CoordinationV1().Leases(ns), Options{Wait: wait, Current: r.current})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return c, cs, r
}

var start = Start{Namespace: "team-a", PodName: "web-1", PodUID: "5f0c1d2e-0000-4000-8000-000000000001", Container: "main"}

const (
	idA = "0123456789abcdef0123456789abcdef"
	idB = "fedcba9876543210fedcba9876543210"
)

func reason(err error) string { return fault.ReasonOf(err) }

func TestOncePerStart(t *testing.T) {
	ctx := t.Context()
	c, cs, _ := newClaims(t, 10*time.Millisecond)
	if err := c.Claim(ctx, start, idA); err != nil {
		t.Fatalf("first fetch: %v", err)
	}
	if err := c.Claim(ctx, start, idA); err != nil {
		t.Errorf("retry with the same fetch id: %v", err)
	}
	err := c.Claim(ctx, start, idB)
	if reason(err) != "already_fetched" || fault.KindOf(err) != fault.PermissionDenied {
		t.Fatalf("another fetch id for the same start = %v, want already_fetched", err)
	}
	msg := fault.As(err).Message
	if !strings.Contains(msg, `container "main" of pod team-a/web-1 already received its values for this start`) || !strings.Contains(msg, "next start") {
		t.Errorf("message %q", msg)
	}
	// The Lease records a hash of the fetch id, never the id.
	lease, err := cs.CoordinationV1().Leases(ns).Get(ctx, LeaseName(start.PodUID, start.Container, 0), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if h := *lease.Spec.HolderIdentity; strings.Contains(h, idA) || h == "" {
		t.Errorf("holder %q", h)
	}
	if lease.Labels[PodLabel] != PodHash(start.PodUID) || strings.Contains(lease.Name, start.PodUID) {
		t.Errorf("lease %s labels %v", lease.Name, lease.Labels)
	}
	// Another container of the pod, and another pod, have starts of their own.
	other := start
	other.Container = "sidecar"
	if err := c.Claim(ctx, other, idB); err != nil {
		t.Errorf("another container: %v", err)
	}
	other = start
	other.PodUID = "5f0c1d2e-0000-4000-8000-000000000002"
	if err := c.Claim(ctx, other, idB); err != nil {
		t.Errorf("another pod: %v", err)
	}
}

// A broker replica that has not seen the claim finds it in the API.
func TestClaimsAreSharedByReplicas(t *testing.T) {
	ctx := t.Context()
	c, cs, r := newClaims(t, 10*time.Millisecond)
	replica := New(cs.CoordinationV1().Leases(ns), Options{Wait: 10 * time.Millisecond, Current: r.current})
	if err := c.Claim(ctx, start, idA); err != nil {
		t.Fatal(err)
	}
	if err := replica.Claim(ctx, start, idA); err != nil {
		t.Errorf("retry on another replica: %v", err)
	}
	if err := replica.Claim(ctx, start, idB); reason(err) != "already_fetched" {
		t.Errorf("replay on another replica = %v", err)
	}
}

// The kubelet reports the restart after the new start asked: the request
// waits for the informer and is served on the new start; the claim of the
// old start is removed.
func TestRestartReportedLate(t *testing.T) {
	ctx := t.Context()
	c, cs, r := newClaims(t, time.Minute)
	if err := c.Claim(ctx, start, idA); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- c.Claim(ctx, start, idB) }()
	// Wake the waiter until it has seen the change (it may subscribe after
	// the first wake).
	r.n.Store(1)
	var err error
	if werr := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		c.PodChanged(start.PodUID)
		select {
		case err = <-errc:
			return true, nil
		default:
			return false, nil
		}
	}); werr != nil {
		t.Fatal(werr)
	}
	if err != nil {
		t.Fatalf("fetch of the new start: %v", err)
	}
	next := start
	next.RestartCount = 1
	short, cancel := context.WithTimeout(ctx, 2*time.Second) // ends the wait for another restart
	defer cancel()
	if err := c.Claim(short, next, idA); reason(err) != "already_fetched" {
		t.Errorf("the old fetch id on the new start = %v", err)
	}
	if werr := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := cs.CoordinationV1().Leases(ns).Get(ctx, LeaseName(start.PodUID, start.Container, 0), metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	}); werr != nil {
		t.Errorf("the claim of restart 0 is still there: %v", werr)
	}
}

func TestRequestsWithoutFetchID(t *testing.T) {
	ctx := t.Context()
	c, _, _ := newClaims(t, 10*time.Millisecond)
	if err := c.Claim(ctx, start, ""); err != nil {
		t.Fatalf("first fetch of an old launcher: %v", err)
	}
	for _, id := range []string{"", idA} {
		err := c.Claim(ctx, start, id)
		if reason(err) != "already_fetched" {
			t.Errorf("fetch %q after an anonymous one = %v", id, err)
		}
		if id == "" && !strings.Contains(fault.As(err).Message, "carries no fetch id") {
			t.Errorf("message %q", fault.As(err).Message)
		}
	}
}

func TestRefusals(t *testing.T) {
	ctx := t.Context()
	c, _, _ := newClaims(t, 10*time.Millisecond)
	for _, id := range []string{"short", strings.ToUpper(idA), idA + "00", "g123456789abcdef0123456789abcdef"} {
		err := c.Claim(ctx, start, id)
		if fault.KindOf(err) != fault.InvalidArgument || strings.Contains(err.Error(), id) {
			t.Errorf("fetch id %q: %v", id, err)
		}
	}
	noContainer := start
	noContainer.Container = ""
	if err := c.Claim(ctx, noContainer, idA); reason(err) != "start_unknown" {
		t.Errorf("no container = %v", err)
	}
}

// A request whose deadline is nearer than the wait is answered before it.
func TestWaitEndsBeforeTheRequest(t *testing.T) {
	c, _, _ := newClaims(t, time.Hour)
	if err := c.Claim(t.Context(), start, idA); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if err := c.Claim(ctx, start, idB); reason(err) != "already_fetched" {
		t.Errorf("replay = %v, want already_fetched within the request's deadline", err)
	}
}
