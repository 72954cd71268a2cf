package devstack

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// service is a started Piggy service process.
type service struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}

	mu    sync.Mutex
	addrs map[string]string
	tail  []string
	err   error
}

// startService runs bin with args and env, logging to logPath, and waits
// until it has logged the address of every server in servers.
func startService(ctx context.Context, name, bin string, args, env []string, logPath string, servers ...string) (*service, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = sysProcAttr()
	pr, pw := io.Pipe()
	cmd.Stdout = logFile
	cmd.Stderr = io.MultiWriter(logFile, pw)
	s := &service{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{}), addrs: map[string]string{}}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			var rec map[string]any
			s.mu.Lock()
			s.tail = append(s.tail, line)
			if len(s.tail) > 20 {
				s.tail = s.tail[1:]
			}
			if json.Unmarshal([]byte(line), &rec) == nil {
				if srv, ok := rec["server"].(string); ok {
					if addr, ok := rec["address"].(string); ok {
						s.addrs[srv] = addr
					}
				}
			}
			s.mu.Unlock()
		}
	}()
	go func() {
		s.err = cmd.Wait()
		pw.Close()
		logFile.Close()
		close(s.done)
	}()

	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		s.mu.Lock()
		missing := ""
		for _, n := range servers {
			if s.addrs[n] == "" {
				missing = n
			}
		}
		s.mu.Unlock()
		if missing == "" {
			return s, nil
		}
		select {
		case <-s.done:
			return nil, fmt.Errorf("%s exited (%v) before serving: %s", name, s.err, s.lastLine())
		case <-deadline.C:
			s.stop()
			return nil, fmt.Errorf("%s did not serve %q within 30s: %s", name, missing, s.lastLine())
		case <-ctx.Done():
			s.stop()
			return nil, ctx.Err()
		case <-tick.C:
		}
	}
}

// addr returns the address a server of the service listens on.
func (s *service) addr(server string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addrs[server]
}

// lastLine is the service's last log message, for error reports.
func (s *service) lastLine() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.tail) - 1; i >= 0; i-- {
		var rec map[string]any
		if json.Unmarshal([]byte(s.tail[i]), &rec) == nil {
			if msg, ok := rec["message"].(string); ok {
				if e, ok := rec["error"].(string); ok {
					return msg + ": " + e
				}
				return msg
			}
		}
		if strings.TrimSpace(s.tail[i]) != "" {
			return s.tail[i]
		}
	}
	return "(no output; see " + s.logPath + ")"
}

// stop sends SIGTERM, waits up to 10s, then kills.
func (s *service) stop() error {
	select {
	case <-s.done:
		return nil
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	var ee *exec.ExitError
	if s.err != nil && !errors.As(s.err, &ee) {
		return s.err
	}
	if ee != nil && ee.ExitCode() != 0 {
		return fmt.Errorf("%s exited with %d after SIGTERM", s.name, ee.ExitCode())
	}
	return nil
}
