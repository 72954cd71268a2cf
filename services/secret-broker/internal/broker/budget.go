package broker

import (
	"container/list"
	"sync"
	"time"
)

// maxBudgetPods bounds the pods whose AWS read budget is remembered. The
// least recently seen pod is forgotten first; it then starts again with a
// full budget, which only a pod idle for longest can get.
const maxBudgetPods = 16384

// readBudget limits the AWS reads each pod may cause: a token bucket per
// pod of burst reads, refilled by one every interval. Lookups the cache
// answers cost nothing.
type readBudget struct {
	burst    int
	interval time.Duration
	now      func() time.Time

	mu      sync.Mutex
	ll      *list.List // front = most recently seen; holds *bucket
	buckets map[string]*list.Element
}

type bucket struct {
	pod    string
	tokens float64
	at     time.Time // when tokens was last brought up to date
}

// newReadBudget returns a budget, or nil (no limit) when burst < 1 or
// interval <= 0.
func newReadBudget(burst int, interval time.Duration, now func() time.Time) *readBudget {
	if burst < 1 || interval <= 0 {
		return nil
	}
	return &readBudget{burst: burst, interval: interval, now: now, ll: list.New(), buckets: map[string]*list.Element{}}
}

// take spends one read of pod's budget and reports whether there was one.
func (r *readBudget) take(pod string) bool {
	if r == nil {
		return true
	}
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	el, ok := r.buckets[pod]
	if !ok {
		el = r.ll.PushFront(&bucket{pod: pod, tokens: float64(r.burst), at: now})
		r.buckets[pod] = el
		for r.ll.Len() > maxBudgetPods {
			last := r.ll.Back()
			r.ll.Remove(last)
			delete(r.buckets, last.Value.(*bucket).pod)
		}
	} else {
		r.ll.MoveToFront(el)
	}
	b := el.Value.(*bucket)
	if elapsed := now.Sub(b.at); elapsed > 0 {
		b.tokens = min(float64(r.burst), b.tokens+float64(elapsed)/float64(r.interval))
		b.at = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// pods returns the number of pods remembered.
func (r *readBudget) pods() int {
	if r == nil {
		return 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ll.Len()
}
