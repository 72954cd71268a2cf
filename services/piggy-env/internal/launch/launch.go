// Package launch replaces the piggy-env process with the application:
// it resolves the command through the PATH of the command's own environment
// and calls execve, so the application keeps piggy-env's PID, receives the
// container's signals directly and its exit code is the container's.
package launch

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// DefaultPath is searched when the command's environment has no PATH.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Exit codes for commands that cannot be started, as POSIX shells use them.
const (
	ExitNotExecutable = 126
	ExitNotFound      = 127
)

// Error is a command that could not be started.
type Error struct {
	// Command is the command as given.
	Command string
	// Code is the exit code piggy-env should end with.
	Code int
	// Err says why.
	Err error
}

// Error implements error.
func (e *Error) Error() string { return fmt.Sprintf("command %q: %v", e.Command, e.Err) }

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// ExitCode returns the exit code piggy-env should end with.
func (e *Error) ExitCode() int { return e.Code }

// LookPath finds file the way execvp does, but in the PATH of env (the
// environment the command will get) rather than piggy-env's own: a name with a
// slash is used as is, otherwise each PATH entry is tried in order (an empty
// entry means the current directory). The result must be a regular file with
// an execute bit.
func LookPath(file string, env []string) (string, error) {
	if file == "" {
		return "", &Error{Command: file, Code: ExitNotFound, Err: errors.New("empty command")}
	}
	if strings.Contains(file, "/") {
		if err := executable(file); err != nil {
			return "", &Error{Command: file, Code: codeFor(err), Err: err}
		}
		return file, nil
	}
	path, ok := getenv(env, "PATH")
	if !ok {
		path = DefaultPath
	}
	var denied error
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		candidate := filepath.Join(dir, file)
		if dir == "." {
			candidate = "./" + file
		}
		err := executable(candidate)
		if err == nil {
			return candidate, nil
		}
		if denied == nil && !errors.Is(err, fs.ErrNotExist) {
			denied = fmt.Errorf("%s %w", candidate, err)
		}
	}
	if denied != nil {
		return "", &Error{Command: file, Code: ExitNotExecutable, Err: denied}
	}
	return "", &Error{Command: file, Code: ExitNotFound, Err: fmt.Errorf("not found in PATH %q", path)}
}

// executable checks that name is a regular file with an execute bit; its
// errors do not repeat the name.
func executable(name string) error {
	fi, err := os.Stat(name)
	if err != nil {
		if pe, ok := errors.AsType[*fs.PathError](err); ok {
			return pe.Err // ENOENT, EACCES, ...: matches fs.ErrNotExist etc.
		}
		return err
	}
	if fi.IsDir() {
		return errors.New("is a directory")
	}
	if fi.Mode()&0o111 == 0 {
		return fmt.Errorf("is not executable (mode %s): %w", fi.Mode(), fs.ErrPermission)
	}
	return nil
}

func codeFor(err error) int {
	if errors.Is(err, fs.ErrNotExist) {
		return ExitNotFound
	}
	return ExitNotExecutable
}

func getenv(env []string, name string) (string, bool) {
	value, found := "", false
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == name {
			value, found = v, true // the last one wins, as for the command
		}
	}
	return value, found
}

// ExecFunc replaces the process image; syscall.Exec in production.
type ExecFunc func(argv0 string, argv []string, envv []string) error

// Exec resolves args[0] through env's PATH and replaces the current process
// with it. It returns only on failure, with an *Error.
func Exec(args, env []string, exec ExecFunc) error {
	if len(args) == 0 {
		return &Error{Code: ExitNotFound, Err: errors.New("no command given")}
	}
	path, err := LookPath(args[0], env)
	if err != nil {
		return err
	}
	if exec == nil {
		exec = syscall.Exec
	}
	if err := exec(path, args, env); err != nil {
		code := ExitNotExecutable
		if errors.Is(err, syscall.ENOENT) {
			code = ExitNotFound // e.g. a script whose interpreter is missing
		}
		return &Error{Command: args[0], Code: code, Err: fmt.Errorf("exec %s: %w", path, err)}
	}
	return nil
}
