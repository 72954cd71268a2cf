package awslocal_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/google/go-cmp/cmp"

	"github.com/piggysec/piggy/libs/awslocal"
)

// TestFaultsRetriedBySDK checks that transient faults are retried by the
// SDK's standard retryer (three attempts) and that Calls counts attempts.
func TestFaultsRetriedBySDK(t *testing.T) {
	srv, ts := newServer(t, awslocal.Options{})
	if _, err := srv.PutSecretString("s", "v"); err != nil {
		t.Fatal(err)
	}
	client := secretsmanager.NewFromConfig(staticConfig(t, ts, testKeyID, testSecret, "", testRegion))

	tests := []struct {
		name      string
		fault     awslocal.Fault
		wantCalls int
	}{
		{"throttled twice", awslocal.Fault{Service: "secretsmanager", Operation: "GetSecretValue", Kind: awslocal.FaultThrottle, Times: 2}, 3},
		{"5xx twice", awslocal.Fault{Service: "secretsmanager", Kind: awslocal.FaultServerError, Times: 2}, 3},
		{"connection closed once", awslocal.Fault{Kind: awslocal.FaultCloseConnection, Times: 1}, 2},
		{"latency", awslocal.Fault{Operation: "GetSecretValue", Kind: awslocal.FaultLatency, Latency: 20 * time.Millisecond, Times: 1}, 1},
		{"other operation unaffected", awslocal.Fault{Operation: "PutSecretValue", Kind: awslocal.FaultThrottle}, 1},
		{"other service unaffected", awslocal.Fault{Service: "ssm", Kind: awslocal.FaultServerError}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv.ResetCalls()
			t.Cleanup(srv.ClearFaults)
			if err := srv.InjectFault(tt.fault); err != nil {
				t.Fatal(err)
			}
			out, err := client.GetSecretValue(t.Context(), &secretsmanager.GetSecretValueInput{SecretId: aws.String("s")})
			if err != nil || aws.ToString(out.SecretString) != "v" {
				t.Fatalf("GetSecretValue = %v, %v; want success after retries", out, err)
			}
			if got := srv.Calls(awslocal.ServiceSecretsManager, "GetSecretValue"); got != tt.wantCalls {
				t.Errorf("calls = %d, want %d", got, tt.wantCalls)
			}
		})
	}

	t.Run("latency beyond the caller's deadline", func(t *testing.T) {
		t.Cleanup(srv.ClearFaults)
		if err := srv.InjectFault(awslocal.Fault{Kind: awslocal.FaultLatency, Latency: time.Minute}); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		if _, err := client.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String("s")}); err == nil {
			t.Error("GetSecretValue succeeded despite a minute of latency")
		}
	})
}

func TestInjectFaultValidation(t *testing.T) {
	srv, err := awslocal.New(awslocal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []awslocal.Fault{
		{Kind: "explode"},
		{Kind: awslocal.FaultLatency},
		{Kind: awslocal.FaultError},
		{Kind: awslocal.FaultError, Code: "X", Status: 200},
		{Kind: awslocal.FaultThrottle, Times: -1},
	} {
		if err := srv.InjectFault(f); err == nil {
			t.Errorf("InjectFault(%+v) = nil, want an error", f)
		}
	}
	if got := srv.Faults(); len(got) != 0 {
		t.Errorf("Faults() = %v, want none", got)
	}
}

// TestAdminHandler drives faults and counters over HTTP, as the binary does.
func TestAdminHandler(t *testing.T) {
	srv, ts := newServer(t, awslocal.Options{})
	admin := httptest.NewServer(srv.AdminHandler())
	t.Cleanup(admin.Close)
	if _, err := srv.PutParameter("/p", awslocal.ParameterString, "v"); err != nil {
		t.Fatal(err)
	}
	client := ssm.NewFromConfig(staticConfig(t, ts, testKeyID, testSecret, "", testRegion))

	do := func(method, path, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), method, admin.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, strings.TrimSpace(readAll(t, resp))
	}
	steps := []struct {
		method, path, body string
		wantStatus         int
		wantBody           string
	}{
		{"POST", "/_awslocal/faults", `{"service":"ssm","operation":"GetParameter","kind":"throttle","times":2}`, 204, ""},
		{"POST", "/_awslocal/faults", `{"kind":"latency","latency":"1ms","times":1}`, 204, ""},
		{"POST", "/_awslocal/faults", `{"kind":"latency","latency":"soon"}`, 400, `{"error":"latency: time: invalid duration \"soon\""}`},
		{"POST", "/_awslocal/faults", `{"kind":"throttle","bogus":1}`, 400, `{"error":"decode fault: json: unknown field \"bogus\""}`},
		{"GET", "/_awslocal/faults", "", 200, `[{"service":"ssm","operation":"GetParameter","kind":"throttle","times":2},{"kind":"latency","times":1,"latency":"1ms"}]`},
		{"CALL", "", "", 0, ""},
		{"GET", "/_awslocal/faults", "", 200, `[]`},
		{"GET", "/_awslocal/calls?service=ssm&operation=GetParameter", "", 200, `{"count":3}`},
		{"GET", "/_awslocal/calls", "", 200, `{"count":3}`},
		{"DELETE", "/_awslocal/calls", "", 204, ""},
		{"GET", "/_awslocal/calls?service=ssm", "", 200, `{"count":0}`},
		{"POST", "/_awslocal/faults", `{"kind":"server-error"}`, 204, ""},
		{"DELETE", "/_awslocal/faults", "", 204, ""},
		{"GET", "/_awslocal/faults", "", 200, `[]`},
	}
	for i, st := range steps {
		if st.method == "CALL" {
			if _, err := client.GetParameter(t.Context(), &ssm.GetParameterInput{Name: aws.String("/p")}); err != nil {
				t.Fatalf("step %d: GetParameter after two throttles: %v", i, err)
			}
			continue
		}
		status, body := do(st.method, st.path, st.body)
		if diff := cmp.Diff(fmt.Sprint(st.wantStatus, " ", st.wantBody), fmt.Sprint(status, " ", body)); diff != "" {
			t.Errorf("step %d %s %s (-want +got):\n%s", i, st.method, st.path, diff)
		}
	}
}

// TestConcurrentUse runs SDK clients, seeding and fault control in parallel;
// run with -race.
func TestConcurrentUse(t *testing.T) {
	srv, ts := newServer(t, awslocal.Options{})
	cfg := staticConfig(t, ts, testKeyID, testSecret, "", testRegion)
	sm, params := secretsmanager.NewFromConfig(cfg), ssm.NewFromConfig(cfg)
	if _, err := srv.PutSecretString("shared", "0"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := range 4 {
		wg.Go(func() {
			for i := range 10 {
				if _, err := sm.PutSecretValue(t.Context(), &secretsmanager.PutSecretValueInput{SecretId: aws.String("shared"), SecretString: aws.String(fmt.Sprint(w, i))}); err != nil {
					errs <- err
				}
				if _, err := sm.GetSecretValue(t.Context(), &secretsmanager.GetSecretValueInput{SecretId: aws.String("shared"), VersionStage: aws.String("AWSPREVIOUS")}); err != nil {
					errs <- err
				}
				if _, err := params.PutParameter(t.Context(), &ssm.PutParameterInput{Name: aws.String(fmt.Sprintf("/c/w%d/p%d", w, i)), Value: aws.String("v"), Type: "String"}); err != nil {
					errs <- err
				}
				if _, err := params.GetParametersByPath(t.Context(), &ssm.GetParametersByPathInput{Path: aws.String("/c"), Recursive: aws.Bool(true)}); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Go(func() {
		for i := range 20 {
			_ = srv.InjectFault(awslocal.Fault{Kind: awslocal.FaultLatency, Latency: time.Millisecond, Times: 1})
			_ = srv.Calls("", "")
			_, _ = srv.PutParameter(fmt.Sprintf("/c/seed%d", i), awslocal.ParameterSecureString, "v")
			_ = srv.Faults()
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent call: %v", err)
	}
}

// TestLogsHoldNoValues checks debug logs never contain secret values,
// parameter values, keys or tokens.
func TestLogsHoldNoValues(t *testing.T) {
	var logs bytes.Buffer
	var mu sync.Mutex
	_, ts := newServer(t, awslocal.Options{Logger: slog.New(slog.NewJSONHandler(lockedWriter{&mu, &logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	const marker = "hunter2-do-not-log"
	cfg := staticConfig(t, ts, testKeyID, testSecret, "", testRegion)
	sm := secretsmanager.NewFromConfig(cfg)
	if _, err := sm.CreateSecret(t.Context(), &secretsmanager.CreateSecretInput{Name: aws.String("s"), SecretString: aws.String(marker)}); err != nil {
		t.Fatal(err)
	}
	if _, err := sm.GetSecretValue(t.Context(), &secretsmanager.GetSecretValueInput{SecretId: aws.String("s")}); err != nil {
		t.Fatal(err)
	}
	if _, err := ssm.NewFromConfig(cfg).PutParameter(t.Context(), &ssm.PutParameterInput{Name: aws.String("/p"), Value: aws.String(marker), Type: "SecureString"}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, forbidden := range []string{marker, testSecret} {
		if strings.Contains(logs.String(), forbidden) {
			t.Errorf("logs contain %q:\n%s", forbidden, logs.String())
		}
	}
	var line map[string]any
	if err := json.Unmarshal(bytes.SplitN(logs.Bytes(), []byte("\n"), 2)[0], &line); err != nil || line["service"] != "secretsmanager" {
		t.Errorf("first log line = %v (%v), want a secretsmanager request line", line, err)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}
