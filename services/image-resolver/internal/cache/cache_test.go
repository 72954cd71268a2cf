package cache

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// clock is a manual clock for expiry tests.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestLRU(t *testing.T) {
	type op struct {
		do      string // add, addttl, get, advance, remove, coalesce
		key     string
		value   int
		ttl     time.Duration
		wantOK  bool
		wantVal int
	}
	tests := []struct {
		name      string
		capacity  int
		ttl       time.Duration
		ops       []op
		wantStats Stats
	}{
		{
			name:     "hit and miss",
			capacity: 2,
			ops: []op{
				{do: "get", key: "a"},
				{do: "add", key: "a", value: 1},
				{do: "get", key: "a", wantOK: true, wantVal: 1},
			},
			wantStats: Stats{Entries: 1, Capacity: 2, Hits: 1, Misses: 1},
		},
		{
			name:     "evicts least recently used",
			capacity: 2,
			ops: []op{
				{do: "add", key: "a", value: 1},
				{do: "add", key: "b", value: 2},
				{do: "get", key: "a", wantOK: true, wantVal: 1}, // b is now the oldest
				{do: "add", key: "c", value: 3},
				{do: "get", key: "b"},
				{do: "get", key: "a", wantOK: true, wantVal: 1},
				{do: "get", key: "c", wantOK: true, wantVal: 3},
			},
			wantStats: Stats{Entries: 2, Capacity: 2, Hits: 3, Misses: 1, Evictions: 1},
		},
		{
			name:     "update keeps one entry",
			capacity: 2,
			ops: []op{
				{do: "add", key: "a", value: 1},
				{do: "add", key: "a", value: 2},
				{do: "get", key: "a", wantOK: true, wantVal: 2},
			},
			wantStats: Stats{Entries: 1, Capacity: 2, Hits: 1},
		},
		{
			name:     "default ttl expires",
			capacity: 4,
			ttl:      time.Minute,
			ops: []op{
				{do: "add", key: "a", value: 1},
				{do: "advance", ttl: 59 * time.Second},
				{do: "get", key: "a", wantOK: true, wantVal: 1},
				{do: "advance", ttl: time.Second},
				{do: "get", key: "a"},
			},
			wantStats: Stats{Entries: 0, Capacity: 4, Hits: 1, Misses: 1, TTL: time.Minute},
		},
		{
			name:     "per-entry ttl shorter than default",
			capacity: 4,
			ttl:      time.Minute,
			ops: []op{
				{do: "addttl", key: "neg", value: -1, ttl: 5 * time.Second},
				{do: "add", key: "pos", value: 1},
				{do: "advance", ttl: 5 * time.Second},
				{do: "get", key: "neg"},
				{do: "get", key: "pos", wantOK: true, wantVal: 1},
			},
			wantStats: Stats{Entries: 1, Capacity: 4, Hits: 1, Misses: 1, TTL: time.Minute},
		},
		{
			name:     "negative ttl stores nothing, zero ttl never expires",
			capacity: 4,
			ops: []op{
				{do: "addttl", key: "a", value: 1, ttl: -1},
				{do: "addttl", key: "b", value: 2},
				{do: "advance", ttl: 1000 * time.Hour},
				{do: "get", key: "a"},
				{do: "get", key: "b", wantOK: true, wantVal: 2},
			},
			wantStats: Stats{Entries: 1, Capacity: 4, Hits: 1, Misses: 1},
		},
		{
			name:     "remove and coalesced",
			capacity: 1,
			ops: []op{
				{do: "add", key: "a", value: 1},
				{do: "remove", key: "a"},
				{do: "remove", key: "missing"},
				{do: "get", key: "a"},
				{do: "coalesce", value: 3},
			},
			wantStats: Stats{Entries: 0, Capacity: 1, Misses: 1, Coalesced: 3},
		},
		{
			name:      "capacity at least one",
			capacity:  0,
			ops:       []op{{do: "add", key: "a"}, {do: "add", key: "b"}},
			wantStats: Stats{Entries: 1, Capacity: 1, Evictions: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := &clock{t: time.Unix(1_700_000_000, 0)}
			c := New[string, int](tt.capacity, tt.ttl, clk.now)
			for i, o := range tt.ops {
				switch o.do {
				case "add":
					c.Add(o.key, o.value)
				case "addttl":
					c.AddTTL(o.key, o.value, o.ttl)
				case "advance":
					clk.advance(o.ttl)
				case "remove":
					c.Remove(o.key)
				case "coalesce":
					c.AddCoalesced(int64(o.value))
				case "get":
					v, ok := c.Get(o.key)
					if ok != o.wantOK || v != o.wantVal {
						t.Errorf("op %d: Get(%q) = %d, %v; want %d, %v", i, o.key, v, ok, o.wantVal, o.wantOK)
					}
				default:
					t.Fatalf("unknown op %q", o.do)
				}
			}
			if diff := cmp.Diff(tt.wantStats, c.Stats()); diff != "" {
				t.Errorf("Stats() mismatch (-want +got):\n%s", diff)
			}
			if got := c.Len(); got != tt.wantStats.Entries {
				t.Errorf("Len() = %d, want %d", got, tt.wantStats.Entries)
			}
		})
	}
}

func TestLRUConcurrent(t *testing.T) {
	c := New[string, int](64, time.Minute, nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				k := fmt.Sprint((g * i) % 100)
				if _, ok := c.Get(k); !ok {
					c.Add(k, i)
				}
			}
		}()
	}
	wg.Wait()
	s := c.Stats()
	if s.Entries > 64 || s.Hits+s.Misses != 8000 {
		t.Errorf("Stats() = %+v, want at most 64 entries and 8000 lookups", s)
	}
}

func BenchmarkLRUGet(b *testing.B) {
	c := New[string, int](2048, time.Minute, nil)
	c.Add("k", 1)
	b.ReportAllocs()
	for b.Loop() {
		c.Get("k")
	}
}
