// Package cache is a bounded, expiring, least-recently-used cache whose
// lookups load missing entries once: concurrent lookups of the same key
// share one load (golang.org/x/sync/singleflight). For a bounded time after
// it expired (stale-if-error), an entry still answers a lookup whose load
// fails with a transient error, does not finish within StaleWait, or
// outlasts the lookup's own deadline; the load goes on and replaces the
// entry when it succeeds.
//
// The cache only remembers what a load returned. It decides nothing about
// who may see an entry: callers authorise every request before and after a
// lookup.
package cache

import (
	"container/list"
	"context"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
)

// Options configure a Cache.
type Options struct {
	// Capacity is the maximum number of entries (at least 1).
	Capacity int
	// TTL is how long an entry lives; a load may ask for less, never more.
	TTL time.Duration
	// StaleIfError is how long after expiry an entry may still answer a
	// lookup whose load failed with an error ServeStale accepts, took longer
	// than StaleWait, or outlasted the lookup's context; zero disables stale
	// answers.
	StaleIfError time.Duration
	// ServeStale reports whether a load error may be answered with a stale
	// entry (transient errors only: never "not found" or "access denied").
	ServeStale func(error) bool
	// StaleWait is how long a lookup that has a stale entry to fall back on
	// waits for its load before answering with that entry; zero waits for
	// the load or the lookup's context.
	StaleWait time.Duration
	// LoadTimeout bounds a load. Loads are shared, so they do not end when
	// the caller that started them gives up; zero means one minute.
	LoadTimeout time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Result says how a lookup was answered.
type Result int

// Lookup results.
const (
	// Miss means this lookup ran the load.
	Miss Result = iota
	// Hit means a live entry answered.
	Hit
	// Coalesced means the lookup joined a load started by another lookup.
	Coalesced
	// Stale means an expired entry answered because the load failed or
	// took too long.
	Stale
)

// String names the result for metrics.
func (r Result) String() string {
	switch r {
	case Hit:
		return "hit"
	case Coalesced:
		return "coalesced"
	case Stale:
		return "stale"
	default:
		return "miss"
	}
}

// Stats are a snapshot of a cache's counters.
type Stats struct {
	Entries, Capacity                  int64
	Hits, Misses, Coalesced, Evictions int64
	// StaleServed counts lookups answered with an expired entry.
	StaleServed int64
	TTL         time.Duration
}

// Loader loads the value of a key. It returns how long the value may be
// cached: zero means the cache's TTL, a negative value means not at all.
type Loader[V any] func(ctx context.Context) (V, time.Duration, error)

// Cache maps string keys to values of type V. Create it with New.
type Cache[V any] struct {
	opts  Options
	group singleflight.Group

	mu    sync.Mutex
	ll    *list.List // front = most recently used; holds *entry[V]
	items map[string]*list.Element

	hits, misses, coalesced, evictions, stale atomic.Int64
}

type entry[V any] struct {
	key     string
	value   V
	expires time.Time
}

// New returns an empty cache.
func New[V any](opts Options) *Cache[V] {
	if opts.Capacity < 1 {
		opts.Capacity = 1
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.LoadTimeout <= 0 {
		opts.LoadTimeout = time.Minute
	}
	if opts.ServeStale == nil {
		opts.ServeStale = func(error) bool { return false }
	}
	return &Cache[V]{opts: opts, ll: list.New(), items: map[string]*list.Element{}}
}

// Get returns the value of key, loading it when there is no live entry.
// Concurrent Gets of one key share a single load, which runs detached from
// ctx's cancellation (keeping its values, such as the trace) and bounded by
// LoadTimeout. A Get stops waiting for the load when ctx ends, or after
// StaleWait when it has a stale entry to answer with; it answers with the
// stale entry when there is one (Stale), else with ctx's error.
func (c *Cache[V]) Get(ctx context.Context, key string, load Loader[V]) (V, Result, error) {
	now := c.opts.Now()
	if v, ok := c.live(key, now); ok {
		c.hits.Add(1)
		return v, Hit, nil
	}
	var ran atomic.Bool
	ch := c.group.DoChan(key, func() (any, error) {
		// A load that finished since the lookup above filled the entry.
		if v, ok := c.live(key, c.opts.Now()); ok {
			return v, nil
		}
		ran.Store(true)
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.opts.LoadTimeout)
		defer cancel()
		v, ttl, err := load(lctx)
		if err != nil {
			return v, err
		}
		if ttl >= 0 {
			c.put(key, v, ttl)
		}
		return v, nil
	})
	res, waited := c.wait(ctx, key, now, ch)
	if !waited {
		if v, ok := c.staleEntry(key, c.opts.Now()); ok {
			c.stale.Add(1)
			return v, Stale, nil
		}
		var zero V
		return zero, Miss, ctx.Err()
	}
	result := Miss
	if ran.Load() {
		c.misses.Add(1)
	} else {
		result = Coalesced
		c.coalesced.Add(1)
	}
	if res.Err != nil {
		if v, ok := c.staleValue(key, c.opts.Now(), res.Err); ok {
			c.stale.Add(1)
			return v, Stale, nil
		}
		var zero V
		return zero, result, res.Err
	}
	return res.Val.(V), result, nil
}

// wait waits for a load's result. It gives up (false) when ctx ends, or
// after StaleWait when key had a stale entry at now.
func (c *Cache[V]) wait(ctx context.Context, key string, now time.Time, ch <-chan singleflight.Result) (singleflight.Result, bool) {
	var staleWait <-chan time.Time
	if _, ok := c.staleEntry(key, now); ok && c.opts.StaleWait > 0 {
		t := time.NewTimer(c.opts.StaleWait)
		defer t.Stop()
		staleWait = t.C
	}
	for {
		select {
		case res := <-ch:
			return res, true
		case <-ctx.Done():
			return singleflight.Result{}, false
		case <-staleWait:
			if _, ok := c.staleEntry(key, c.opts.Now()); ok {
				return singleflight.Result{}, false
			}
			staleWait = nil // the entry went meanwhile: wait for the load
		}
	}
}

// Cached returns the live entry of key without loading it, counting a hit
// when there is one (a lookup that finds nothing is counted by the Get that
// follows it).
func (c *Cache[V]) Cached(key string) (V, bool) {
	v, ok := c.live(key, c.opts.Now())
	if ok {
		c.hits.Add(1)
	}
	return v, ok
}

// live returns a live entry, removing it when it is past every use.
func (c *Cache[V]) live(key string, now time.Time) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[key]
	if !ok {
		var zero V
		return zero, false
	}
	e := el.Value.(*entry[V])
	if now.Before(e.expires) {
		c.ll.MoveToFront(el)
		return e.value, true
	}
	if !now.Before(e.expires.Add(c.opts.StaleIfError)) {
		c.ll.Remove(el)
		delete(c.items, key)
	}
	var zero V
	return zero, false
}

// staleValue returns an expired entry still inside the stale window when
// err allows it.
func (c *Cache[V]) staleValue(key string, now time.Time, err error) (V, bool) {
	if !c.opts.ServeStale(err) {
		var zero V
		return zero, false
	}
	return c.staleEntry(key, now)
}

// staleEntry returns the entry of key unless it is past its stale window.
// Get asks once the entry has expired; should another load have refreshed
// it meanwhile, the live entry is as good an answer.
func (c *Cache[V]) staleEntry(key string, now time.Time) (V, bool) {
	var zero V
	if c.opts.StaleIfError <= 0 {
		return zero, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[key]
	if !ok {
		return zero, false
	}
	e := el.Value.(*entry[V])
	if !now.Before(e.expires.Add(c.opts.StaleIfError)) {
		return zero, false
	}
	return e.value, true
}

func (c *Cache[V]) put(key string, v V, ttl time.Duration) {
	if ttl == 0 || ttl > c.opts.TTL {
		ttl = c.opts.TTL
	}
	if ttl <= 0 {
		return
	}
	expires := c.opts.Now().Add(ttl)
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		e := el.Value.(*entry[V])
		e.value, e.expires = v, expires
		c.ll.MoveToFront(el)
		return
	}
	c.items[key] = c.ll.PushFront(&entry[V]{key: key, value: v, expires: expires})
	for c.ll.Len() > c.opts.Capacity {
		last := c.ll.Back()
		c.ll.Remove(last)
		delete(c.items, last.Value.(*entry[V]).key)
		c.evictions.Add(1)
	}
}

// Peek returns the live value of key without loading or counting.
func (c *Cache[V]) Peek(key string) (V, bool) { return c.live(key, c.opts.Now()) }

// Stats returns the counters.
func (c *Cache[V]) Stats() Stats {
	c.mu.Lock()
	n := c.ll.Len()
	c.mu.Unlock()
	return Stats{
		Entries:     int64(n),
		Capacity:    int64(c.opts.Capacity),
		Hits:        c.hits.Load(),
		Misses:      c.misses.Load(),
		Coalesced:   c.coalesced.Load(),
		Evictions:   c.evictions.Load(),
		StaleServed: c.stale.Load(),
		TTL:         c.opts.TTL,
	}
}
