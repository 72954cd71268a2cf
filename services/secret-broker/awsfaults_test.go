package main

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/piggysec/piggy/libs/awslocal"
)

// defaultRequestTimeout is the broker's --request-timeout default.
const defaultRequestTimeout = 8 * time.Second

// TestStaleValueWhileAWSHangs black-holes Secrets Manager (every call hangs
// until the caller gives up) after a value was read and its TTL passed: the
// broker still answers with the value it read, before its request timeout,
// while the stale window lasts; past the window it answers 503 naming the
// secret and holding no value. The SDK's retry settings are the defaults.
func TestStaleValueWhileAWSHangs(t *testing.T) {
	const ttl, window = time.Second, 4 * time.Second
	w := newWorld(t, worldOptions{args: []string{
		"--secret-cache-ttl=" + ttl.String(), "--stale-if-error=" + window.String(),
		"--aws-max-backoff=1s", // the default, instead of the world's short one
	}})
	ns := w.namespace("team-hang-", "web")
	value := secretValue("hang")
	w.seed(ns+"/web", map[string]string{"db": value})
	pod, ctr := w.piggyPod(ns, "web-1", "web", nil)
	tok := w.podToken(pod)

	if got := w.getSecrets(t, tok, ctr, "db"); got.Status != http.StatusOK || got.Values["db"] != value {
		t.Fatalf("first read: HTTP %d %q", got.Status, got.Message)
	}
	read := time.Now()
	time.Sleep(time.Until(read.Add(ttl + 200*time.Millisecond)))
	if err := w.aws.InjectFault(awslocal.Fault{Service: awslocal.ServiceSecretsManager, Operation: "GetSecretValue", Kind: awslocal.FaultLatency, Latency: time.Hour}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.aws.ClearFaults)

	t.Run("inside the window the stale value answers", func(t *testing.T) {
		start := time.Now()
		got := w.getSecrets(t, tok, ctr, "db")
		took := time.Since(start)
		t.Logf("time to a stale answer with AWS hanging: %s (request timeout %s)", took.Round(time.Millisecond), defaultRequestTimeout)
		if got.Status != http.StatusOK || got.Values["db"] != value {
			t.Fatalf("HTTP %d %q after %s; want the stale value", got.Status, got.Message, took)
		}
		if took >= defaultRequestTimeout {
			t.Errorf("the stale answer took %s, not within the request timeout %s", took, defaultRequestTimeout)
		}
		w.proc.WaitForRecord(t, 5*time.Second, func(r map[string]any) bool {
			return r["pod_name"] == "web-1" && r["namespace"] == ns && r["cache"] == "stale"
		})
		if n := metric(w.brokerMetrics(t), "piggy_secret_broker_cache_stale_served_total", "cache", "secrets"); n < 1 {
			t.Errorf("stale_served = %v, want at least 1", n)
		}
	})

	t.Run("past the window the answer is 503 without a value", func(t *testing.T) {
		time.Sleep(time.Until(read.Add(ttl + window + 200*time.Millisecond)))
		start := time.Now()
		got := w.getSecrets(t, tok, ctr, "db")
		took := time.Since(start)
		t.Logf("time to the 503 past the stale window with AWS hanging: %s", took.Round(time.Millisecond))
		if got.Status != http.StatusServiceUnavailable || got.Code != int(codes.Unavailable) || len(got.Values) != 0 {
			t.Errorf("HTTP %d code %d %q, want 503 Unavailable", got.Status, got.Code, got.Message)
		}
		if !strings.Contains(got.Message, ns+"/web") || strings.Contains(got.Message, value) {
			t.Errorf("message %q: want the secret's name and no value", got.Message)
		}
	})
}

// TestRejectedCredentialsAreRenewed has AWS reject the broker's session
// credentials, through awslocal's fault injection (each code AWS uses for
// it) and for real (AWS's clock past their expiry while the broker's is
// not): the broker drops them, gets new ones from STS and repeats the read
// once; when the new ones are rejected too, the request fails and the next
// one gets new credentials again.
func TestRejectedCredentialsAreRenewed(t *testing.T) {
	var (
		mu    sync.Mutex
		ahead time.Duration // awslocal's clock ahead of the broker's
	)
	awsNow := func() time.Time { mu.Lock(); defer mu.Unlock(); return time.Now().Add(ahead) }
	// Issued credentials live 10 minutes; moving AWS's clock 11 minutes on
	// expires them there while signatures stay within AWS's 15 minutes of
	// allowed clock skew.
	const lifetime = 10 * time.Minute
	w := newWorld(t, worldOptions{
		// Every request reads AWS, and a failure is not hidden by a stale value.
		args: []string{"--secret-cache-ttl=1ns", "--stale-if-error=0s"},
		aws:  func(o *awslocal.Options) { o.Now = awsNow; o.CredentialDuration = lifetime },
	})
	ns := w.namespace("team-creds-", "web")
	value := secretValue("creds")
	w.seed(ns+"/web", map[string]string{"db": value})
	pod, ctr := w.piggyPod(ns, "web-1", "web", nil)
	tok := w.podToken(pod)
	stsCalls := func() int { return w.aws.Calls(awslocal.ServiceSTS, "AssumeRoleWithWebIdentity") }
	reads := func() int { return w.aws.Calls(awslocal.ServiceSecretsManager, "GetSecretValue") }
	served := func(t *testing.T) {
		t.Helper()
		if got := w.getSecrets(t, tok, ctr, "db"); got.Status != http.StatusOK || got.Values["db"] != value {
			t.Fatalf("HTTP %d %q, want the value", got.Status, got.Message)
		}
	}
	served(t)
	if n := stsCalls(); n != 1 {
		t.Fatalf("AssumeRoleWithWebIdentity calls = %d, want 1", n)
	}

	rejections := []struct {
		code   string
		status int
	}{
		{"UnrecognizedClientException", http.StatusBadRequest},
		{"InvalidClientTokenId", http.StatusForbidden},
		{"ExpiredToken", http.StatusBadRequest},
		{"ExpiredTokenException", http.StatusBadRequest},
	}
	for _, r := range rejections {
		t.Run(r.code+" once: read again with new credentials", func(t *testing.T) {
			sts, gsv := stsCalls(), reads()
			if err := w.aws.InjectFault(awslocal.Fault{Service: awslocal.ServiceSecretsManager, Operation: "GetSecretValue", Kind: awslocal.FaultError,
				Code: r.code, Status: r.status, Message: "The security token included in the request is invalid.", Times: 1}); err != nil {
				t.Fatal(err)
			}
			defer w.aws.ClearFaults()
			served(t)
			if n := stsCalls() - sts; n != 1 {
				t.Errorf("AssumeRoleWithWebIdentity calls = %d, want 1 after the rejection", n)
			}
			if n := reads() - gsv; n != 2 {
				t.Errorf("GetSecretValue calls = %d, want 2 (rejected, then with new credentials)", n)
			}
		})
	}

	t.Run("rejected twice: the request fails, the next gets new credentials", func(t *testing.T) {
		sts := stsCalls()
		if err := w.aws.InjectFault(awslocal.Fault{Service: awslocal.ServiceSecretsManager, Operation: "GetSecretValue", Kind: awslocal.FaultError,
			Code: "UnrecognizedClientException", Message: "The security token included in the request is invalid.", Times: 2}); err != nil {
			t.Fatal(err)
		}
		defer w.aws.ClearFaults()
		got := w.getSecrets(t, tok, ctr, "db")
		if got.Status != http.StatusServiceUnavailable || len(got.Values) != 0 || !strings.Contains(got.Message, "credentials") || strings.Contains(got.Message, value) {
			t.Errorf("HTTP %d %q, want 503 about the credentials without a value", got.Status, got.Message)
		}
		served(t)
		if n := stsCalls() - sts; n != 2 {
			t.Errorf("AssumeRoleWithWebIdentity calls = %d, want 2 (one per rejection)", n)
		}
	})

	t.Run("expired on AWS's clock", func(t *testing.T) {
		sts := stsCalls()
		mu.Lock()
		ahead = lifetime + time.Minute
		mu.Unlock()
		served(t)
		if n := stsCalls() - sts; n != 1 {
			t.Errorf("AssumeRoleWithWebIdentity calls = %d, want 1", n)
		}
		served(t)
		if n := stsCalls() - sts; n != 1 {
			t.Errorf("AssumeRoleWithWebIdentity calls = %d after a second read, want still 1", n)
		}
	})
}
