package main

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// execCall records what run asked the exec function to start.
type execCall struct {
	Argv0 string
	Argv  []string
	Env   []string
}

// runInProcess runs run with a fake exec, so the test binary is not replaced.
func runInProcess(t *testing.T, ctx context.Context, args, environ []string) (*execCall, string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	var call *execCall
	a := &app{
		stdout: &stdout, stderr: &stderr,
		exec: func(argv0 string, argv, envv []string) error {
			call = &execCall{Argv0: argv0, Argv: argv, Env: envv}
			return nil
		},
		executable: func() (string, error) { return piggyEnvBin, nil },
	}
	err := a.run(ctx, args, environ)
	return call, stdout.String(), stderr.String(), err
}

func TestRunInProcess(t *testing.T) {
	b := newFakeBroker(t, ok(map[string]string{"k": "v"}))
	path := "PATH=" + filepath.Dir(childBin)
	base := []string{path, "PIGGY_ADDRESS=" + b.srv.URL, "PIGGY_TOKEN_FILE=" + b.tokenFile, "PIGGY_CA_FILE=" + b.caFile}
	tests := []struct {
		name     string
		args     []string
		environ  []string
		wantExec *execCall
		wantErr  string
	}{
		{
			name:     "replaces and execs",
			args:     []string{"--", "child", "-c", "true"},
			environ:  append(slices.Clone(base), "X=piggy:k"),
			wantExec: &execCall{Argv0: childBin, Argv: []string{"child", "-c", "true"}, Env: []string{path, "X=v"}},
		},
		{
			name:     "without -- the rest is the command",
			args:     []string{"child", "-c", "true"},
			environ:  []string{path, "PIGGY_UID=u"},
			wantExec: &execCall{Argv0: childBin, Argv: []string{"child", "-c", "true"}, Env: []string{path}},
		},
		{
			name:    "reserved key only: no fetch, unresolved",
			args:    []string{"--", "sh"},
			environ: []string{"PATH=/usr/bin:/bin", "SA=piggy:PIGGY_ALLOWED_SA"},
			wantErr: `no value for SA (key "PIGGY_ALLOWED_SA") [PIGGY_* keys are never given to applications]`,
		},
		{
			name:    "unknown flag",
			args:    []string{"--nope", "--", "sh"},
			wantErr: "flag provided but not defined: -nope (see piggy-env --help)",
		},
		{
			name:    "install usage",
			args:    []string{"install"},
			wantErr: "install needs exactly one argument",
		},
		{
			name:    "proxy mode without address",
			args:    []string{"--", "sh"},
			environ: []string{"PATH=/usr/bin:/bin", "X=piggy:k"},
			wantErr: "PIGGY_ADDRESS is not set",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			call, _, stderr, err := runInProcess(t, t.Context(), tt.args, tt.environ)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("run error = %v, want %q; stderr:\n%s", err, tt.wantErr, stderr)
				}
				return
			}
			if err != nil {
				t.Fatalf("run: %v; stderr:\n%s", err, stderr)
			}
			if diff := cmp.Diff(tt.wantExec, call); diff != "" {
				t.Errorf("exec mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRunInterruptedDoesNotExec(t *testing.T) {
	b := newFakeBroker(t, reply{hang: true})
	ctx, cancel := context.WithCancel(t.Context())
	cancel() // SIGTERM before piggy-env got anywhere
	environ := []string{"PATH=/usr/bin:/bin", "PIGGY_ADDRESS=" + b.srv.URL, "PIGGY_TOKEN_FILE=" + b.tokenFile,
		"PIGGY_CA_FILE=" + b.caFile, "X=piggy:k", "PIGGY_IGNORE_NO_ENV=true", "PIGGY_INITIAL_DELAY=1h"}
	call, _, _, err := runInProcess(t, ctx, []string{"--", "sh"}, environ)
	if call != nil || err == nil || !errors.Is(err, context.Canceled) {
		t.Errorf("exec %v, error %v; want no exec and a cancellation error, even with ignore-no-env", call, err)
	}
}

func TestRunHelp(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"install", "--help"}} {
		_, stdout, _, err := runInProcess(t, t.Context(), args, nil)
		if err != nil || !strings.HasPrefix(stdout, "Usage:") {
			t.Errorf("%v: error %v, output %q", args, err, stdout)
		}
	}
}
