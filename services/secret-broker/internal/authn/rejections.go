package authn

import (
	"sync"
	"time"

	"github.com/piggysec/piggy/services/secret-broker/internal/fault"
)

// rejections remembers, briefly, the tokens the apiserver rejected, by the
// SHA-256 of the token (never the token), so that a junk token sent again
// costs no TokenReview. Every entry lives equally long, so the oldest
// entry is always the first to expire: a ring of keys in insertion order
// bounds the table and drops the oldest when full.
type rejections struct {
	ttl time.Duration
	now func() time.Time

	mu      sync.Mutex
	entries map[[32]byte]rejection
	ring    [][32]byte
	next    int // ring slot of the next insertion
}

type rejection struct {
	err   *fault.Error
	until time.Time
	slot  int // in ring
}

// newRejections returns a cache of size entries kept for ttl; nil (no
// caching) when either is not positive.
func newRejections(size int, ttl time.Duration, now func() time.Time) *rejections {
	if size <= 0 || ttl <= 0 {
		return nil
	}
	return &rejections{ttl: ttl, now: now, entries: make(map[[32]byte]rejection, min(size, 1024)), ring: make([][32]byte, size)}
}

// get returns the cached rejection of the token with hash key.
func (r *rejections) get(key [32]byte) (*fault.Error, bool) {
	if r == nil {
		return nil, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.entries[key]
	if !ok {
		return nil, false
	}
	if !r.now().Before(e.until) {
		delete(r.entries, key)
		return nil, false
	}
	return e.err, true
}

// add remembers err as the rejection of the token with hash key.
func (r *rejections) add(key [32]byte, err *fault.Error) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.entries[key]; ok {
		// Coalesced reviews of one token end here together; keep the
		// first entry (its slot in the ring).
		return
	}
	// The slot's previous key, unless it expired and was added again
	// since (then it has a newer slot).
	old := r.ring[r.next]
	if e, ok := r.entries[old]; ok && e.slot == r.next {
		delete(r.entries, old)
	}
	r.ring[r.next] = key
	r.entries[key] = rejection{err: err, until: r.now().Add(r.ttl), slot: r.next}
	r.next = (r.next + 1) % len(r.ring)
}

// len is the number of entries held, expired ones included.
func (r *rejections) len() int {
	if r == nil {
		return 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.entries)
}
