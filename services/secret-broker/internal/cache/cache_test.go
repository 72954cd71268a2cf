package cache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

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

var errTransient = errors.New("throttled")

func newCache(clk *clock, capacity int, ttl, stale time.Duration) *Cache[string] {
	return New[string](Options{
		Capacity: capacity, TTL: ttl, StaleIfError: stale, Now: clk.now,
		ServeStale: func(err error) bool { return errors.Is(err, errTransient) },
	})
}

// loader returns value v with ttl, or err, and counts its calls.
func loader(calls *atomic.Int64, v string, ttl time.Duration, err error) Loader[string] {
	return func(context.Context) (string, time.Duration, error) {
		calls.Add(1)
		return v, ttl, err
	}
}

func TestHitMissExpiry(t *testing.T) {
	clk := &clock{t: time.Unix(1000, 0)}
	c := newCache(clk, 10, time.Minute, 0)
	var calls atomic.Int64
	get := func(want string, wantRes Result) {
		t.Helper()
		v, res, err := c.Get(t.Context(), "k", loader(&calls, "v"+fmt.Sprint(calls.Load()+1), 0, nil))
		if err != nil || v != want || res != wantRes {
			t.Fatalf("Get = %q, %v, %v; want %q, %v", v, res, err, want, wantRes)
		}
	}
	get("v1", Miss)
	get("v1", Hit)
	clk.advance(59 * time.Second)
	get("v1", Hit)
	clk.advance(time.Second)
	get("v2", Miss)
	want := Stats{Entries: 1, Capacity: 10, Hits: 2, Misses: 2, Bytes: int64(len("k")), TTL: time.Minute}
	if diff := cmp.Diff(want, c.Stats()); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
}

func TestCachedNeverLoads(t *testing.T) {
	clk := &clock{t: time.Unix(1000, 0)}
	c := newCache(clk, 10, time.Minute, 0)
	if v, ok := c.Cached("k"); ok {
		t.Fatalf("Cached on an empty cache = %q, true", v)
	}
	var calls atomic.Int64
	if _, _, err := c.Get(t.Context(), "k", loader(&calls, "v", 0, nil)); err != nil {
		t.Fatal(err)
	}
	if v, ok := c.Cached("k"); !ok || v != "v" {
		t.Fatalf("Cached = %q, %v; want v, true", v, ok)
	}
	clk.advance(time.Minute)
	if v, ok := c.Cached("k"); ok {
		t.Fatalf("Cached after expiry = %q, true", v)
	}
	want := Stats{Capacity: 10, Hits: 1, Misses: 1, TTL: time.Minute}
	if diff := cmp.Diff(want, c.Stats()); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
	if calls.Load() != 1 {
		t.Errorf("loads = %d, want 1", calls.Load())
	}
}

func TestLoaderTTL(t *testing.T) {
	tests := []struct {
		name      string
		ttl       time.Duration
		after     time.Duration
		wantCalls int64
	}{
		{"shorter ttl honoured", 10 * time.Second, 11 * time.Second, 2},
		{"shorter ttl still live", 10 * time.Second, 9 * time.Second, 1},
		{"longer ttl capped", time.Hour, 61 * time.Second, 2},
		{"negative ttl not cached", -1, 0, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := &clock{t: time.Unix(1000, 0)}
			c := newCache(clk, 10, time.Minute, 0)
			var calls atomic.Int64
			_, _, _ = c.Get(t.Context(), "k", loader(&calls, "v", tt.ttl, nil))
			clk.advance(tt.after)
			_, _, _ = c.Get(t.Context(), "k", loader(&calls, "v", tt.ttl, nil))
			if calls.Load() != tt.wantCalls {
				t.Errorf("loads = %d, want %d", calls.Load(), tt.wantCalls)
			}
		})
	}
}

func TestErrorsAreNotCached(t *testing.T) {
	clk := &clock{t: time.Unix(1000, 0)}
	c := newCache(clk, 10, time.Minute, 0)
	var calls atomic.Int64
	boom := errors.New("boom")
	for range 3 {
		if _, _, err := c.Get(t.Context(), "k", loader(&calls, "", 0, boom)); !errors.Is(err, boom) {
			t.Fatalf("err = %v, want boom", err)
		}
	}
	if calls.Load() != 3 {
		t.Errorf("loads = %d, want 3", calls.Load())
	}
}

func TestCapacityEvictsLeastRecentlyUsed(t *testing.T) {
	clk := &clock{t: time.Unix(1000, 0)}
	c := newCache(clk, 2, time.Minute, 0)
	var calls atomic.Int64
	for _, k := range []string{"a", "b", "a", "c"} { // "b" is least recently used when "c" arrives
		_, _, _ = c.Get(t.Context(), k, loader(&calls, k, 0, nil))
	}
	if _, ok := c.Peek("b"); ok {
		t.Error("b survived eviction")
	}
	for _, k := range []string{"a", "c"} {
		if _, ok := c.Peek(k); !ok {
			t.Errorf("%s was evicted", k)
		}
	}
	if s := c.Stats(); s.Evictions != 1 || s.Entries != 2 {
		t.Errorf("stats = %+v, want 1 eviction and 2 entries", s)
	}
}

func TestConcurrentLookupsShareOneLoad(t *testing.T) {
	clk := &clock{t: time.Unix(1000, 0)}
	c := newCache(clk, 10, time.Minute, 0)
	var calls atomic.Int64
	release := make(chan struct{})
	load := func(context.Context) (string, time.Duration, error) {
		calls.Add(1)
		<-release
		return "v", 0, nil
	}
	const n = 200
	var wg sync.WaitGroup
	results := make(chan Result, n)
	for range n {
		wg.Go(func() {
			v, res, err := c.Get(t.Context(), "k", load)
			if err != nil || v != "v" {
				t.Errorf("Get = %q, %v", v, err)
			}
			results <- res
		})
	}
	// Let the lookups pile up on the one load, then release it. Lookups
	// arriving after the release find the entry (hits).
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	close(results)
	count := map[Result]int{}
	for r := range results {
		count[r]++
	}
	if calls.Load() != 1 {
		t.Errorf("loads = %d, want 1", calls.Load())
	}
	s := c.Stats()
	if s.Misses+s.Coalesced+s.Hits != n || s.Misses != 1 || count[Miss] != 1 {
		t.Errorf("stats %+v, results %v: want exactly one miss and %d lookups", s, count, n)
	}
}

func TestLoadOutlivesImpatientCaller(t *testing.T) {
	clk := &clock{t: time.Unix(1000, 0)}
	c := newCache(clk, 10, time.Minute, 0)
	release := make(chan struct{})
	loaded := make(chan error, 1)
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		_, _, err := c.Get(ctx, "k", func(lctx context.Context) (string, time.Duration, error) {
			<-release
			loaded <- lctx.Err()
			return "v", 0, nil
		})
		if !errors.Is(err, context.Canceled) {
			t.Errorf("impatient Get err = %v, want context.Canceled", err)
		}
	}()
	time.Sleep(10 * time.Millisecond)
	cancel()
	time.Sleep(10 * time.Millisecond)
	close(release)
	if err := <-loaded; err != nil {
		t.Errorf("load context ended with the caller: %v", err)
	}
	// The finished load filled the cache for the next caller.
	deadline := time.Now().Add(2 * time.Second)
	for {
		if v, ok := c.Peek("k"); ok && v == "v" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the load's value never reached the cache")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestStaleIfError(t *testing.T) {
	tests := []struct {
		name      string
		stale     time.Duration
		after     time.Duration
		err       error
		wantValue string
		wantRes   Result
		wantErr   bool
	}{
		{"transient error inside the window serves stale", 30 * time.Second, 80 * time.Second, errTransient, "old", Stale, false},
		{"transient error past the window fails", 30 * time.Second, 91 * time.Second, errTransient, "", Miss, true},
		{"final error never serves stale", 30 * time.Second, 80 * time.Second, errors.New("not found"), "", Miss, true},
		{"disabled", 0, 61 * time.Second, errTransient, "", Miss, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := &clock{t: time.Unix(1000, 0)}
			c := newCache(clk, 10, time.Minute, tt.stale)
			var calls atomic.Int64
			if _, _, err := c.Get(t.Context(), "k", loader(&calls, "old", 0, nil)); err != nil {
				t.Fatal(err)
			}
			clk.advance(tt.after)
			v, res, err := c.Get(t.Context(), "k", loader(&calls, "", 0, tt.err))
			if (err != nil) != tt.wantErr || v != tt.wantValue || res != tt.wantRes {
				t.Errorf("Get = %q, %v, %v; want %q, %v, error %v", v, res, err, tt.wantValue, tt.wantRes, tt.wantErr)
			}
			// A successful refresh replaces the stale entry.
			if v, _, err := c.Get(t.Context(), "k", loader(&calls, "new", 0, nil)); err != nil || v != "new" {
				t.Errorf("refresh = %q, %v", v, err)
			}
		})
	}
}

// TestStaleWhileTheLoadHangs checks that a load that does not finish is
// answered with the stale entry, after StaleWait or at the lookup's
// deadline, and that the load goes on and refreshes the entry; without a
// stale entry the lookup waits for its deadline and fails.
func TestStaleWhileTheLoadHangs(t *testing.T) {
	tests := []struct {
		name      string
		staleWait time.Duration
		timeout   time.Duration // of the lookup's context
		after     time.Duration // since the first load
		wantValue string
		wantRes   Result
		wantErr   error
	}{
		{"after StaleWait", 20 * time.Millisecond, time.Minute, 80 * time.Second, "old", Stale, nil},
		{"at the lookup's deadline", 0, 20 * time.Millisecond, 80 * time.Second, "old", Stale, nil},
		{"past the window the deadline fails", 20 * time.Millisecond, 50 * time.Millisecond, 91 * time.Second, "", Miss, context.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := &clock{t: time.Unix(1000, 0)}
			c := New[string](Options{Capacity: 10, TTL: time.Minute, StaleIfError: 30 * time.Second, StaleWait: tt.staleWait, Now: clk.now})
			var calls atomic.Int64
			if _, _, err := c.Get(t.Context(), "k", loader(&calls, "old", 0, nil)); err != nil {
				t.Fatal(err)
			}
			clk.advance(tt.after)
			release := make(chan struct{})
			hanging := func(context.Context) (string, time.Duration, error) {
				<-release
				return "new", 0, nil
			}
			ctx, cancel := context.WithTimeout(t.Context(), tt.timeout)
			defer cancel()
			v, res, err := c.Get(ctx, "k", hanging)
			if v != tt.wantValue || res != tt.wantRes || !errors.Is(err, tt.wantErr) {
				t.Errorf("Get = %q, %v, %v; want %q, %v, %v", v, res, err, tt.wantValue, tt.wantRes, tt.wantErr)
			}
			close(release)
			for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(time.Millisecond) {
				if v, ok := c.Peek("k"); ok && v == "new" {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the load that went on never refreshed the entry")
				}
			}
		})
	}
}

var errNotFound = errors.New("not found")

// TestRememberedErrors: an error CacheError accepts answers later lookups
// for NegativeTTL without a load, then is gone (no stale window), so a value
// created meanwhile is seen; other errors are not remembered; a remembered
// error replaces a value the key held and is never served stale.
func TestRememberedErrors(t *testing.T) {
	clk := &clock{t: time.Unix(1000, 0)}
	c := New[string](Options{
		Capacity: 10, TTL: time.Minute, StaleIfError: time.Hour, NegativeTTL: 30 * time.Second, Now: clk.now,
		ServeStale: func(err error) bool { return errors.Is(err, errTransient) },
		CacheError: func(err error) bool { return errors.Is(err, errNotFound) },
	})
	var calls atomic.Int64
	get := func(load Loader[string]) (string, Result, error) {
		t.Helper()
		return c.Get(t.Context(), "k", load)
	}
	if _, res, err := get(loader(&calls, "", 0, errNotFound)); !errors.Is(err, errNotFound) || res != Miss {
		t.Fatalf("first Get = %v, %v; want the load's not found", res, err)
	}
	for range 50 {
		if _, res, err := get(loader(&calls, "v", 0, nil)); !errors.Is(err, errNotFound) || res != Hit {
			t.Fatalf("Get within NegativeTTL = %v, %v; want the remembered not found", res, err)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("loads = %d, want 1", n)
	}
	if c.Holds("k") != true || c.Stats().Negative != 1 {
		t.Errorf("Holds = %v, Negative = %d; want the remembered error", c.Holds("k"), c.Stats().Negative)
	}
	if _, ok := c.Cached("k"); ok {
		t.Error("Cached answered a remembered error as a value")
	}
	clk.advance(30*time.Second - time.Nanosecond)
	if _, _, err := get(loader(&calls, "v", 0, nil)); !errors.Is(err, errNotFound) {
		t.Fatalf("Get just before NegativeTTL = %v; want not found", err)
	}
	clk.advance(time.Nanosecond)
	if v, res, err := get(loader(&calls, "created", 0, nil)); err != nil || v != "created" || res != Miss {
		t.Fatalf("Get at NegativeTTL = %q, %v, %v; want the value created meanwhile", v, res, err)
	}
	if s := c.Stats(); s.Negative != 0 || s.Entries != 1 {
		t.Errorf("stats = %+v; want the value only", s)
	}

	// A transient error is not remembered.
	calls.Store(0)
	for range 3 {
		if _, _, err := c.Get(t.Context(), "t", loader(&calls, "", 0, errTransient)); !errors.Is(err, errTransient) {
			t.Fatalf("Get = %v", err)
		}
	}
	if n := calls.Load(); n != 3 {
		t.Errorf("loads of a transient failure = %d, want 3 (one per lookup)", n)
	}

	// A value that expires and then is not found: the error replaces it,
	// and no stale value is served for it or after it.
	clk.advance(time.Minute)
	if _, _, err := get(loader(&calls, "", 0, errNotFound)); !errors.Is(err, errNotFound) {
		t.Fatalf("Get after deletion = %v; want not found, not the stale value", err)
	}
	clk.advance(30 * time.Second)
	if _, res, err := get(loader(&calls, "", 0, errTransient)); !errors.Is(err, errTransient) || res != Miss {
		t.Fatalf("Get with AWS failing after the not found = %v, %v; want the failure, no stale value", res, err)
	}
}

// TestNoNegativeTTLRemembersNothing: without NegativeTTL, every lookup of
// a failing key loads.
func TestNoNegativeTTLRemembersNothing(t *testing.T) {
	clk := &clock{t: time.Unix(1000, 0)}
	c := New[string](Options{Capacity: 10, TTL: time.Minute, Now: clk.now, CacheError: func(error) bool { return true }})
	var calls atomic.Int64
	for range 3 {
		c.Get(t.Context(), "k", loader(&calls, "", 0, errNotFound))
	}
	if n := calls.Load(); n != 3 {
		t.Errorf("loads = %d, want 3", n)
	}
}

// TestByteBound: the summed sizes (value sizes plus key lengths) stay
// within MaxBytes, least recently used first out; a value larger than the
// bound is returned but not kept and drops the key's old value; replacing
// an entry accounts for its new size.
func TestByteBound(t *testing.T) {
	clk := &clock{t: time.Unix(1000, 0)}
	c := New[string](Options{
		Capacity: 100, TTL: time.Minute, MaxBytes: 100, Now: clk.now,
		Size: func(v any) int64 { return int64(len(v.(string))) },
	})
	var calls atomic.Int64
	val := func(n int) string { return string(make([]byte, n)) }
	put := func(key string, n int) {
		t.Helper()
		if v, _, err := c.Get(t.Context(), key, loader(&calls, val(n), 0, nil)); err != nil || len(v) != n {
			t.Fatalf("Get(%s) = %d bytes, %v", key, len(v), err)
		}
	}
	put("a", 39) // 40 bytes with its key
	put("b", 39)
	if s := c.Stats(); s.Bytes != 80 || s.Entries != 2 || s.MaxBytes != 100 {
		t.Fatalf("stats = %+v, want 80 bytes in 2 entries", s)
	}
	c.Get(t.Context(), "a", loader(&calls, "", 0, nil)) // a is now the most recently used
	put("c", 39)                                        // 120 > 100: b goes
	if c.Holds("b") || !c.Holds("a") || !c.Holds("c") {
		t.Errorf("after c: a %v b %v c %v; want b evicted", c.Holds("a"), c.Holds("b"), c.Holds("c"))
	}
	if s := c.Stats(); s.Bytes != 80 || s.Evictions != 1 {
		t.Errorf("stats = %+v, want 80 bytes and 1 eviction", s)
	}
	// Too large on its own: served, not kept, and the old value of its key
	// goes.
	if v, _, err := c.Get(t.Context(), "huge", loader(&calls, val(200), 0, nil)); err != nil || len(v) != 200 {
		t.Fatalf("huge: %d bytes, %v", len(v), err)
	}
	if c.Holds("huge") {
		t.Error("a value larger than MaxBytes was kept")
	}
	clk.advance(time.Minute)
	put("a", 200)
	if c.Holds("a") || c.Stats().Bytes != 40 {
		t.Errorf("after a grew past the bound: held %v, %d bytes; want only c's 40", c.Holds("a"), c.Stats().Bytes)
	}
	// Replacing with a smaller value frees bytes.
	put("c", 9)
	clk.advance(time.Minute)
	put("c", 9)
	if s := c.Stats(); s.Bytes != 10 || s.Entries != 1 {
		t.Errorf("stats = %+v, want 10 bytes in 1 entry", s)
	}
}
