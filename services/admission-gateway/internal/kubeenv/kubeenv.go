// Package kubeenv reads the ConfigMaps and Secrets that pod env values come
// from, through the Kubernetes API, for the mutation's reference search.
// Only named objects are read (get, never list or watch), and only the
// entries that hold piggy: references are kept: the search needs nothing
// else, and other values (Secret values above all) are not held in memory.
//
// ConfigMap reads are cached for a few seconds and concurrent reads of one
// ConfigMap share one request, so a rollout of many pods that take env
// from the same ConfigMap costs about one read.
package kubeenv

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/piggysec/piggy/services/admission-gateway/internal/mutate"
)

// Options configure the ConfigMap cache and which Secrets may be read.
type Options struct {
	// SecretNamespaces are the namespaces whose Secrets may be read; a
	// Secret elsewhere is not read ([mutate.ErrNotRead]). Secret reads are
	// an operator's opt-in per namespace: a forged review could otherwise
	// make the gateway read (and tell the existence of) any Secret, and the
	// namespace holding the chart's CA key must never be among them.
	SecretNamespaces []string
	// ConfigMapTTL is how long a ConfigMap read is reused; 0 disables the
	// cache (concurrent reads are still shared).
	ConfigMapTTL time.Duration
	// ConfigMapCacheSize bounds the cached ConfigMaps.
	ConfigMapCacheSize int
	// ReadTimeout bounds one read (the review's own deadline may end it
	// first); zero means DefaultReadTimeout.
	ReadTimeout time.Duration
	// Logger receives the API errors behind the short messages reviews
	// get (they may name the API server's address); nil discards.
	Logger *slog.Logger
}

// maxCachedBytes bounds one cached ConfigMap (the names and values of its
// piggy: references); a larger one is read again each time.
const maxCachedBytes = 16 << 10

// DefaultReadTimeout bounds a read: well inside the API server's webhook
// timeout (5 s in the chart), so that a stalled API server gets the pod a
// clear denial. A shared ConfigMap read outlives the review that started
// it when that review gives up first, within this bound.
const DefaultReadTimeout = 2 * time.Second

// ErrTimeout is the answer when the API server did not answer a read in time.
var ErrTimeout = errors.New("the Kubernetes API did not answer in time")

// Source implements mutate.EnvSource with a clientset.
type Source struct {
	client kubernetes.Interface
	opts   Options
	now    func() time.Time
	reads  singleflight.Group

	mu    sync.Mutex
	cache map[string]cached // "namespace/name" → references
}

type cached struct {
	refs    map[string]string
	expires time.Time
}

// New returns a Source.
func New(client kubernetes.Interface, opts Options) *Source {
	if opts.ReadTimeout <= 0 {
		opts.ReadTimeout = DefaultReadTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Source{client: client, opts: opts, now: time.Now, cache: map[string]cached{}}
}

// ConfigMap returns the entries of namespace/name that hold piggy:
// references, or mutate.ErrNotFound.
func (s *Source) ConfigMap(ctx context.Context, namespace, name string) (map[string]string, error) {
	key := namespace + "/" + name
	if refs, ok := s.cached(key); ok {
		return refs, nil
	}
	ch := s.reads.DoChan(key, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.ReadTimeout)
		defer cancel()
		cm, err := s.client.CoreV1().ConfigMaps(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, s.mapErr(ctx, "ConfigMap", namespace, name, err)
		}
		refs := references(cm.Data)
		s.store(key, refs)
		return refs, nil
	})
	select {
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, ErrTimeout
		}
		return nil, ctx.Err()
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(map[string]string), nil
	}
}

// Secret returns the entries of namespace/name that hold piggy:
// references, mutate.ErrNotFound, or mutate.ErrNotRead outside the
// SecretNamespaces. Secrets are not cached.
func (s *Source) Secret(ctx context.Context, namespace, name string) (map[string]string, error) {
	if !slices.Contains(s.opts.SecretNamespaces, namespace) {
		return nil, mutate.ErrNotRead
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.ReadTimeout)
	defer cancel()
	sec, err := s.client.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, s.mapErr(ctx, "Secret", namespace, name, err)
	}
	refs := map[string]string{}
	for k, v := range sec.Data {
		if mutate.IsReference(string(v)) {
			refs[k] = string(v)
		}
	}
	return refs, nil
}

// references keeps the entries of data that are piggy: references.
func references(data map[string]string) map[string]string {
	refs := map[string]string{}
	for k, v := range data {
		if mutate.IsReference(v) {
			refs[k] = v
		}
	}
	return refs
}

func (s *Source) cached(key string) (map[string]string, bool) {
	if s.opts.ConfigMapTTL <= 0 {
		return nil, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.cache[key]
	if !ok || !s.now().Before(c.expires) {
		return nil, false
	}
	return c.refs, true
}

// store caches refs under key. A full cache first drops expired entries,
// then an arbitrary one.
func (s *Source) store(key string, refs map[string]string) {
	if s.opts.ConfigMapTTL <= 0 || s.opts.ConfigMapCacheSize <= 0 {
		return
	}
	size := 0
	for k, v := range refs {
		size += len(k) + len(v)
	}
	if size > maxCachedBytes {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if _, ok := s.cache[key]; !ok && len(s.cache) >= s.opts.ConfigMapCacheSize {
		for k, c := range s.cache {
			if !now.Before(c.expires) {
				delete(s.cache, k)
			}
		}
		for k := range s.cache {
			if len(s.cache) < s.opts.ConfigMapCacheSize {
				break
			}
			delete(s.cache, k)
		}
	}
	s.cache[key] = cached{refs: refs, expires: now.Add(s.opts.ConfigMapTTL)}
}

func (s *Source) mapErr(ctx context.Context, kind, namespace, name string, err error) error {
	if apierrors.IsNotFound(err) {
		return mutate.ErrNotFound
	}
	// The pod's creator gets a short message; the API error, which may
	// name the API server's address or the gateway's identity, goes to
	// the operator's log.
	s.opts.Logger.WarnContext(ctx, "Kubernetes read failed", "kind", kind, "namespace", namespace, "name", name, "error", err)
	switch {
	case apierrors.IsForbidden(err):
		return errors.New("the admission-gateway may not read it (RBAC)")
	case ctx.Err() != nil || apierrors.IsTimeout(err) || apierrors.IsServerTimeout(err):
		return ErrTimeout
	case apierrors.ReasonForError(err) != "":
		return fmt.Errorf("the Kubernetes API answered %s", apierrors.ReasonForError(err))
	default:
		return errors.New("the Kubernetes API could not be reached")
	}
}
