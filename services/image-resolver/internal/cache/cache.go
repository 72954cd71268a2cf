// Package cache is a small bounded LRU cache with optional per-entry
// expiry and the counters the resolver reports through GetCacheStats.
//
// It is safe for concurrent use. It coalesces nothing itself: callers put
// golang.org/x/sync/singleflight in front of it and report joined lookups
// with AddCoalesced, so that all counters of one cache live in one place.
package cache

import (
	"container/list"
	"sync"
	"time"
)

// Stats are a snapshot of a cache's counters.
type Stats struct {
	// Entries currently held (expired entries not yet evicted included).
	Entries int
	// Capacity is the maximum number of entries.
	Capacity int
	// Hits are lookups answered from the cache.
	Hits int64
	// Misses are lookups that found no live entry.
	Misses int64
	// Coalesced are lookups that joined an identical lookup in flight.
	Coalesced int64
	// Evictions are entries removed to respect the capacity.
	Evictions int64
	// TTL is the default lifetime of entries; zero when they live until evicted.
	TTL time.Duration
}

// LRU maps keys to values, evicting the least recently used entry when
// full. Entries may expire; an expired entry counts as a miss and is removed
// when found.
type LRU[K comparable, V any] struct {
	mu       sync.Mutex
	capacity int
	ttl      time.Duration
	now      func() time.Time
	ll       *list.List // front = most recently used; elements hold *entry[K, V]
	items    map[K]*list.Element

	hits, misses, coalesced, evictions int64
}

type entry[K comparable, V any] struct {
	key     K
	value   V
	expires time.Time // zero: never
}

// New returns an LRU holding at most capacity entries (at least one) whose
// entries live for ttl by default (zero: until evicted). now is the clock;
// nil means time.Now.
func New[K comparable, V any](capacity int, ttl time.Duration, now func() time.Time) *LRU[K, V] {
	if capacity < 1 {
		capacity = 1
	}
	if now == nil {
		now = time.Now
	}
	return &LRU[K, V]{capacity: capacity, ttl: ttl, now: now, ll: list.New(), items: make(map[K]*list.Element)}
}

// Get returns the live value of key and counts a hit or a miss.
func (c *LRU[K, V]) Get(key K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		e := el.Value.(*entry[K, V])
		if e.expires.IsZero() || c.now().Before(e.expires) {
			c.ll.MoveToFront(el)
			c.hits++
			return e.value, true
		}
		c.ll.Remove(el)
		delete(c.items, key)
	}
	c.misses++
	var zero V
	return zero, false
}

// Add stores value under key with the cache's default TTL.
func (c *LRU[K, V]) Add(key K, value V) { c.AddTTL(key, value, c.ttl) }

// AddTTL stores value under key for ttl (zero: until evicted), evicting the
// least recently used entry when the cache is full. A negative ttl stores
// nothing.
func (c *LRU[K, V]) AddTTL(key K, value V, ttl time.Duration) {
	if ttl < 0 {
		return
	}
	var expires time.Time
	if ttl > 0 {
		expires = c.now().Add(ttl)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		e := el.Value.(*entry[K, V])
		e.value, e.expires = value, expires
		c.ll.MoveToFront(el)
		return
	}
	c.items[key] = c.ll.PushFront(&entry[K, V]{key: key, value: value, expires: expires})
	for c.ll.Len() > c.capacity {
		oldest := c.ll.Back()
		c.ll.Remove(oldest)
		delete(c.items, oldest.Value.(*entry[K, V]).key)
		c.evictions++
	}
}

// Remove deletes key if present.
func (c *LRU[K, V]) Remove(key K) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		c.ll.Remove(el)
		delete(c.items, key)
	}
}

// AddCoalesced counts n lookups that joined an identical lookup in flight.
func (c *LRU[K, V]) AddCoalesced(n int64) {
	c.mu.Lock()
	c.coalesced += n
	c.mu.Unlock()
}

// Len is the number of entries held.
func (c *LRU[K, V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}

// Stats returns a snapshot of the counters.
func (c *LRU[K, V]) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Stats{
		Entries:   c.ll.Len(),
		Capacity:  c.capacity,
		Hits:      c.hits,
		Misses:    c.misses,
		Coalesced: c.coalesced,
		Evictions: c.evictions,
		TTL:       c.ttl,
	}
}

// Peek returns the live value of key without counting a lookup or
// refreshing its recency.
func (c *LRU[K, V]) Peek(key K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		e := el.Value.(*entry[K, V])
		if e.expires.IsZero() || c.now().Before(e.expires) {
			return e.value, true
		}
	}
	var zero V
	return zero, false
}
