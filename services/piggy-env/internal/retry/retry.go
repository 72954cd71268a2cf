// Package retry runs an operation with a bounded number of retries,
// exponential backoff with full jitter between attempts and a timeout per
// attempt. The overall deadline is the caller's context.
//
// A failure that carries a retry hint (Hinted: an overloaded server's
// Retry-After) is retried after the hinted wait, bounded by
// Policy.MaxHint and with up to a quarter more of jitter, instead of the
// backoff. The server asked for it, so such retries do not use up
// Policy.Retries; Policy.MaxHinted bounds them, and the context's deadline
// bounds all.
package retry

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// Default backoff bounds.
const (
	DefaultBase = 200 * time.Millisecond
	DefaultCap  = 5 * time.Second
)

// Defaults of the hinted retries.
const (
	// DefaultMaxHint bounds one hinted wait.
	DefaultMaxHint = 10 * time.Second
	// DefaultMaxHinted bounds the hinted retries of one Do.
	DefaultMaxHinted = 30
)

// Hinted is implemented by errors that say how long to wait before a retry
// (for example an HTTP 429 with Retry-After).
type Hinted interface {
	// RetryAfter returns the wait, and whether there is one.
	RetryAfter() (time.Duration, bool)
}

// HintOf returns the retry hint in err's chain.
func HintOf(err error) (time.Duration, bool) {
	var h Hinted
	if errors.As(err, &h) {
		return h.RetryAfter()
	}
	return 0, false
}

// Backoff computes the wait before a retry: a uniformly random duration in
// [0, min(Cap, Base*2^n)] for the n-th retry ("full jitter").
type Backoff struct {
	// Base is the ceiling of the first wait.
	Base time.Duration
	// Cap bounds every ceiling.
	Cap time.Duration
	// Rand is the jitter source; nil uses the global math/rand/v2 source.
	// A *rand.Rand is not safe for concurrent use: give each Backoff its
	// own.
	Rand *rand.Rand
}

// Ceiling returns the largest wait before retry n (0 for the first retry):
// min(Cap, Base*2^n).
func (b Backoff) Ceiling(n int) time.Duration {
	c := b.Base
	for i := 0; i < n && c < b.Cap; i++ {
		c *= 2
	}
	return min(c, b.Cap)
}

// Delay returns a jittered wait before retry n, in [0, Ceiling(n)].
func (b Backoff) Delay(n int) time.Duration {
	c := int64(b.Ceiling(n))
	if c <= 0 {
		return 0
	}
	if b.Rand != nil {
		return time.Duration(b.Rand.Int64N(c + 1))
	}
	return time.Duration(rand.Int64N(c + 1))
}

// Policy says how often and how long to try.
type Policy struct {
	// Retries is the number of retries after the first attempt; negative
	// values count as 0.
	Retries int
	// AttemptTimeout bounds each attempt; 0 means no bound other than the
	// context.
	AttemptTimeout time.Duration
	// Backoff computes the waits between attempts.
	Backoff Backoff
	// Retryable reports whether a failed attempt may be retried; nil means
	// every error is retryable. Attempts that hit AttemptTimeout are always
	// retryable.
	Retryable func(error) bool
	// MaxHint bounds the wait a hint can ask for; 0 means DefaultMaxHint.
	MaxHint time.Duration
	// MaxHinted bounds the hinted retries, which do not count against
	// Retries; 0 means DefaultMaxHinted, negative disables hinted retries
	// (hinted failures are then retried like others).
	MaxHinted int
	// OnRetry, when set, is called before each wait with the attempt that
	// failed (1-based), its error and the wait.
	OnRetry func(attempt int, err error, wait time.Duration)
}

// AttemptTimeoutError is the error of an attempt that did not finish within
// Policy.AttemptTimeout.
type AttemptTimeoutError struct {
	// Timeout is the per-attempt timeout.
	Timeout time.Duration
	// Err is what the attempt returned.
	Err error
}

// Error implements error.
func (e *AttemptTimeoutError) Error() string {
	return fmt.Sprintf("no answer within the per-attempt timeout of %s: %v", e.Timeout, e.Err)
}

// Unwrap returns the attempt's error.
func (e *AttemptTimeoutError) Unwrap() error { return e.Err }

// Do calls fn until it succeeds, fails with an error that is not retryable,
// has used up the retries or ctx ends. It returns the number of attempts made
// and nil or the last attempt's error; when ctx ended (overall deadline or
// cancellation) ctx.Err() tells.
func (p Policy) Do(ctx context.Context, fn func(ctx context.Context) error) (attempts int, err error) {
	hinted := 0 // retries after a hint
	for {
		attempts++
		err = p.attempt(ctx, fn)
		if err == nil {
			return attempts, nil
		}
		if ctx.Err() != nil || !p.retryable(err) {
			return attempts, err
		}
		wait, ok := p.hintedWait(err, hinted)
		if ok {
			hinted++
		} else {
			if attempts-hinted > p.Retries {
				return attempts, err
			}
			wait = p.Backoff.Delay(attempts - hinted - 1)
		}
		if p.OnRetry != nil {
			p.OnRetry(attempts, err, wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return attempts, err
		case <-t.C:
		}
	}
}

// hintedWait is the wait before retrying err when it carries a hint and
// hinted retries are left: the hint, at most MaxHint, plus up to a quarter
// of jitter (so that the clients one overload refused do not all come
// back at once), at most MaxHint in all.
func (p Policy) hintedWait(err error, hinted int) (time.Duration, bool) {
	maxHinted := p.MaxHinted
	if maxHinted == 0 {
		maxHinted = DefaultMaxHinted
	}
	if hinted >= maxHinted {
		return 0, false
	}
	hint, ok := HintOf(err)
	if !ok {
		return 0, false
	}
	maxHint := p.MaxHint
	if maxHint <= 0 {
		maxHint = DefaultMaxHint
	}
	hint = min(max(hint, 0), maxHint)
	jitter := Backoff{Base: hint / 4, Cap: hint / 4, Rand: p.Backoff.Rand}.Delay(0)
	return min(hint+jitter, maxHint), true
}

func (p Policy) attempt(ctx context.Context, fn func(ctx context.Context) error) error {
	if p.AttemptTimeout <= 0 {
		return fn(ctx)
	}
	actx, cancel := context.WithTimeout(ctx, p.AttemptTimeout)
	defer cancel()
	err := fn(actx)
	if err != nil && ctx.Err() == nil && errors.Is(actx.Err(), context.DeadlineExceeded) {
		return &AttemptTimeoutError{Timeout: p.AttemptTimeout, Err: err}
	}
	return err
}

func (p Policy) retryable(err error) bool {
	if _, ok := errors.AsType[*AttemptTimeoutError](err); ok {
		return true
	}
	return p.Retryable == nil || p.Retryable(err)
}
