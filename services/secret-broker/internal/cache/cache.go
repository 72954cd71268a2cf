// Package cache is a bounded, expiring, least-recently-used cache whose
// lookups load missing entries once: concurrent lookups of the same key
// share one load (golang.org/x/sync/singleflight). For a bounded time after
// it expired (stale-if-error), an entry still answers a lookup whose load
// fails with a transient error, does not finish within StaleWait, or
// outlasts the lookup's own deadline; the load goes on and replaces the
// entry when it succeeds.
//
// A load error that CacheError accepts (a deterministic outcome such as
// "not found" or "access denied", never a transient one) is remembered for
// NegativeTTL: lookups of the key get the same error without a load until
// then, and never after (a negative entry has no stale window), so a value
// created meanwhile is seen at the latest NegativeTTL after the failure.
//
// The cache is bounded by entries (Capacity) and, when MaxBytes is set, by
// the summed sizes of its entries (Size of the value plus the key's length):
// the least recently used entries go first, and a value larger than
// MaxBytes on its own is returned but not kept.
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

	// MaxBytes bounds the summed sizes of the entries (Size of each value
	// plus the length of its key); zero bounds only the number of entries.
	MaxBytes int64
	// Size is the size in bytes of a value, for MaxBytes; nil counts keys
	// only.
	Size func(value any) int64
	// NegativeTTL is how long a load error that CacheError accepts is
	// remembered; zero remembers no error.
	NegativeTTL time.Duration
	// CacheError reports whether a load error may be remembered: outcomes
	// that do not change until the source does (not found, access
	// denied), never transient ones. Nil remembers none.
	CacheError func(error) bool
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
	Entries, Capacity int64
	// Hits counts lookups answered by a live entry, remembered errors
	// included.
	Hits, Misses, Coalesced int64
	// Evictions counts entries dropped, or values not kept, to respect
	// Capacity or MaxBytes.
	Evictions int64
	// StaleServed counts lookups answered with an expired entry.
	StaleServed int64
	// Negative counts the live and expired remembered errors held.
	Negative int64
	// Bytes is the summed size of the entries; MaxBytes the bound (zero:
	// none).
	Bytes, MaxBytes int64
	TTL             time.Duration
}

// Loader loads the value of a key. It returns how long the value may be
// cached: zero means the cache's TTL, a negative value means not at all.
type Loader[V any] func(ctx context.Context) (V, time.Duration, error)

// Cache maps string keys to values of type V. Create it with New.
type Cache[V any] struct {
	opts  Options
	group singleflight.Group

	mu       sync.Mutex
	ll       *list.List // front = most recently used; holds *entry[V]
	items    map[string]*list.Element
	bytes    int64 // summed entry sizes
	negative int64 // entries holding an error

	hits, misses, coalesced, evictions, stale atomic.Int64
}

type entry[V any] struct {
	key   string
	value V
	// err, when set, is a remembered load error: the entry answers with it
	// until expires and is never served stale.
	err     error
	expires time.Time
	size    int64
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
	if opts.CacheError == nil || opts.NegativeTTL <= 0 {
		opts.CacheError = func(error) bool { return false }
	}
	return &Cache[V]{opts: opts, ll: list.New(), items: map[string]*list.Element{}}
}

// Get returns the value of key, loading it when there is no live entry.
// Concurrent Gets of one key share a single load, which runs detached from
// ctx's cancellation (keeping its values, such as the trace) and bounded by
// LoadTimeout. A Get stops waiting for the load when ctx ends, or after
// StaleWait when it has a stale entry to answer with; it answers with the
// stale entry when there is one (Stale), else with ctx's error.
//
// A remembered error (see CacheError) answers like a live entry: with the
// error and Hit.
func (c *Cache[V]) Get(ctx context.Context, key string, load Loader[V]) (V, Result, error) {
	now := c.opts.Now()
	if v, err, ok := c.live(key, now); ok {
		c.hits.Add(1)
		return v, Hit, err
	}
	var ran atomic.Bool
	ch := c.group.DoChan(key, func() (any, error) {
		// A load that finished since the lookup above filled the entry.
		if v, err, ok := c.live(key, c.opts.Now()); ok {
			return v, err
		}
		ran.Store(true)
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.opts.LoadTimeout)
		defer cancel()
		v, ttl, err := load(lctx)
		if err != nil {
			if c.opts.CacheError(err) {
				c.putError(key, err)
			}
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

// Cached returns the live value of key without loading it, counting a hit
// when there is one (a lookup that finds nothing, or a remembered error, is
// counted by the Get that follows it).
func (c *Cache[V]) Cached(key string) (V, bool) {
	v, err, ok := c.live(key, c.opts.Now())
	if !ok || err != nil {
		var zero V
		return zero, false
	}
	c.hits.Add(1)
	return v, true
}

// Holds reports whether a Get of key would be answered without a load (a
// live value or a remembered error), without counting.
func (c *Cache[V]) Holds(key string) bool {
	_, _, ok := c.live(key, c.opts.Now())
	return ok
}

// live returns a live entry (its value or remembered error), removing it
// when it is past every use.
func (c *Cache[V]) live(key string, now time.Time) (V, error, bool) {
	var zero V
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[key]
	if !ok {
		return zero, nil, false
	}
	e := el.Value.(*entry[V])
	if now.Before(e.expires) {
		c.ll.MoveToFront(el)
		return e.value, e.err, true
	}
	if e.err != nil || !now.Before(e.expires.Add(c.opts.StaleIfError)) {
		c.remove(el)
	}
	return zero, nil, false
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
	if e.err != nil || !now.Before(e.expires.Add(c.opts.StaleIfError)) {
		return zero, false
	}
	return e.value, true
}

// put keeps v for ttl (zero or more than TTL: TTL).
func (c *Cache[V]) put(key string, v V, ttl time.Duration) {
	if ttl == 0 || ttl > c.opts.TTL {
		ttl = c.opts.TTL
	}
	if ttl <= 0 {
		return
	}
	size := int64(len(key))
	if c.opts.Size != nil {
		size += c.opts.Size(v)
	}
	c.store(&entry[V]{key: key, value: v, expires: c.opts.Now().Add(ttl), size: size})
}

// putError remembers a load error for NegativeTTL. It replaces a value the
// key held: the source no longer serves it.
func (c *Cache[V]) putError(key string, err error) {
	c.store(&entry[V]{key: key, err: err, expires: c.opts.Now().Add(c.opts.NegativeTTL), size: int64(len(key))})
}

// store adds or replaces the entry of e.key as the most recently used and
// evicts the least recently used ones past Capacity or MaxBytes. An entry
// larger than MaxBytes on its own is not kept (and the key's old entry
// goes).
func (c *Cache[V]) store(e *entry[V]) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[e.key]; ok {
		c.remove(el)
	}
	if c.opts.MaxBytes > 0 && e.size > c.opts.MaxBytes {
		c.evictions.Add(1)
		return
	}
	c.items[e.key] = c.ll.PushFront(e)
	c.bytes += e.size
	if e.err != nil {
		c.negative++
	}
	for c.ll.Len() > c.opts.Capacity || c.opts.MaxBytes > 0 && c.bytes > c.opts.MaxBytes {
		c.remove(c.ll.Back())
		c.evictions.Add(1)
	}
}

// remove drops an entry; c.mu is held.
func (c *Cache[V]) remove(el *list.Element) {
	e := el.Value.(*entry[V])
	c.ll.Remove(el)
	delete(c.items, e.key)
	c.bytes -= e.size
	if e.err != nil {
		c.negative--
	}
}

// Peek returns the live value of key without loading or counting.
func (c *Cache[V]) Peek(key string) (V, bool) {
	v, err, ok := c.live(key, c.opts.Now())
	if err != nil {
		var zero V
		return zero, false
	}
	return v, ok
}

// Stats returns the counters.
func (c *Cache[V]) Stats() Stats {
	c.mu.Lock()
	n, bytes, negative := c.ll.Len(), c.bytes, c.negative
	c.mu.Unlock()
	return Stats{
		Entries:     int64(n),
		Negative:    negative,
		Bytes:       bytes,
		MaxBytes:    c.opts.MaxBytes,
		Capacity:    int64(c.opts.Capacity),
		Hits:        c.hits.Load(),
		Misses:      c.misses.Load(),
		Coalesced:   c.coalesced.Load(),
		Evictions:   c.evictions.Load(),
		StaleServed: c.stale.Load(),
		TTL:         c.opts.TTL,
	}
}
