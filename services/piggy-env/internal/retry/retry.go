// Package retry runs an operation with a bounded number of retries,
// exponential backoff with full jitter between attempts and a timeout per
// attempt. The overall deadline is the caller's context.
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
	for {
		attempts++
		err = p.attempt(ctx, fn)
		if err == nil {
			return attempts, nil
		}
		if ctx.Err() != nil || attempts > p.Retries || !p.retryable(err) {
			return attempts, err
		}
		wait := p.Backoff.Delay(attempts - 1)
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
