package main

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// overloaded is the broker's answer to a request it throttled: HTTP 429
// with Retry-After and the RetryInfo detail, as its gateway sends it.
func overloaded(retryAfter string) reply {
	return reply{status: 429, retryAfter: retryAfter,
		body: `{"code":8,"message":"the secret broker is overloaded: too many requests from this address; retry in ` + retryAfter + `s",` +
			`"details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"` + retryAfter + `s"}]}`}
}

// TestProcessHonoursRetryAfter: an overloaded broker answers 429 with
// Retry-After: 1; piggy-env waits at least that long and asks again, even
// with no retries configured (the default), and starts the command.
func TestProcessHonoursRetryAfter(t *testing.T) {
	t.Parallel()
	b := newFakeBroker(t, overloaded("1"), overloaded("1"), ok(map[string]string{"a": "1"}))
	res := runPiggyEnv(t, proxyEnv(t, b, "A=piggy:a", "PIGGY_DEBUG=true"), "--", "child")
	if res.exitCode != 0 || res.child == nil {
		t.Fatalf("exit %d; stderr:\n%s", res.exitCode, res.stderr)
	}
	if diff := cmp.Diff([]string{"A=1"}, envWith(res.child.Env, "A=")); diff != "" {
		t.Errorf("child env mismatch (-want +got):\n%s", diff)
	}
	b.mu.Lock()
	times := append([]time.Time(nil), b.times...)
	b.mu.Unlock()
	if len(times) != 3 {
		t.Fatalf("broker saw %d requests, want 3", len(times))
	}
	// A lower bound only: the wait is a timer, a busy machine makes it longer.
	for i := 1; i < len(times); i++ {
		if gap := times[i].Sub(times[i-1]); gap < time.Second {
			t.Errorf("request %d came %s after the 429 with Retry-After: 1", i+1, gap)
		}
	}
	var waits []string
	for _, l := range res.logs {
		if l.Message == "Request failed; retrying" {
			w, _ := l.Raw["wait"].(string)
			waits = append(waits, w)
			if e, _ := l.Raw["error"].(string); !strings.Contains(e, "overloaded") {
				t.Errorf("retry log error %q does not say the broker is overloaded", e)
			}
		}
	}
	if len(waits) != 2 {
		t.Errorf("retry lines = %v, want two", waits)
	}
}

// TestProcessGivesUpOnAnOverloadedBroker: a broker that stays overloaded is
// asked again after each hint until the overall deadline, and the final
// message says the broker is overloaded and which deadline passed.
func TestProcessGivesUpOnAnOverloadedBroker(t *testing.T) {
	t.Parallel()
	b := newFakeBroker(t, overloaded("1"))
	res := runPiggyEnv(t, proxyEnv(t, b, "A=piggy:a", "PIGGY_TIMEOUT=3s"), "--", "child")
	if res.exitCode == 0 || res.child != nil {
		t.Fatalf("exit %d, child started; want a failure", res.exitCode)
	}
	msg := res.lastError(t)
	for _, want := range []string{"gave up after", "overall timeout of 3s (PIGGY_TIMEOUT)", "HTTP 429 Too Many Requests", "the secret broker is overloaded", "asked to retry after 1s"} {
		if !strings.Contains(msg, want) {
			t.Errorf("final error %q does not contain %q", msg, want)
		}
	}
	// One request per hinted second within the 3 s, not a retry storm.
	if n := len(b.requests()); n < 1 || n > 4 {
		t.Errorf("broker saw %d requests in a 3s deadline with Retry-After: 1, want at most 4", n)
	}
}
