package kubetest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// lockFile takes an exclusive flock on path, polling so that ctx can cancel
// the wait, and reports while it waits. The lock dies with the process.
func lockFile(ctx context.Context, path string, rep *reporter, what string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	var lastReport time.Time
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				_ = f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			_ = f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if time.Since(lastReport) >= progressEvery {
			rep.printf("%s: another process is building it (lock %s held), waiting, %s elapsed", what, path, time.Since(start).Round(time.Second))
			lastReport = time.Now()
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, fmt.Errorf("wait for lock %s: %w", path, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// waitForBuilds waits until no running `go build` process (other than this
// one) matches match, reporting while it waits. Such builds are found
// through /proc; where there is no /proc there is nothing to wait for.
func waitForBuilds(ctx context.Context, rep *reporter, what string, match func(args []string) bool) error {
	start := time.Now()
	var lastReport time.Time
	for {
		pids := goBuilds(match)
		if len(pids) == 0 {
			if !lastReport.IsZero() {
				rep.printf("%s: running go build finished after %s", what, time.Since(start).Round(time.Second))
			}
			return nil
		}
		if time.Since(lastReport) >= progressEvery {
			rep.printf("%s: waiting for a go build already running (pid %v), %s elapsed", what, pids, time.Since(start).Round(time.Second))
			lastReport = time.Now()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kubetest: %s: wait for running go build (pid %v): %w", what, pids, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

// goBuilds lists the pids of `go build` processes whose arguments match.
func goBuilds(match func(args []string) bool) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(raw) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		if filepath.Base(args[0]) != "go" || !slices.Contains(args, "build") {
			continue
		}
		if match(args) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// buildsTo reports whether go build arguments name out as the output file.
func buildsTo(args []string, out string) bool {
	for i, a := range args {
		if (a == "-o" || a == "--o") && i+1 < len(args) && filepath.Clean(args[i+1]) == out {
			return true
		}
		if v, ok := strings.CutPrefix(a, "-o="); ok && filepath.Clean(v) == out {
			return true
		}
	}
	return false
}

// buildsPkg reports whether go build arguments name pkg.
func buildsPkg(args []string, pkg string) bool {
	return slices.Contains(args, pkg)
}
