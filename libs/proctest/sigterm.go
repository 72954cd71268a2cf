package proctest

import (
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// SIGTERMOutcome are the figures of UnderSIGTERM.
type SIGTERMOutcome struct {
	// Answered counts the requests answered as expected, AfterSignal those
	// of them sent after SIGTERM.
	Answered, AfterSignal int64
	// Code is the exit code, Took the time from SIGTERM to the exit.
	Code int
	Took time.Duration
	// Failed are the accepted requests that failed.
	Failed []string
	// NeverAccepted are the errors of the requests the server never
	// accepted (at most one a caller: it stops there).
	NeverAccepted []string
}

// UnderSIGTERM stops p with SIGTERM while callers callers make requests in
// a loop, and checks that no request the server accepted is lost.
//
// newCaller is called once per caller: it returns the caller's call, which
// makes one request on the caller's own client (one connection, as the
// services' real clients hold) and returns nil when the answer is the
// expected one, and done, which releases the client. Calls bound their own
// time; they should be generous about it.
//
// A call error counts as a request the server never accepted only when
// NeverAccepted says so; then the caller stops (its connection is gone and
// the listener is closed, so every later call is refused the same way).
// Any other error is an accepted request that failed, and so is a refusal
// before the signal (the server is up then). The signal is sent once every
// caller's first call has returned, plus a moment for the callers to
// overlap; the test then waits up to a minute for the exit.
//
// It logs the figures, fails the test unless the exit code is 0 and no
// accepted request failed, and returns the figures.
func UnderSIGTERM(t testing.TB, p *Process, callers int, newCaller func() (call func() error, done func())) SIGTERMOutcome {
	t.Helper()
	var (
		signalled           atomic.Bool
		answered, afterSign atomic.Int64
		mu                  sync.Mutex
		failed, refused     []string
		started, wg         sync.WaitGroup
		stop                = make(chan struct{})
		stopOnce            sync.Once
	)
	end := func() { stopOnce.Do(func() { close(stop) }); wg.Wait() }
	defer end() // also after a fatal Stop: the callers end before the test
	started.Add(callers)
	for range callers {
		call, done := newCaller()
		wg.Go(func() {
			defer done()
			going := sync.OnceFunc(started.Done)
			defer going()
			for {
				select {
				case <-stop:
					return
				default:
				}
				after := signalled.Load()
				err := call()
				going()
				switch {
				case err != nil && NeverAccepted(err) && signalled.Load():
					mu.Lock()
					refused = append(refused, err.Error())
					mu.Unlock()
					return
				case err != nil && NeverAccepted(err):
					mu.Lock()
					failed = append(failed, "before SIGTERM: "+err.Error())
					mu.Unlock()
					return
				case err != nil:
					mu.Lock()
					failed = append(failed, err.Error())
					mu.Unlock()
				default:
					answered.Add(1)
					if after {
						afterSign.Add(1)
					}
				}
			}
		})
	}
	started.Wait()
	time.Sleep(300 * time.Millisecond) // let the callers overlap
	signalled.Store(true)
	code, took := p.Stop(t, syscall.SIGTERM, time.Minute)
	end()
	out := SIGTERMOutcome{Answered: answered.Load(), AfterSignal: afterSign.Load(), Code: code, Took: took, Failed: failed, NeverAccepted: refused}
	t.Logf("%d requests answered, %d of them after SIGTERM; exit %d after %s; failed accepted requests: %d; never accepted: %d",
		out.Answered, out.AfterSignal, out.Code, out.Took.Round(time.Millisecond), len(out.Failed), len(out.NeverAccepted))
	if len(refused) > 0 {
		t.Logf("never accepted, for example: %s", refused[0])
	}
	if code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	for i, f := range failed {
		if i == 5 {
			t.Errorf("... and %d more", len(failed)-5)
			break
		}
		t.Errorf("accepted request failed: %s", f)
	}
	return out
}

// NeverAccepted reports whether err is the failure of a request the
// server never accepted, so that losing it breaks no promise:
//
//   - HTTP: the dial failed (a *net.OpError of op "dial" anywhere in the
//     chain): the listener was closed. This is also what the HTTP/2
//     transport reports when it retries, on a new connection, a request
//     the server's GOAWAY said it had not processed.
//   - gRPC: grpc-go's own codes.Unavailable for a stream the server never
//     saw: the dial failed ("Error while dialing" with "connection
//     refused"), the transport was draining when the stream was to start
//     or the server's GOAWAY excluded it ("the connection is draining"),
//     or the server refused the stream (REFUSED_STREAM). grpc-go retries
//     such a stream once by itself; these are what is left when the retry
//     fails too. Other Unavailable texts ("error reading from server",
//     "transport is closing", "connection closed") may be streams the
//     server had started handling, so they count as failures.
func NeverAccepted(err error) bool {
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Op == "dial" {
		return true
	}
	s, ok := status.FromError(err)
	if !ok || s.Code() != codes.Unavailable {
		return false
	}
	m := s.Message()
	return strings.Contains(m, "Error while dialing") && strings.Contains(m, "connection refused") ||
		strings.Contains(m, "the connection is draining") ||
		strings.Contains(m, "REFUSED_STREAM")
}
