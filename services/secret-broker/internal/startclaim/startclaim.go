// Package startclaim answers a container once per container start.
//
// The pod's projected token stays mounted, and refreshed, after piggy-env
// has exec'd the application, so the application, a later `kubectl exec`
// or an attacker with code execution in the container could otherwise ask
// the broker for the values again at any time. The broker therefore ties a
// request to the container's current start as the kubelet reports it in the
// pod status: (pod UID, container name, restartCount of that container's
// status; 0 before the kubelet reports any status).
//
// # Claims
//
// The first request for a start claims it with a coordination.k8s.io/v1
// Lease in the broker's own namespace, so that every broker replica sees
// the same claim:
//
//   - name: "piggy-start-" and a hash of (pod UID, container, restartCount);
//   - spec.holderIdentity: a hash of the request's fetch id (never the id
//     itself). piggy-env makes one random fetch id per process and sends it
//     with every attempt of its request, so a retry of a request that never
//     got an answer is the same fetch and is answered;
//   - label piggysec.com/start-claim-pod: a hash of the pod UID, by which the
//     claims of a deleted pod are removed (one DeleteCollection).
//
// Create succeeds: the request is served. The Lease exists with the same
// holder: served (a retry). Another holder: the container may have restarted
// while the kubelet's status update is still on its way, so the request waits
// (at most Options.Wait) for the pod informer to report another restartCount
// for the container and is evaluated again on that start; otherwise it is
// refused with PermissionDenied, reason already_fetched. The refusal names
// only the caller's own pod and container.
//
// A request without a fetch id (a piggy-env older than this package) is its
// own holder: the first such request of a start is served, any other one,
// its own retries included, is refused. Omitting the id therefore never
// lets a replay through.
//
// Claims are removed when the informer sees the pod deleted (every replica
// does this; NotFound and an empty collection are fine), and the claim of
// restartCount n-1 when the claim of n is created. Each replica remembers
// the claims it has seen for a minute, so a retry or a replay costs no API
// call while it does.
//
// # Rotation (not implemented)
//
// Opt-in rotation will need exactly one more fetch in a start, after a
// version the container was given has changed. The claim is where that
// would be recorded: the Lease would also carry the version served (an
// annotation with the secret's version id, or its hash) and a count of
// re-fetches; a request with another fetch id for the same start would be
// answered once, with an update of the Lease conditioned on its
// resourceVersion, when the current version differs from the recorded one,
// and refused otherwise.
package startclaim

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/client-go/util/workqueue"

	"github.com/piggysec/piggy/services/secret-broker/internal/fault"
	"github.com/piggysec/piggy/services/secret-broker/internal/kubeclient"
)

// Labels of a claim Lease.
const (
	// PodLabel holds the hash of the pod UID (PodHash).
	PodLabel = "piggysec.com/start-claim-pod"
	// ManagedByLabel marks the Leases as the broker's.
	ManagedByLabel = "app.kubernetes.io/managed-by"
	managedBy      = "piggy-secret-broker"
	namePrefix     = "piggy-start-"
)

// FetchIDLength is the length of a fetch id: 128 bits in lowercase hex.
const FetchIDLength = 32

// Start is one start of one container.
type Start struct {
	// Namespace and PodName name the pod (for messages only).
	Namespace, PodName string
	// PodUID is the pod's UID.
	PodUID string
	// Container is the container's name; empty when the request matched
	// none (integrity not enforced), which cannot be tied to a start.
	Container string
	// RestartCount is the container's restartCount in the pod status.
	RestartCount int32
}

// Current reads the current restartCount of s's container (s.RestartCount
// is what was read before); it is called after the pod changed.
type Current func(ctx context.Context, s Start) (int32, error)

// Options configure Claims.
type Options struct {
	// Wait bounds how long a request for a start another fetch holds waits
	// for the kubelet to report a restart; 0 means 5s.
	Wait time.Duration
	// Current re-reads a container's restartCount (from the pod informer).
	Current Current
	// Log gets the cleanup failures.
	Log *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Claims claims container starts. Create it with New, run Run, and feed it
// the pod informer's events (PodChanged, PodDeleted).
type Claims struct {
	leases coordinationv1client.LeaseInterface
	opts   Options
	queue  workqueue.TypedRateLimitingInterface[task]

	mu sync.Mutex
	// known are the claims seen lately: pod UID → lease name → holder.
	known  map[string]map[string]seen
	nKnown int
	// waiters are woken at the next change of the pod (by UID).
	waiters map[string][]chan struct{}
}

type seen struct {
	holder string
	at     time.Time
}

// task is a cleanup: the claims of a pod (podHash) or one lease (name).
type task struct{ podHash, name string }

// Bounds of the memory of claims.
const (
	maxKnown = 16384
	knownTTL = time.Minute
	// answerMargin is the part of the request's deadline left to answer
	// after a wait.
	answerMargin = time.Second
	// maxCleanupAttempts bounds the retries of one cleanup.
	maxCleanupAttempts = 5
)

// New returns Claims keeping their Leases in leases (the broker's own
// namespace).
func New(leases coordinationv1client.LeaseInterface, opts Options) *Claims {
	if opts.Wait <= 0 {
		opts.Wait = 5 * time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Claims{
		leases:  leases,
		opts:    opts,
		queue:   workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[task](), workqueue.TypedRateLimitingQueueConfig[task]{Name: "start-claims"}),
		known:   map[string]map[string]seen{},
		waiters: map[string][]chan struct{}{},
	}
}

// Claim serves or refuses a request of start s carrying fetchID. nil: the
// request may be answered. Errors are *fault.Error.
func (c *Claims) Claim(ctx context.Context, s Start, fetchID string) error {
	if s.Container == "" {
		return fault.New(fault.PermissionDenied, "start_unknown",
			"the request matches no container of pod %s/%s that Piggy launched, so it cannot be tied to a container start; the broker answers a container once per start", s.Namespace, s.PodName)
	}
	holder, err := holderOf(fetchID)
	if err != nil {
		return err
	}
	// The refusal must still reach the caller within the request's own
	// deadline.
	deadline := c.opts.Now().Add(c.opts.Wait)
	if d, ok := ctx.Deadline(); ok && d.Add(-answerMargin).Before(deadline) {
		deadline = d.Add(-answerMargin)
	}
	for {
		held, err := c.claim(ctx, s, holder)
		if err != nil || held {
			return err
		}
		n, changed, err := c.waitForRestart(ctx, s, deadline)
		if err != nil {
			return err
		}
		if !changed {
			return alreadyFetched(s, fetchID == "")
		}
		s.RestartCount = n
	}
}

func alreadyFetched(s Start, noID bool) error {
	msg := fmt.Sprintf("container %q of pod %s/%s already received its values for this start (restart count %d); a container is answered once per start, and again on its next start",
		s.Container, s.Namespace, s.PodName, s.RestartCount)
	if noID {
		msg += "; this request carries no fetch id (its piggy-env predates once-per-start), so even its retries count as new fetches: recreate the pod to get a current piggy-env"
	}
	return fault.New(fault.PermissionDenied, "already_fetched", "%s", msg)
}

// holderOf is the holder identity of a fetch id: a hash, never the id; a
// request without one is its own holder.
func holderOf(fetchID string) (string, error) {
	if fetchID == "" {
		return hash("piggy-anonymous-fetch", rand.Text()), nil
	}
	if len(fetchID) != FetchIDLength || !isLowerHex(fetchID) {
		return "", fault.New(fault.InvalidArgument, "invalid_request", "fetchId must be %d lowercase hexadecimal characters", FetchIDLength)
	}
	return hash("piggy-fetch-id", fetchID), nil
}

func isLowerHex(s string) bool {
	for _, r := range s {
		if (r < '0' || r > '9') && (r < 'a' || r > 'f') {
			return false
		}
	}
	return true
}

// claim reports whether holder holds s, claiming it when nobody does.
func (c *Claims) claim(ctx context.Context, s Start, holder string) (bool, error) {
	name := LeaseName(s.PodUID, s.Container, s.RestartCount)
	if h, ok := c.lookup(s.PodUID, name); ok {
		return h == holder, nil
	}
	now := metav1.NewMicroTime(c.opts.Now())
	lease := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{PodLabel: PodHash(s.PodUID), ManagedByLabel: managedBy}},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder, AcquireTime: &now},
	}
	what := fmt.Sprintf("could not record this start of container %q of pod %s/%s", s.Container, s.Namespace, s.PodName)
	for attempt := 0; ; attempt++ {
		_, err := c.leases.Create(ctx, lease, metav1.CreateOptions{})
		if err == nil {
			c.remember(s.PodUID, name, holder)
			if s.RestartCount > 0 {
				c.queue.Add(task{name: LeaseName(s.PodUID, s.Container, s.RestartCount-1)})
			}
			return true, nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return false, kubeclient.Classify(err, what)
		}
		got, err := c.leases.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) && attempt == 0 {
			continue // removed meanwhile (the pod was deleted): claim again once
		}
		if err != nil {
			return false, kubeclient.Classify(err, what)
		}
		h := ""
		if got.Spec.HolderIdentity != nil {
			h = *got.Spec.HolderIdentity
		}
		c.remember(s.PodUID, name, h)
		return h == holder, nil
	}
}

// waitForRestart waits until the container's restartCount is no longer
// s.RestartCount, the pod informer having reported a change, or until
// deadline. It reports the new count and whether it changed.
func (c *Claims) waitForRestart(ctx context.Context, s Start, deadline time.Time) (int32, bool, error) {
	for {
		ch, cancel := c.subscribe(s.PodUID)
		n, err := c.opts.Current(ctx, s)
		if err != nil {
			cancel()
			return 0, false, err
		}
		if n != s.RestartCount {
			cancel()
			return n, true, nil
		}
		left := deadline.Sub(c.opts.Now())
		if left <= 0 {
			cancel()
			return n, false, nil
		}
		t := time.NewTimer(left)
		select {
		case <-ch:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			cancel()
			return 0, false, fault.Wrap(ctx.Err(), fault.Unavailable, "timeout",
				"container %q of pod %s/%s: the broker's request timeout passed while it waited for the kubelet to report the container's start; retry", s.Container, s.Namespace, s.PodName)
		}
		t.Stop()
		cancel()
	}
}

// subscribe returns a channel closed at the next PodChanged of uid.
func (c *Claims) subscribe(uid string) (<-chan struct{}, func()) {
	ch := make(chan struct{})
	c.mu.Lock()
	c.waiters[uid] = append(c.waiters[uid], ch)
	c.mu.Unlock()
	return ch, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		list := c.waiters[uid]
		for i, w := range list {
			if w == ch {
				list = append(list[:i], list[i+1:]...)
				break
			}
		}
		if len(list) == 0 {
			delete(c.waiters, uid)
		} else {
			c.waiters[uid] = list
		}
	}
}

// PodChanged wakes the requests waiting for a restart of a container of
// the pod uid. It does not block (informer handlers call it).
func (c *Claims) PodChanged(uid string) {
	c.mu.Lock()
	list := c.waiters[uid]
	delete(c.waiters, uid)
	c.mu.Unlock()
	for _, ch := range list {
		close(ch)
	}
}

// PodDeleted removes the claims of the pod uid, in the background. It does
// not block (informer handlers call it).
func (c *Claims) PodDeleted(uid string) {
	c.mu.Lock()
	c.nKnown -= len(c.known[uid])
	delete(c.known, uid)
	c.mu.Unlock()
	c.PodChanged(uid)
	c.queue.Add(task{podHash: PodHash(uid)})
}

// Run removes claims until ctx ends; it returns nil.
func (c *Claims) Run(ctx context.Context) error {
	go func() {
		<-ctx.Done()
		c.queue.ShutDown()
	}()
	for {
		t, shutdown := c.queue.Get()
		if shutdown {
			return nil
		}
		err := c.cleanup(ctx, t)
		switch {
		case err == nil || ctx.Err() != nil:
			c.queue.Forget(t)
		case c.queue.NumRequeues(t) < maxCleanupAttempts-1:
			c.queue.AddRateLimited(t)
		default:
			c.queue.Forget(t)
			c.opts.Log.Warn("could not remove start claims; they stay until removed by hand", "error", err.Error(),
				"selector", selector(t))
		}
		c.queue.Done(t)
	}
}

func selector(t task) string {
	if t.podHash != "" {
		return PodLabel + "=" + t.podHash
	}
	return "lease " + t.name
}

func (c *Claims) cleanup(ctx context.Context, t task) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var err error
	if t.podHash != "" {
		err = c.leases.DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: PodLabel + "=" + t.podHash})
	} else {
		err = c.leases.Delete(ctx, t.name, metav1.DeleteOptions{})
	}
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

func (c *Claims) lookup(uid, name string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.known[uid][name]
	if !ok || c.opts.Now().Sub(s.at) > knownTTL {
		return "", false
	}
	return s.holder, true
}

func (c *Claims) remember(uid, name, holder string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.nKnown >= maxKnown {
		clear(c.known)
		c.nKnown = 0
	}
	m := c.known[uid]
	if m == nil {
		m = map[string]seen{}
		c.known[uid] = m
	}
	if _, ok := m[name]; !ok {
		c.nKnown++
	}
	m[name] = seen{holder: holder, at: c.opts.Now()}
}

// LeaseName is the name of the claim of a start.
func LeaseName(podUID, container string, restartCount int32) string {
	return namePrefix + hash("piggy-start", podUID, container, strconv.Itoa(int(restartCount)))[:40]
}

// PodHash is the value of PodLabel for a pod.
func PodHash(podUID string) string { return hash("piggy-pod", podUID)[:40] }

// hash is the hex SHA-256 of the parts, each ended by a zero byte.
func hash(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}
