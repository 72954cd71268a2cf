package retry

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestBackoffCeiling(t *testing.T) {
	b := Backoff{Base: 200 * time.Millisecond, Cap: 5 * time.Second}
	var got []time.Duration
	for n := range 9 {
		got = append(got, b.Ceiling(n))
	}
	ms := time.Millisecond
	want := []time.Duration{200 * ms, 400 * ms, 800 * ms, 1600 * ms, 3200 * ms, 5000 * ms, 5000 * ms, 5000 * ms, 5000 * ms}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ceilings mismatch (-want +got):\n%s", diff)
	}
	if c := b.Ceiling(1 << 20); c != b.Cap {
		t.Errorf("Ceiling(huge) = %v, want the cap %v (no overflow)", c, b.Cap)
	}
}

func TestBackoffDelayFullJitter(t *testing.T) {
	const rounds = 2000
	newBackoff := func() Backoff {
		return Backoff{Base: DefaultBase, Cap: DefaultCap, Rand: rand.New(rand.NewPCG(1, 2))}
	}
	// The same seed gives the same sequence: the delays are computed, not
	// measured.
	a, b := newBackoff(), newBackoff()
	var seqA, seqB []time.Duration
	for n := range 8 {
		seqA = append(seqA, a.Delay(n))
		seqB = append(seqB, b.Delay(n))
	}
	if diff := cmp.Diff(seqA, seqB); diff != "" {
		t.Errorf("seeded sequences differ (-first +second):\n%s", diff)
	}

	// Every delay lies in [0, ceiling]; the mean grows with the ceiling
	// until the cap, then stays put.
	bo := newBackoff()
	means := make([]time.Duration, 8)
	for n := range means {
		var sum time.Duration
		for range rounds {
			d := bo.Delay(n)
			if d < 0 || d > bo.Ceiling(n) {
				t.Fatalf("Delay(%d) = %v, outside [0, %v]", n, d, bo.Ceiling(n))
			}
			sum += d
		}
		means[n] = sum / rounds
	}
	for n := 1; n < len(means); n++ {
		ratio := float64(means[n]) / float64(means[n-1])
		switch {
		case bo.Ceiling(n) > bo.Ceiling(n-1) && ratio < 1.3:
			t.Errorf("mean delay did not grow from retry %d to %d: %v -> %v", n-1, n, means[n-1], means[n])
		case bo.Ceiling(n) == bo.Cap && bo.Ceiling(n-1) == bo.Cap && (ratio < 0.8 || ratio > 1.25):
			t.Errorf("mean delay not stable at the cap from retry %d to %d: %v -> %v", n-1, n, means[n-1], means[n])
		}
	}
	if means[len(means)-1] > DefaultCap {
		t.Errorf("mean delay %v above the cap", means[len(means)-1])
	}
}

var (
	errRetryable = errors.New("retryable")
	errFinal     = errors.New("final")
)

func TestDoCounts(t *testing.T) {
	noWait := Backoff{} // zero ceilings: no waiting in unit tests
	tests := []struct {
		name         string
		retries      int
		results      []error // what each attempt returns; the last repeats
		wantAttempts int
		wantErr      error
	}{
		{name: "success first", retries: 3, results: []error{nil}, wantAttempts: 1},
		{name: "zero retries means one attempt", retries: 0, results: []error{errRetryable}, wantAttempts: 1, wantErr: errRetryable},
		{name: "retries after the first attempt", retries: 2, results: []error{errRetryable}, wantAttempts: 3, wantErr: errRetryable},
		{name: "success after retries", retries: 5, results: []error{errRetryable, errRetryable, nil}, wantAttempts: 3},
		{name: "final error stops", retries: 5, results: []error{errRetryable, errFinal}, wantAttempts: 2, wantErr: errFinal},
		{name: "negative retries count as zero", retries: -3, results: []error{errRetryable}, wantAttempts: 1, wantErr: errRetryable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			var waits []int
			p := Policy{
				Retries:   tt.retries,
				Backoff:   noWait,
				Retryable: func(err error) bool { return errors.Is(err, errRetryable) },
				OnRetry:   func(n int, _ error, _ time.Duration) { waits = append(waits, n) },
			}
			attempts, err := p.Do(t.Context(), func(context.Context) error {
				r := tt.results[min(calls, len(tt.results)-1)]
				calls++
				return r
			})
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Errorf("Do error = %v, want %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.wantAttempts, attempts); diff != "" {
				t.Errorf("attempts (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantAttempts, calls); diff != "" {
				t.Errorf("calls (-want +got):\n%s", diff)
			}
			if len(waits) != max(0, attempts-1) && tt.wantErr != errFinal {
				t.Errorf("OnRetry called %d times for %d attempts", len(waits), attempts)
			}
		})
	}
}

func TestDoAttemptTimeout(t *testing.T) {
	p := Policy{Retries: 2, AttemptTimeout: 20 * time.Millisecond, Retryable: func(error) bool { return false }}
	calls := 0
	attempts, err := p.Do(t.Context(), func(ctx context.Context) error {
		calls++
		<-ctx.Done() // a hung server
		return ctx.Err()
	})
	// Attempt timeouts are retryable even when the classifier says no.
	if attempts != 3 || calls != 3 {
		t.Errorf("attempts = %d, calls = %d, want 3", attempts, calls)
	}
	if te, ok := errors.AsType[*AttemptTimeoutError](err); !ok || te.Timeout != p.AttemptTimeout {
		t.Errorf("error = %v, want an AttemptTimeoutError", err)
	}
}

func TestDoStopsWhenContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	p := Policy{Retries: 1000, Backoff: Backoff{Base: time.Hour, Cap: time.Hour}}
	attempts, err := p.Do(ctx, func(context.Context) error {
		cancel() // the overall deadline passes during the first attempt
		return errRetryable
	})
	if attempts != 1 || !errors.Is(err, errRetryable) || ctx.Err() == nil {
		t.Errorf("attempts = %d, err = %v, ctx.Err = %v; want 1 attempt, the attempt's error, an ended context", attempts, err, ctx.Err())
	}

	ctx2, cancel2 := context.WithTimeout(t.Context(), 10*time.Millisecond)
	defer cancel2()
	attempts, err = p.Do(ctx2, func(context.Context) error { return errRetryable })
	// The hour-long wait is cut short by the deadline.
	if attempts != 1 || !errors.Is(err, errRetryable) {
		t.Errorf("attempts = %d, err = %v; want 1 attempt then the deadline", attempts, err)
	}
}

// hintedErr is a failure that asks for a wait, like a 429 with Retry-After.
type hintedErr struct{ wait time.Duration }

func (e hintedErr) Error() string                     { return "overloaded" }
func (e hintedErr) RetryAfter() (time.Duration, bool) { return e.wait, true }

func TestDoHonoursHints(t *testing.T) {
	const hint = 20 * time.Millisecond
	calls := 0
	var waits []time.Duration
	p := Policy{
		Retries: 0, // hinted retries do not use up Retries
		Backoff: Backoff{Base: time.Hour, Cap: time.Hour, Rand: rand.New(rand.NewPCG(3, 4))},
		OnRetry: func(_ int, _ error, d time.Duration) { waits = append(waits, d) },
	}
	attempts, err := p.Do(t.Context(), func(context.Context) error {
		calls++
		if calls <= 2 {
			return fmt.Errorf("attempt %d: %w", calls, hintedErr{hint}) // wrapped, as callers do
		}
		return nil
	})
	if err != nil || attempts != 3 {
		t.Fatalf("Do = %d attempts, %v; want success on the third", attempts, err)
	}
	for _, w := range waits {
		if w < hint || w > hint*5/4 {
			t.Errorf("wait %s, want the hint %s plus at most a quarter (not the backoff)", w, hint)
		}
	}
}

func TestDoBoundsHints(t *testing.T) {
	t.Run("MaxHint bounds one wait", func(t *testing.T) {
		var waits []time.Duration
		p := Policy{MaxHint: 5 * time.Millisecond, OnRetry: func(_ int, _ error, d time.Duration) { waits = append(waits, d) }}
		calls := 0
		p.Do(t.Context(), func(context.Context) error {
			if calls++; calls == 1 {
				return hintedErr{time.Hour}
			}
			return nil
		})
		if len(waits) != 1 || waits[0] > 5*time.Millisecond {
			t.Errorf("waits = %v, want one of at most 5ms", waits)
		}
	})
	t.Run("MaxHinted bounds the hinted retries, then Retries apply", func(t *testing.T) {
		p := Policy{Retries: 1, MaxHinted: 3, Backoff: Backoff{}}
		attempts, err := p.Do(t.Context(), func(context.Context) error { return hintedErr{0} })
		if attempts != 5 || err == nil {
			t.Errorf("attempts = %d, %v; want 1 + 3 hinted + 1 retry", attempts, err)
		}
	})
	t.Run("negative MaxHinted retries hinted failures like others", func(t *testing.T) {
		p := Policy{Retries: 1, MaxHinted: -1, Backoff: Backoff{}}
		if attempts, _ := p.Do(t.Context(), func(context.Context) error { return hintedErr{time.Hour} }); attempts != 2 {
			t.Errorf("attempts = %d, want 2", attempts)
		}
	})
	t.Run("a hint past the deadline ends with the deadline", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		p := Policy{MaxHint: time.Hour}
		attempts, err := p.Do(ctx, func(context.Context) error { return hintedErr{time.Hour} })
		if attempts != 1 || ctx.Err() == nil {
			t.Errorf("attempts = %d, ctx %v; want one attempt and the deadline passed", attempts, ctx.Err())
		}
		if d, ok := HintOf(err); !ok || d != time.Hour {
			t.Errorf("error = %v: want the hinted error back", err)
		}
	})
	t.Run("not retryable is not retried whatever the hint", func(t *testing.T) {
		p := Policy{Retries: 3, Retryable: func(error) bool { return false }}
		if attempts, _ := p.Do(t.Context(), func(context.Context) error { return hintedErr{0} }); attempts != 1 {
			t.Errorf("attempts = %d, want 1", attempts)
		}
	})
}
