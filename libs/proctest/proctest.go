// Package proctest runs Piggy's binaries as real processes in tests: it
// builds a main package, starts it, reads its JSON log lines, talks to its
// ports over TLS and mTLS, and stops it with a signal.
package proctest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Build compiles the main package in dir (relative to the test's working
// directory) and returns the binary's path. The binary lives in a temporary
// directory removed when the test ends.
func Build(t testing.TB, dir string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), filepath.Base(mustAbs(t, dir)))
	cmd := exec.Command("go", "build", "-o", out, ".")
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", dir, err, b)
	}
	return out
}

func mustAbs(t testing.TB, p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// Process is a started binary.
type Process struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	lines  []string
	logged chan struct{}
	done   chan struct{}
	err    error
}

// Start runs bin with args; env entries are added to the test's environment.
// The process is killed when the test ends if it is still running.
func Start(t testing.TB, bin string, args, env []string) *Process {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	p := &Process{cmd: cmd, logged: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.mu.Unlock()
			select {
			case p.logged <- struct{}{}:
			default:
			}
		}
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("stderr of %s:\n%s", filepath.Base(bin), p.Output())
		}
	})
	return p
}

// Output is everything the process wrote to stderr so far.
func (p *Process) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// Records returns the JSON log records written so far (non-JSON lines are
// skipped).
func (p *Process) Records() []map[string]any {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []map[string]any
	for _, l := range p.lines {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// WaitForRecord waits until a log record satisfies match and returns it.
func (p *Process) WaitForRecord(t testing.TB, timeout time.Duration, match func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.After(timeout)
	for {
		for _, r := range p.Records() {
			if match(r) {
				return r
			}
		}
		select {
		case <-p.logged:
		case <-p.done:
			for _, r := range p.Records() {
				if match(r) {
					return r
				}
			}
			t.Fatalf("process exited (%v) before the expected log record:\n%s", p.err, p.Output())
		case <-deadline:
			t.Fatalf("no matching log record within %s:\n%s", timeout, p.Output())
		}
	}
}

// Addresses waits until the process has logged a "server"/"address" pair
// for each name and returns the addresses by server name.
func (p *Process) Addresses(t testing.TB, names ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, n := range names {
		r := p.WaitForRecord(t, 20*time.Second, func(r map[string]any) bool { return r["server"] == n && r["address"] != nil })
		out[n] = r["address"].(string)
	}
	return out
}

// Stop sends sig and waits up to timeout for the exit; it returns the exit
// code (-1 if killed by a signal) and how long the exit took.
func (p *Process) Stop(t testing.TB, sig syscall.Signal, timeout time.Duration) (int, time.Duration) {
	t.Helper()
	start := time.Now()
	p.Signal(t, sig)
	return p.Wait(t, timeout), time.Since(start)
}

// Signal sends sig to the process, unless it has exited already.
func (p *Process) Signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	select {
	case <-p.done:
	default:
		if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
			t.Fatalf("signal: %v", err)
		}
	}
}

// Wait waits up to timeout for the process to exit and returns its code.
func (p *Process) Wait(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("process still running after %s:\n%s", timeout, p.Output())
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatalf("wait: %v", p.err)
	}
	return 0
}

// CheckGRPCHealth calls grpc.health.v1.Health/Check on addr with the client
// TLS configuration and fails the test unless it answers SERVING.
func CheckGRPCHealth(t testing.TB, addr string, cfg *tls.Config) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatalf("gRPC health on %s: %v", addr, err)
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gRPC health on %s = %v, want SERVING", addr, resp.GetStatus())
	}
}

// Get fetches url with the client TLS configuration (nil for plain HTTP)
// and returns the status code and body.
func Get(t testing.TB, url string, cfg *tls.Config) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = io.Copy(&b, resp.Body)
	return resp.StatusCode, b.String()
}

// Run runs bin to completion with args and env and returns the exit code
// and stderr; for configuration-error tests.
func Run(t testing.TB, bin string, args, env []string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, stderr.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), stderr.String()
	default:
		t.Fatalf("run %s: %v", bin, err)
		return 0, ""
	}
}

// String describes the process for messages.
func (p *Process) String() string { return fmt.Sprintf("pid %d", p.cmd.Process.Pid) }

// CPUTime is the processor time (user and system) the process has used so
// far, read from /proc on Linux, with the kernel's clock-tick resolution
// (10 ms). Benchmarks divide it by the requests served to compare the cost
// of a request in a way that holds up on a busy machine.
func (p *Process) CPUTime() (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0, fmt.Errorf("cpu time of %s: %w", p, err)
	}
	// Fields after the command name, which is in parentheses and may hold
	// spaces: state is field 3, utime and stime are fields 14 and 15.
	rest := string(b)
	if i := strings.LastIndexByte(rest, ')'); i >= 0 {
		rest = rest[i+1:]
	}
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0, fmt.Errorf("cpu time of %s: short /proc stat line", p)
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("cpu time of %s: %w", p, err)
		}
		ticks += n
	}
	const clockTicks = 100 // USER_HZ on Linux
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// PeakRSS is the largest resident set size the process has had so far
// (VmHWM in /proc/<pid>/status on Linux), in bytes. Memory tests compare
// it with a bound: unlike timing, it does not depend on a busy machine.
func (p *Process) PeakRSS() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0, fmt.Errorf("peak RSS of %s: %w", p, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("peak RSS of %s: %q: %w", p, line, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("peak RSS of %s: no VmHWM line", p)
}
