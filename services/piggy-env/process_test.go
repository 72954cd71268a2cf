package main

import (
	"bytes"
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// Binaries built once by TestMain.
var (
	piggyEnvBin string // the real piggy-env, CGO_ENABLED=0
	childBin    string // testdata/child, the application stand-in
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "piggy-env-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	piggyEnvBin = filepath.Join(dir, "piggy-env")
	childBin = filepath.Join(dir, "child")
	for out, pkg := range map[string]string{piggyEnvBin: ".", childBin: "./testdata/child"} {
		cmd := exec.Command(goTool(), "build", "-trimpath", "-o", out, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "go build %s: %v\n%s", pkg, err, b)
			return 1
		}
	}
	return m.Run()
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// reply is one scripted broker answer.
type reply struct {
	status int
	body   string
	hang   bool // never answer; wait for the client to give up
	// retryAfter, when set, is the Retry-After header.
	retryAfter string
}

// seenRequest is what the broker stand-in received.
type seenRequest struct {
	Method, Path, Authorization, ContentType string
	Body                                     map[string]any
}

// fakeBroker is a TLS stand-in for the secret broker's JSON gateway.
type fakeBroker struct {
	srv       *httptest.Server
	caFile    string // PEM of the server's certificate
	tokenFile string // a projected token stand-in
	mu        sync.Mutex
	replies   []reply
	seen      []seenRequest
	times     []time.Time // when each request arrived
}

func newFakeBroker(tb testing.TB, replies ...reply) *fakeBroker {
	tb.Helper()
	b := &fakeBroker{replies: replies}
	b.srv = httptest.NewUnstartedServer(http.HandlerFunc(b.serve))
	b.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // expected TLS handshake failures
	b.srv.StartTLS()
	tb.Cleanup(b.srv.Close)
	dir := tb.TempDir()
	b.caFile = filepath.Join(dir, "ca.crt")
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: b.srv.Certificate().Raw})
	if err := os.WriteFile(b.caFile, ca, 0o444); err != nil {
		tb.Fatal(err)
	}
	b.tokenFile = filepath.Join(dir, "token")
	if err := os.WriteFile(b.tokenFile, []byte("pod-bound-token\n"), 0o400); err != nil {
		tb.Fatal(err)
	}
	return b
}

func (b *fakeBroker) serve(w http.ResponseWriter, r *http.Request) {
	var body map[string]any
	json.NewDecoder(r.Body).Decode(&body)
	b.mu.Lock()
	b.seen = append(b.seen, seenRequest{Method: r.Method, Path: r.URL.Path, Authorization: r.Header.Get("Authorization"),
		ContentType: r.Header.Get("Content-Type"), Body: body})
	b.times = append(b.times, time.Now())
	rep := b.replies[min(len(b.seen), len(b.replies))-1]
	b.mu.Unlock()
	if rep.hang {
		<-r.Context().Done()
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if rep.retryAfter != "" {
		w.Header().Set("Retry-After", rep.retryAfter)
	}
	w.WriteHeader(rep.status)
	io.WriteString(w, rep.body)
}

func (b *fakeBroker) requests() []seenRequest {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.seen)
}

func ok(values map[string]string, missing ...string) reply {
	body, _ := json.Marshal(map[string]any{"values": values, "missingKeys": missing, "sourceName": "team-a/web"})
	return reply{status: 200, body: string(body)}
}

func grpcError(status, code int, msg string) reply {
	body, _ := json.Marshal(map[string]any{"code": code, "message": msg, "details": []any{}})
	return reply{status: status, body: string(body)}
}

// childOutput is what testdata/child printed.
type childOutput struct {
	PID    int      `json:"pid"`
	Args   []string `json:"args"`
	Env    []string `json:"env"`
	SigBlk string   `json:"SigBlk"`
	SigIgn string   `json:"SigIgn"`
	Ready  bool     `json:"ready"`
}

// logLine is one line piggy-env wrote to stderr.
type logLine struct {
	Level   string `json:"level"`
	Time    string `json:"time"`
	Message string `json:"message"`
	Raw     map[string]any
}

// result is one finished piggy-env process.
type result struct {
	pid      int
	exitCode int
	stdout   string
	stderr   string
	logs     []logLine
	child    *childOutput
	elapsed  time.Duration
}

// runPiggyEnv runs the real binary with exactly env and args and waits, at
// most a minute, for it to end.
func runPiggyEnv(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(piggyEnvBin, args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatalf("piggy-env did not end within a minute; stderr:\n%s", stderr.String())
	}
	res := result{pid: cmd.Process.Pid, stdout: stdout.String(), stderr: stderr.String(), elapsed: time.Since(start)}
	if ee, ok := errors.AsType[*exec.ExitError](err); ok {
		res.exitCode = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	res.logs = parseLogs(t, res.stderr)
	if line, _, _ := strings.Cut(res.stdout, "\n"); strings.HasPrefix(line, "{") {
		res.child = new(childOutput)
		if err := json.Unmarshal([]byte(line), res.child); err != nil {
			t.Fatalf("child output %q: %v", line, err)
		}
	}
	return res
}

// parseLogs checks that every stderr line is a JSON log line with level,
// time and message.
func parseLogs(t *testing.T, stderr string) []logLine {
	t.Helper()
	var out []logLine
	for _, line := range strings.Split(strings.TrimSpace(stderr), "\n") {
		if line == "" {
			continue
		}
		var l logLine
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Errorf("stderr line is not JSON: %q", line)
			continue
		}
		json.Unmarshal([]byte(line), &l.Raw)
		if l.Level == "" || l.Message == "" {
			t.Errorf("log line without level or message: %q", line)
		}
		if _, err := time.Parse(time.RFC3339, l.Time); err != nil {
			t.Errorf("log line time %q is not RFC 3339: %q", l.Time, line)
		}
		out = append(out, l)
	}
	return out
}

// messages returns "level: message" for each log line.
func (r result) messages() []string {
	var out []string
	for _, l := range r.logs {
		out = append(out, l.Level+": "+l.Message)
	}
	return out
}

// lastError returns the message of the final error line.
func (r result) lastError(t *testing.T) string {
	t.Helper()
	for i := len(r.logs) - 1; i >= 0; i-- {
		if r.logs[i].Level == "error" {
			return r.logs[i].Message
		}
	}
	t.Fatalf("no error line on stderr:\n%s", r.stderr)
	return ""
}

// proxyEnv is the environment the webhook gives an injected container, plus
// extra entries.
func proxyEnv(t *testing.T, b *fakeBroker, extra ...string) []string {
	t.Helper()
	env := []string{
		"PATH=" + filepath.Dir(childBin) + ":/usr/bin:/bin",
		"HOME=/root",
		"PIGGY_ADDRESS=" + b.srv.URL,
		"PIGGY_UID=c0ffee-uid",
		"PIGGY_TOKEN_FILE=" + b.tokenFile,
		"PIGGY_CA_FILE=" + b.caFile,
	}
	return append(env, extra...)
}

func signature(cmdline string) string {
	sum := sha256.Sum256([]byte(cmdline))
	return hex.EncodeToString(sum[:])
}

func envWith(env []string, prefix string) []string {
	var out []string
	for _, kv := range env {
		if strings.HasPrefix(kv, prefix) {
			out = append(out, kv)
		}
	}
	return out
}

func TestProcessSuccess(t *testing.T) {
	t.Parallel()
	b := newFakeBroker(t, ok(map[string]string{"db-password": "s3cr3t value", "API_KEY": "k=v"}))
	env := proxyEnv(t, b, "DB_PASSWORD=piggy:db-password", "API_KEY=piggy:API_KEY", "PLAIN=piggy", "ALSO=piggy:API_KEY",
		"CHILD_EXIT=42", "PIGGY_DEBUG=true")
	res := runPiggyEnv(t, env, "--", "child", "--port", "8080")

	if res.exitCode != 42 {
		t.Errorf("exit code %d, want the application's 42; stderr:\n%s", res.exitCode, res.stderr)
	}
	if res.child == nil {
		t.Fatalf("the child did not run; stderr:\n%s", res.stderr)
	}
	if res.child.PID != res.pid {
		t.Errorf("child PID %d, piggy-env PID %d: want the same process (exec, not fork)", res.child.PID, res.pid)
	}
	if diff := cmp.Diff([]string{"child", "--port", "8080"}, res.child.Args); diff != "" {
		t.Errorf("child argv mismatch (-want +got):\n%s", diff)
	}
	wantEnv := []string{"PATH=" + filepath.Dir(childBin) + ":/usr/bin:/bin", "HOME=/root",
		"DB_PASSWORD=s3cr3t value", "API_KEY=k=v", "PLAIN=piggy", "ALSO=k=v", "CHILD_EXIT=42"}
	if diff := cmp.Diff(wantEnv, res.child.Env); diff != "" {
		t.Errorf("child environment mismatch (-want +got):\n%s", diff)
	}
	if got := envWith(res.child.Env, "PIGGY_"); got != nil {
		t.Errorf("child sees piggy variables: %v", got)
	}
	// Signals belong to the application: nothing blocked, and nothing
	// ignored beyond what this test process itself inherited (a shell that
	// starts the tests in the background may ignore some signals).
	if res.child.SigBlk != "0000000000000000" || res.child.SigIgn != inheritedSigIgn(t) {
		t.Errorf("child signal masks SigBlk=%s SigIgn=%s, want none blocked and SigIgn=%s as inherited", res.child.SigBlk, res.child.SigIgn, inheritedSigIgn(t))
	}

	seen := b.requests()
	fetchID := fetchIDOf(t, seen...)
	want := []seenRequest{{
		Method: "POST", Path: "/v1/secrets", Authorization: "Bearer pod-bound-token", ContentType: "application/json",
		Body: map[string]any{
			"containerUid": "c0ffee-uid",
			"signature":    signature("child --port 8080"),
			"keys":         []any{"API_KEY", "db-password"},
			"fetchId":      fetchID,
		},
	}}
	if diff := cmp.Diff(want, seen); diff != "" {
		t.Errorf("broker request mismatch (-want +got):\n%s", diff)
	}
	// The fetch id is the launcher's alone: not in the child's environment
	// nor in any log line.
	for _, kv := range res.child.Env {
		if strings.Contains(kv, fetchID) {
			t.Errorf("the child sees the fetch id in %q", kv)
		}
	}
	if strings.Contains(res.stderr, fetchID) {
		t.Errorf("stderr holds the fetch id:\n%s", res.stderr)
	}
	if !slices.Contains(res.messages(), "info: Request secrets was successful") {
		t.Errorf("no success line; logs: %v", res.messages())
	}
	// Never a secret value on stderr, even with debug logs.
	for _, secret := range []string{"s3cr3t", "k=v", "pod-bound-token"} {
		if strings.Contains(res.stderr, secret) {
			t.Errorf("stderr contains %q:\n%s", secret, res.stderr)
		}
	}
}

func TestProcessNoReferencesMakesNoCall(t *testing.T) {
	t.Parallel()
	b := newFakeBroker(t, grpcError(500, 13, "must not be called"))
	res := runPiggyEnv(t, proxyEnv(t, b, "PLAIN=value", "PIGGY_EXTRA=x"), "--", "child")
	if res.exitCode != 0 || res.child == nil {
		t.Fatalf("exit %d, child ran %v; stderr:\n%s", res.exitCode, res.child != nil, res.stderr)
	}
	if n := len(b.requests()); n != 0 {
		t.Errorf("broker called %d times, want 0", n)
	}
	if got := envWith(res.child.Env, "PIGGY_"); got != nil {
		t.Errorf("child sees piggy variables: %v", got)
	}
	if res.child.PID != res.pid {
		t.Errorf("child PID %d, piggy-env PID %d", res.child.PID, res.pid)
	}
}

func TestProcessFailures(t *testing.T) {
	t.Parallel()
	closedAddr := func(t *testing.T) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return "https://" + l.Addr().String()
	}
	tests := []struct {
		name     string
		replies  []reply
		env      func(t *testing.T, b *fakeBroker) []string
		args     []string
		wantExit int
		// wantMsg are substrings of the final error line.
		wantMsg      []string
		wantRequests int
		maxElapsed   time.Duration
	}{
		{
			name:    "missing key names the variable",
			replies: []reply{ok(map[string]string{"a": "1"}, "b")},
			env: func(t *testing.T, b *fakeBroker) []string {
				return proxyEnv(t, b, "A=piggy:a", "DB_PASSWORD=piggy:b")
			},
			wantExit: 1, wantMsg: []string{`no value for DB_PASSWORD (key "b")`}, wantRequests: 1,
		},
		{
			name:    "unreachable address",
			replies: []reply{ok(nil)},
			env: func(t *testing.T, b *fakeBroker) []string {
				addr := closedAddr(t)
				return append(proxyEnv(t, b, "A=piggy:a", "PIGGY_RETRIES=2"), "PIGGY_ADDRESS="+addr)
			},
			wantExit: 1, wantMsg: []string{"request secrets from https://127.0.0.1:", "connection refused", "after 3 attempts", "PIGGY_RETRIES=2"},
			maxElapsed: 20 * time.Second,
		},
		{
			name:    "unknown host",
			replies: []reply{ok(nil)},
			env: func(t *testing.T, b *fakeBroker) []string {
				return append(proxyEnv(t, b, "A=piggy:a"), "PIGGY_ADDRESS=https://piggy-broker.invalid:8443")
			},
			wantExit: 1, wantMsg: []string{"request secrets from https://piggy-broker.invalid:8443", "piggy-broker.invalid"},
			maxElapsed: 20 * time.Second,
		},
		{
			name:    "hung broker hits the per-attempt timeout",
			replies: []reply{{hang: true}},
			env: func(t *testing.T, b *fakeBroker) []string {
				return proxyEnv(t, b, "A=piggy:a", "PIGGY_REQUEST_TIMEOUT=200ms", "PIGGY_RETRIES=1")
			},
			wantExit: 1, wantMsg: []string{"per-attempt timeout of 200ms", "after 2 attempts"}, wantRequests: 2,
			maxElapsed: 10 * time.Second,
		},
		{
			name:    "hung broker hits the overall deadline",
			replies: []reply{{hang: true}},
			env: func(t *testing.T, b *fakeBroker) []string {
				return proxyEnv(t, b, "A=piggy:a", "PIGGY_REQUEST_TIMEOUT=300ms", "PIGGY_RETRIES=1000", "PIGGY_TIMEOUT=1s")
			},
			wantExit: 1, wantMsg: []string{"overall timeout of 1s (PIGGY_TIMEOUT)"}, wantRequests: -1,
			maxElapsed: 10 * time.Second,
		},
		{
			name:    "403 is final",
			replies: []reply{grpcError(403, 7, "service account team-a:web may not read this secret")},
			env: func(t *testing.T, b *fakeBroker) []string {
				return proxyEnv(t, b, "A=piggy:a", "PIGGY_RETRIES=5")
			},
			wantExit: 1, wantMsg: []string{"HTTP 403 Forbidden (PermissionDenied): service account team-a:web may not read this secret"}, wantRequests: 1,
		},
		{
			name:    "wrong CA is final",
			replies: []reply{ok(nil)},
			env: func(t *testing.T, b *fakeBroker) []string {
				other := filepath.Join(t.TempDir(), "ca.crt")
				os.WriteFile(other, []byte(testCA), 0o444)
				return append(proxyEnv(t, b, "A=piggy:a", "PIGGY_RETRIES=5"), "PIGGY_CA_FILE="+other)
			},
			wantExit: 1, wantMsg: []string{"certificate signed by unknown authority"},
		},
		{
			name:    "named CA file missing fails closed",
			replies: []reply{ok(nil)},
			env: func(t *testing.T, b *fakeBroker) []string {
				return append(proxyEnv(t, b, "A=piggy:a"), "PIGGY_CA_FILE=/nonexistent/ca.crt")
			},
			wantExit: 1, wantMsg: []string{"PIGGY_CA_FILE=/nonexistent/ca.crt does not exist; piggy-env does not fall back to the system roots"}, wantRequests: 0,
		},
		{
			name:    "command not found",
			replies: []reply{ok(map[string]string{"a": "1"})},
			env: func(t *testing.T, b *fakeBroker) []string {
				return proxyEnv(t, b, "A=piggy:a")
			},
			args:     []string{"--", "no-such-app", "serve"},
			wantExit: 127, wantMsg: []string{`command "no-such-app": not found in PATH "` + filepath.Dir(childBin) + `:/usr/bin:/bin"`}, wantRequests: 1,
		},
		{
			name:    "invalid retry count",
			replies: []reply{ok(nil)},
			env: func(t *testing.T, b *fakeBroker) []string {
				return proxyEnv(t, b, "A=piggy:a", "PIGGY_NUMBER_OF_RETRY=-1")
			},
			wantExit: 1, wantMsg: []string{`PIGGY_NUMBER_OF_RETRY="-1" must not be negative (it counts attempts`},
		},
		{
			name:    "invalid retries",
			replies: []reply{ok(nil)},
			env: func(t *testing.T, b *fakeBroker) []string {
				return proxyEnv(t, b, "A=piggy:a", "PIGGY_RETRIES=two")
			},
			wantExit: 1, wantMsg: []string{`PIGGY_RETRIES="two" is not an integer`},
		},
		{
			name:    "unparsable boolean",
			replies: []reply{ok(nil)},
			env: func(t *testing.T, b *fakeBroker) []string {
				return proxyEnv(t, b, "A=piggy:a", "PIGGY_IGNORE_NO_ENV=yes")
			},
			wantExit: 1, wantMsg: []string{`PIGGY_IGNORE_NO_ENV="yes" is not a boolean`},
		},
		{
			name:    "missing token file",
			replies: []reply{ok(nil)},
			env: func(t *testing.T, b *fakeBroker) []string {
				return append(proxyEnv(t, b, "A=piggy:a", "PIGGY_RETRIES=3"), "PIGGY_TOKEN_FILE=/nonexistent/token")
			},
			wantExit: 1, wantMsg: []string{"PIGGY_TOKEN_FILE", "/nonexistent/token"},
		},
		{
			name:     "no command",
			replies:  []reply{ok(nil)},
			env:      func(t *testing.T, b *fakeBroker) []string { return proxyEnv(t, b) },
			args:     []string{"--"},
			wantExit: 2, wantMsg: []string{"no command given"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := newFakeBroker(t, tt.replies...)
			args := tt.args
			if args == nil {
				args = []string{"--", "child"}
			}
			termination := filepath.Join(t.TempDir(), "termination-log")
			res := runPiggyEnv(t, append(tt.env(t, b), "PIGGY_TERMINATION_MESSAGE_PATH="+termination), args...)
			if res.exitCode != tt.wantExit {
				t.Errorf("exit code %d, want %d; stderr:\n%s", res.exitCode, tt.wantExit, res.stderr)
			}
			if res.child != nil {
				t.Errorf("the application ran: %+v", res.child)
			}
			msg := res.lastError(t)
			for _, w := range tt.wantMsg {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
			// What kubectl describe pod shows is the same final error.
			if got, err := os.ReadFile(termination); err != nil || string(got) != "piggy-env: "+msg {
				t.Errorf("termination message = %q (%v), want %q", got, err, "piggy-env: "+msg)
			}
			errorLines := 0
			for _, l := range res.logs {
				if l.Level == "error" {
					errorLines++
				}
			}
			if errorLines != 1 {
				t.Errorf("%d error lines, want exactly one:\n%s", errorLines, res.stderr)
			}
			switch n := len(b.requests()); {
			case tt.wantRequests >= 0 && n != tt.wantRequests:
				t.Errorf("broker saw %d requests, want %d", n, tt.wantRequests)
			case tt.wantRequests < 0 && n < 2:
				t.Errorf("broker saw %d requests, want several", n)
			}
			if tt.maxElapsed > 0 && res.elapsed > tt.maxElapsed {
				t.Errorf("took %v, want at most %v", res.elapsed, tt.maxElapsed)
			}
		})
	}
}

func TestProcessRetriesThenSucceeds(t *testing.T) {
	t.Parallel()
	b := newFakeBroker(t,
		grpcError(503, 14, "broker starting"),
		reply{status: 502, body: "<html>upstream connect error</html>"},
		ok(map[string]string{"a": "1"}))
	res := runPiggyEnv(t, proxyEnv(t, b, "A=piggy:a", "PIGGY_RETRIES=3"), "--", "child")
	if res.exitCode != 0 || res.child == nil {
		t.Fatalf("exit %d; stderr:\n%s", res.exitCode, res.stderr)
	}
	if diff := cmp.Diff([]string{"A=1"}, envWith(res.child.Env, "A=")); diff != "" {
		t.Errorf("child env mismatch (-want +got):\n%s", diff)
	}
	if n := len(b.requests()); n != 3 {
		t.Errorf("broker saw %d requests, want 3", n)
	}
	// The retries are the same fetch: they carry the first attempt's id,
	// so the broker answers them although it answers a start only once.
	fetchIDOf(t, b.requests()...)
	for _, l := range res.logs {
		if l.Message == "Request secrets was successful" {
			if diff := cmp.Diff(float64(3), l.Raw["attempts"]); diff != "" {
				t.Errorf("attempts field mismatch (-want +got):\n%s", diff)
			}
			return
		}
	}
	t.Errorf("no success line; logs: %v", res.messages())
}

// The original Piggy's piggy-env made PIGGY_NUMBER_OF_RETRY attempts in all
// (one when unset; its webhook wrote values above 0 only). The real binary
// against a broker that always answers a retryable 503 makes exactly as
// many; PIGGY_RETRIES, which counts retries after the first, wins when set.
func TestProcessOriginalRetrySettingCountsAttempts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		env          []string
		wantRequests int
		wantMsg      string
	}{
		{nil, 1, ""},
		{[]string{"PIGGY_NUMBER_OF_RETRY=1"}, 1, ""},
		{[]string{"PIGGY_NUMBER_OF_RETRY=0"}, 1, ""},
		{[]string{"PIGGY_NUMBER_OF_RETRY=3"}, 3, "failed after 3 attempts (PIGGY_NUMBER_OF_RETRY: 3 attempts)"},
		{[]string{"PIGGY_RETRIES=3"}, 4, "failed after 4 attempts (PIGGY_RETRIES=3)"},
		{[]string{"PIGGY_NUMBER_OF_RETRY=4", "PIGGY_RETRIES=1"}, 2, "failed after 2 attempts (PIGGY_RETRIES=1)"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(append([]string{"env"}, tt.env...), " "), func(t *testing.T) {
			t.Parallel()
			b := newFakeBroker(t, grpcError(503, 14, "broker starting"))
			res := runPiggyEnv(t, proxyEnv(t, b, append([]string{"A=piggy:a"}, tt.env...)...), "--", "child")
			if res.exitCode != 1 || res.child != nil {
				t.Fatalf("exit %d (application ran: %t), want 1; stderr:\n%s", res.exitCode, res.child != nil, res.stderr)
			}
			if n := len(b.requests()); n != tt.wantRequests {
				t.Errorf("broker saw %d requests, want %d", n, tt.wantRequests)
			}
			msg := res.lastError(t)
			if !strings.Contains(msg, "HTTP 503") || !strings.Contains(msg, tt.wantMsg) {
				t.Errorf("error %q, want HTTP 503 and %q", msg, tt.wantMsg)
			}
		})
	}
}

// fetchIDOf returns the fetch id the requests carry, failing unless they
// all carry the same one of 32 lowercase hex digits.
func fetchIDOf(t *testing.T, reqs ...seenRequest) string {
	t.Helper()
	if len(reqs) == 0 {
		t.Fatal("no request")
	}
	id, _ := reqs[0].Body["fetchId"].(string)
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(id) {
		t.Fatalf("fetchId %q is not 128 bits of lowercase hex", id)
	}
	for i, r := range reqs[1:] {
		if got := r.Body["fetchId"]; got != id {
			t.Errorf("attempt %d has fetchId %v, the first had %s", i+2, got, id)
		}
	}
	return id
}

// Two processes, two fetches: each has its own id.
func TestProcessFetchIDPerProcess(t *testing.T) {
	t.Parallel()
	b := newFakeBroker(t, ok(map[string]string{"a": "1"}))
	var ids []string
	for range 2 {
		res := runPiggyEnv(t, proxyEnv(t, b, "A=piggy:a"), "--", "child")
		if res.exitCode != 0 {
			t.Fatalf("exit %d; stderr:\n%s", res.exitCode, res.stderr)
		}
		reqs := b.requests()
		ids = append(ids, fetchIDOf(t, reqs[len(reqs)-1]))
	}
	if ids[0] == ids[1] {
		t.Errorf("two processes sent the same fetch id %s", ids[0])
	}
}

func TestProcessInitialDelayResolverAndSkipVerify(t *testing.T) {
	t.Parallel()
	b := newFakeBroker(t, ok(map[string]string{"a": "1"}))
	// localhost is not in the stand-in's certificate, so only
	// PIGGY_SKIP_VERIFY_TLS lets this through; PIGGY_DNS_RESOLVER=tcp makes
	// the pure Go resolver answer it.
	addr := strings.Replace(b.srv.URL, "127.0.0.1", "localhost", 1)
	env := append(proxyEnv(t, b, "A=piggy:a", "PIGGY_INITIAL_DELAY=300ms", "PIGGY_DNS_RESOLVER=tcp",
		"PIGGY_SKIP_VERIFY_TLS=true", "PIGGY_CA_FILE=/nonexistent/ca.crt"), "PIGGY_ADDRESS="+addr)
	res := runPiggyEnv(t, env, "--", "child")
	if res.exitCode != 0 || res.child == nil {
		t.Fatalf("exit %d; stderr:\n%s", res.exitCode, res.stderr)
	}
	if res.elapsed < 300*time.Millisecond {
		t.Errorf("took %v, less than the initial delay", res.elapsed)
	}
	if diff := cmp.Diff([]string{"A=1"}, envWith(res.child.Env, "A=")); diff != "" {
		t.Errorf("child env mismatch (-want +got):\n%s", diff)
	}
}

func TestProcessIgnoreNoEnv(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		replies      []reply
		extra        []string
		args         []string
		wantEnv      []string
		wantWarnings []string
	}{
		{
			name:         "fetch refused",
			replies:      []reply{grpcError(403, 7, "denied")},
			extra:        []string{"PIGGY_IGNORE_NO_ENV=true"},
			wantEnv:      []string{"B=plain"},
			wantWarnings: []string{"HTTP 403 Forbidden", `no value for A (key "a"), C (key "c")`},
		},
		{
			name:         "missing key",
			replies:      []reply{ok(map[string]string{"a": "1"}, "c")},
			extra:        []string{"PIGGY_IGNORE_NO_ENV=true"},
			wantEnv:      []string{"A=1", "B=plain"},
			wantWarnings: []string{`no value for C (key "c")`},
		},
		{
			name:         "flag",
			replies:      []reply{ok(map[string]string{"a": "1"}, "c")},
			args:         []string{"--ignore-no-env", "--", "child"},
			wantEnv:      []string{"A=1", "B=plain"},
			wantWarnings: []string{`no value for C (key "c")`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := newFakeBroker(t, tt.replies...)
			env := proxyEnv(t, b, append([]string{"A=piggy:a", "B=plain", "C=piggy:c"}, tt.extra...)...)
			args := tt.args
			if args == nil {
				args = []string{"--", "child"}
			}
			res := runPiggyEnv(t, env, args...)
			if res.exitCode != 0 || res.child == nil {
				t.Fatalf("exit %d, child ran %v; stderr:\n%s", res.exitCode, res.child != nil, res.stderr)
			}
			var got []string
			for _, kv := range res.child.Env {
				if strings.HasPrefix(kv, "A=") || strings.HasPrefix(kv, "B=") || strings.HasPrefix(kv, "C=") {
					got = append(got, kv)
				}
			}
			if diff := cmp.Diff(tt.wantEnv, got); diff != "" {
				t.Errorf("child env mismatch (-want +got), unresolved variables are left out:\n%s", diff)
			}
			for _, w := range tt.wantWarnings {
				warned := false
				for _, l := range res.logs {
					warned = warned || (l.Level == "warn" && strings.Contains(l.Message, w))
				}
				if !warned {
					t.Errorf("no warning containing %q; logs: %v", w, res.messages())
				}
			}
		})
	}
}

func TestProcessSignalsReachTheApplication(t *testing.T) {
	t.Parallel()
	b := newFakeBroker(t, ok(map[string]string{"a": "1"}))
	cmd := exec.Command(piggyEnvBin, "--", "child")
	cmd.Env = proxyEnv(t, b, "A=piggy:a", "CHILD_WAIT_SIGNAL=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	var out childOutput
	if err := json.NewDecoder(stdout).Decode(&out); err != nil || !out.Ready {
		t.Fatalf("child not ready (%v); stderr:\n%s", err, stderr.String())
	}
	if out.PID != cmd.Process.Pid {
		t.Errorf("child PID %d, started PID %d", out.PID, cmd.Process.Pid)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	ee, ok := errors.AsType[*exec.ExitError](err)
	if !ok || ee.ExitCode() != 70 {
		t.Errorf("wait = %v, want the application's own SIGTERM exit code 70", err)
	}
}

func TestProcessInstall(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	res := runPiggyEnv(t, []string{"PIGGY_CA_BUNDLE=" + testCA}, "install", dir)
	if res.exitCode != 0 {
		t.Fatalf("install exit %d; stderr:\n%s", res.exitCode, res.stderr)
	}
	modes := map[string]os.FileMode{}
	for _, name := range []string{"piggy-env", "ca.crt"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		modes[name] = fi.Mode().Perm()
	}
	if diff := cmp.Diff(map[string]os.FileMode{"piggy-env": 0o555, "ca.crt": 0o444}, modes); diff != "" {
		t.Errorf("modes mismatch (-want +got):\n%s", diff)
	}
	want, _ := os.ReadFile(piggyEnvBin)
	got, _ := os.ReadFile(filepath.Join(dir, "piggy-env"))
	if !bytes.Equal(want, got) {
		t.Error("installed binary differs from piggy-env")
	}
	ca, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if diff := cmp.Diff(testCA, string(ca)); diff != "" {
		t.Errorf("ca.crt mismatch (-want +got):\n%s", diff)
	}
	// The installed copy works.
	out, err := exec.Command(filepath.Join(dir, "piggy-env"), "--help").Output()
	if err != nil || !strings.Contains(string(out), "PIGGY_ADDRESS") {
		t.Errorf("installed piggy-env --help: %v\n%s", err, out)
	}

	bad := runPiggyEnv(t, []string{"PIGGY_CA_BUNDLE=not a certificate"}, "install", t.TempDir())
	if bad.exitCode == 0 || !strings.Contains(bad.lastError(t), "PIGGY_CA_BUNDLE: no PEM certificate found") {
		t.Errorf("bad bundle: exit %d, stderr:\n%s", bad.exitCode, bad.stderr)
	}
	missing := runPiggyEnv(t, nil, "install", filepath.Join(t.TempDir(), "absent"))
	if missing.exitCode == 0 || !strings.Contains(missing.lastError(t), "no such file or directory") {
		t.Errorf("missing dir: exit %d, stderr:\n%s", missing.exitCode, missing.stderr)
	}
}

// TestBinaryDependencies keeps the binary small and its attack surface
// narrow: the standard library and the AWS SDK only (no gRPC, client-go,
// OpenTelemetry or Piggy libs), built without cgo.
func TestBinaryDependencies(t *testing.T) {
	info, err := buildinfo.ReadFile(piggyEnvBin)
	if err != nil {
		t.Fatal(err)
	}
	for _, dep := range info.Deps {
		if !strings.HasPrefix(dep.Path, "github.com/aws/") && dep.Path != "github.com/piggysec/piggy/libs" {
			t.Errorf("piggy-env links %s %s", dep.Path, dep.Version)
		}
	}
	// Of libs, only stdlib-only packages may be linked.
	stdlibOnlyLibs := map[string]bool{"github.com/piggysec/piggy/libs/awsbody": true, "github.com/piggysec/piggy/libs/podgrant": true, "github.com/piggysec/piggy/libs/podidentity": true, "github.com/piggysec/piggy/libs/buildinfo": true}
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, "github.com/piggysec/piggy/libs/") && !stdlibOnlyLibs[pkg] {
			t.Errorf("piggy-env links %s; only the stdlib-only libs/awsbody, libs/buildinfo, libs/podgrant and libs/podidentity are allowed", pkg)
		}
	}
	for _, s := range info.Settings {
		if s.Key == "CGO_ENABLED" && s.Value != "0" {
			t.Errorf("built with CGO_ENABLED=%s", s.Value)
		}
	}
}

func TestProcessHelp(t *testing.T) {
	t.Parallel()
	for _, flag := range []string{"--help", "-h"} {
		res := runPiggyEnv(t, nil, flag)
		if res.exitCode != 0 {
			t.Errorf("%s: exit %d", flag, res.exitCode)
		}
		for _, want := range []string{"piggy-env [flags] -- command", "install <dir>", "--ignore-no-env", "--debug",
			"PIGGY_ADDRESS", "PIGGY_UID", "PIGGY_TOKEN_FILE", "PIGGY_CA_FILE", "PIGGY_SKIP_VERIFY_TLS", "PIGGY_STANDALONE",
			"PIGGY_AWS_SECRET_NAME", "PIGGY_AWS_SSM_PARAMETER_PATH", "PIGGY_AWS_REGION", "PIGGY_AWS_SECRET_VERSION",
			"PIGGY_IGNORE_NO_ENV", "PIGGY_DEBUG", "PIGGY_DNS_RESOLVER", "PIGGY_INITIAL_DELAY", "PIGGY_RETRIES", "PIGGY_NUMBER_OF_RETRY",
			"PIGGY_REQUEST_TIMEOUT", "PIGGY_TIMEOUT", "PIGGY_CA_BUNDLE", "PIGGY_TERMINATION_MESSAGE_PATH"} {
			if !strings.Contains(res.stdout, want) {
				t.Errorf("%s output does not mention %q", flag, want)
			}
		}
	}
}

func TestProcessVersion(t *testing.T) {
	t.Parallel()
	res := runPiggyEnv(t, nil, "--version")
	if res.exitCode != 0 || !strings.HasPrefix(res.stdout, "piggy-env dev (go") {
		t.Errorf("--version: exit %d, stdout %q, want 0 and \"piggy-env dev (go...)\"", res.exitCode, res.stdout)
	}
}

// BenchmarkStartToExec measures piggy-env from process start to the
// application's exit (the application exits at once) against the local TLS
// broker stand-in: the application alone (the floor), piggy-env without
// references (no network) and piggy-env fetching one key over TLS. It reports
// the median, which is less noisy than the mean for process start-up.
func BenchmarkStartToExec(b *testing.B) {
	for _, bc := range []struct {
		name string
		refs bool
	}{{"child-alone", false}, {"no-references", false}, {"proxy-one-key", true}} {
		b.Run(bc.name, func(b *testing.B) {
			broker := newFakeBroker(b, ok(map[string]string{"a": "1"}))
			env := []string{
				"PATH=/usr/bin:/bin", "PIGGY_ADDRESS=" + broker.srv.URL, "PIGGY_UID=u",
				"PIGGY_TOKEN_FILE=" + broker.tokenFile, "PIGGY_CA_FILE=" + broker.caFile,
			}
			if bc.refs {
				env = append(env, "A=piggy:a")
			}
			var durations []time.Duration
			for b.Loop() {
				cmd := exec.Command(piggyEnvBin, "--", childBin)
				if bc.name == "child-alone" {
					cmd = exec.Command(childBin) // the floor: starting the application itself
				}
				cmd.Env = env
				start := time.Now()
				if out, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("%v: %s", err, out)
				}
				durations = append(durations, time.Since(start))
			}
			slices.Sort(durations)
			b.ReportMetric(float64(durations[len(durations)/2].Microseconds())/1000, "median-ms")
		})
	}
}

// testCA is a self-signed CA certificate that signed nothing the tests use.
const testCA = `-----BEGIN CERTIFICATE-----
MIIBtTCCAVugAwIBAgIUapkacvCMgIdXWSj82uVyuA3n3T0wCgYIKoZIzj0EAwIw
LzEtMCsGA1UEAwwkcGlnZ3ktZW52IHRlc3QgQ0EgdGhhdCBzaWducyBub3RoaW5n
MCAXDTI2MTEyNjE0MTYzOFoYDzIxMjYxMTAyMTQxNjM4WjAvMS0wKwYDVQQDDCRw
aWdneS1lbnYgdGVzdCBDQSB0aGF0IHNpZ25zIG5vdGhpbmcwWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAATNWTGgC9gtnbxkAtg48lwIZC11p4eNkJ5mbJSc52B/gT82
jJa8P5tcyw/9Zydf4uf5UVLfDJh9lezeeQj9wuNQo1MwUTAdBgNVHQ4EFgQUSA2c
h6zZLww5zdStp4EHTTTwN08wHwYDVR0jBBgwFoAUSA2ch6zZLww5zdStp4EHTTTw
N08wDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiBNESgNe+C4HDNh
W38xlXuwdqdxLGQWfMdlw5dA5u8ILwIhAJkhfUnhbk989iaV/LAaaK6u7IKtGsq2
PSqrMzr5ax6o
-----END CERTIFICATE-----
`

// inheritedSigIgn is the ignored-signal mask this test process started
// with, as /proc/self/status shows it.
func inheritedSigIgn(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "SigIgn:"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatal("no SigIgn in /proc/self/status")
	return ""
}
