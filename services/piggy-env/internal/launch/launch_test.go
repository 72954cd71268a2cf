package launch

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func tree(t *testing.T, files map[string]os.FileMode) string {
	t.Helper()
	root := t.TempDir()
	for name, mode := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if mode == 0 {
			if err := os.Mkdir(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestLookPath(t *testing.T) {
	root := tree(t, map[string]os.FileMode{
		"a/app":     0o755,
		"b/app":     0o755,
		"a/data":    0o644,
		"b/tool":    0o755,
		"a/dir":     0,
		"c/onlyraw": 0o600,
	})
	a, b, c := filepath.Join(root, "a"), filepath.Join(root, "b"), filepath.Join(root, "c")
	tests := []struct {
		name     string
		file     string
		env      []string
		want     string
		wantCode int // 0: success
		wantMsg  string
	}{
		{name: "first PATH entry wins", file: "app", env: []string{"PATH=" + a + ":" + b}, want: filepath.Join(a, "app")},
		{name: "child PATH, not ours", file: "tool", env: []string{"PATH=/nonexistent:" + b}, want: filepath.Join(b, "tool")},
		{name: "last PATH entry of the env wins", file: "tool", env: []string{"PATH=" + a, "PATH=" + b}, want: filepath.Join(b, "tool")},
		{name: "non-executable skipped", file: "data", env: []string{"PATH=" + a}, wantCode: ExitNotExecutable, wantMsg: "not executable"},
		{name: "directory skipped", file: "dir", env: []string{"PATH=" + a}, wantCode: ExitNotExecutable, wantMsg: "is a directory"},
		{name: "not found names PATH", file: "nosuch", env: []string{"PATH=" + a + ":" + c}, wantCode: ExitNotFound, wantMsg: `command "nosuch": not found in PATH "` + a + ":" + c + `"`},
		{name: "slash used as is", file: filepath.Join(b, "app"), env: nil, want: filepath.Join(b, "app")},
		{name: "slash not found", file: filepath.Join(b, "nosuch"), env: nil, wantCode: ExitNotFound, wantMsg: "no such file"},
		{name: "slash not executable", file: filepath.Join(c, "onlyraw"), env: nil, wantCode: ExitNotExecutable, wantMsg: "not executable"},
		{name: "empty", file: "", wantCode: ExitNotFound, wantMsg: "empty command"},
		{name: "default PATH", file: "sh", env: []string{"HOME=/"}, want: "/usr/local/sbin/sh"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name == "default PATH" {
				// Whichever directory of DefaultPath holds sh on this machine.
				for _, dir := range filepath.SplitList(DefaultPath) {
					if _, err := os.Stat(filepath.Join(dir, "sh")); err == nil {
						tt.want = filepath.Join(dir, "sh")
						break
					}
				}
			}
			got, err := LookPath(tt.file, tt.env)
			if tt.wantCode == 0 {
				if err != nil {
					t.Fatalf("LookPath: %v", err)
				}
				if diff := cmp.Diff(tt.want, got); diff != "" {
					t.Errorf("LookPath mismatch (-want +got):\n%s", diff)
				}
				return
			}
			le, ok := errors.AsType[*Error](err)
			if !ok || le.ExitCode() != tt.wantCode || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("LookPath error = %v (%T), want code %d and %q", err, err, tt.wantCode, tt.wantMsg)
			}
		})
	}
}

func TestExec(t *testing.T) {
	root := tree(t, map[string]os.FileMode{"bin/app": 0o755})
	env := []string{"PATH=" + filepath.Join(root, "bin"), "A=1"}

	var got struct {
		Argv0      string
		Argv, Envv []string
	}
	fake := func(argv0 string, argv, envv []string) error {
		got.Argv0, got.Argv, got.Envv = argv0, argv, envv
		return nil
	}
	if err := Exec([]string{"app", "x"}, env, fake); err != nil {
		t.Fatal(err)
	}
	want := got
	want.Argv0, want.Argv, want.Envv = filepath.Join(root, "bin", "app"), []string{"app", "x"}, env
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("exec call mismatch (-want +got):\n%s", diff)
	}

	failing := func(string, []string, []string) error { return syscall.ENOEXEC }
	err := Exec([]string{"app"}, env, failing)
	if le, ok := errors.AsType[*Error](err); !ok || le.Code != ExitNotExecutable || !strings.Contains(err.Error(), "exec format error") {
		t.Errorf("Exec error = %v, want an exec format error with code %d", err, ExitNotExecutable)
	}
	if err := Exec(nil, env, fake); err == nil {
		t.Error("Exec without a command succeeded")
	}
}
