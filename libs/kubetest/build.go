package kubetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Binaries are the paths of the programs a cluster runs.
type Binaries struct {
	// APIServer is the kube-apiserver binary.
	APIServer string
	// Etcd is the etcd binary.
	Etcd string
}

// artifact describes one binary built from a Go module.
type artifact struct {
	binary  string // file name in the cache, e.g. "kube-apiserver"
	module  string // module required by the scratch module
	version string // its version
	pkg     string // main package to build
	dir     string // cache subdirectory, e.g. "kubernetes-v1.37.2-2"
	// staging: add "replace k8s.io/x => k8s.io/x v0.<minor>.<patch>" for
	// every ./staging replace in the module's own go.mod, as
	// k8s.io/kubernetes cannot be required without them.
	staging bool
	// ldflags are passed to go build.
	ldflags string
}

// apiServerArtifact builds kube-apiserver with the version stamped in, as
// the release build does (without it /version says v0.0.0-master and
// clients such as helm refuse the cluster). The "-2" in the cache directory
// is the recipe's revision: builds from the unstamped recipe are not reused.
func apiServerArtifact(version string) artifact {
	ldflags := "-s"
	if parts := strings.SplitN(strings.TrimPrefix(version, "v"), ".", 3); len(parts) == 3 {
		const pkg = "k8s.io/component-base/version"
		ldflags += fmt.Sprintf(" -X %[1]s.gitVersion=%[2]s -X %[1]s.gitMajor=%[3]s -X %[1]s.gitMinor=%[4]s -X %[1]s.gitTreeState=clean",
			pkg, version, parts[0], parts[1])
	}
	return artifact{
		binary:  "kube-apiserver",
		module:  "k8s.io/kubernetes",
		version: version,
		pkg:     "k8s.io/kubernetes/cmd/kube-apiserver",
		dir:     "kubernetes-" + version + "-2",
		staging: true,
		ldflags: ldflags,
	}
}

func etcdArtifact(version string) artifact {
	return artifact{
		binary:  "etcd",
		module:  "go.etcd.io/etcd/server/v3",
		version: version,
		pkg:     "go.etcd.io/etcd/server/v3",
		dir:     "etcd-" + version,
		ldflags: "-s",
	}
}

// BinaryPaths returns where the binaries for opts are (or will be) without
// building anything.
func BinaryPaths(opts Options) Binaries {
	if opts.AssetsDir != "" {
		return Binaries{
			APIServer: filepath.Join(opts.AssetsDir, "kube-apiserver"),
			Etcd:      filepath.Join(opts.AssetsDir, "etcd"),
		}
	}
	a, e := apiServerArtifact(opts.kubernetesVersion()), etcdArtifact(opts.etcdVersion())
	return Binaries{
		APIServer: filepath.Join(opts.CacheDir, a.dir, a.binary),
		Etcd:      filepath.Join(opts.CacheDir, e.dir, e.binary),
	}
}

// EnsureBinaries returns kube-apiserver and etcd, building each from the Go
// module proxy into the cache the first time a version is needed. With
// Options.AssetsDir set it only checks that both binaries are there.
//
// Concurrent callers, in this process or others, build each binary once:
// a build holds an exclusive lock on a file next to the binary, and a
// `go build` of the same package already running (for example a warm-up
// started by hand) is waited for. The binary appears by atomic rename, so a
// present binary is always complete. A failed build returns an error with
// the tail of the go command's output; the whole output is kept in
// build.log next to the binary.
func EnsureBinaries(ctx context.Context, opts Options) (Binaries, error) {
	paths := BinaryPaths(opts)
	if opts.AssetsDir != "" {
		for _, p := range []string{paths.APIServer, paths.Etcd} {
			if !usable(p) {
				return Binaries{}, fmt.Errorf("kubetest: assets dir %s: %s missing or not executable", opts.AssetsDir, filepath.Base(p))
			}
		}
		return paths, nil
	}
	if opts.CacheDir == "" {
		return Binaries{}, errors.New("kubetest: Options.CacheDir and Options.AssetsDir are both empty (use DefaultOptions)")
	}
	b := &builder{opts: opts, rep: newReporter(opts)}
	for _, a := range []artifact{apiServerArtifact(opts.kubernetesVersion()), etcdArtifact(opts.etcdVersion())} {
		if err := b.ensure(ctx, a); err != nil {
			return Binaries{}, err
		}
	}
	return paths, nil
}

// usable reports whether path is a non-empty executable regular file.
func usable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 && fi.Size() > 0
}

type builder struct {
	opts Options
	rep  *reporter
}

func (b *builder) ensure(ctx context.Context, a artifact) error {
	dir := filepath.Join(b.opts.CacheDir, a.dir)
	final := filepath.Join(dir, a.binary)
	what := fmt.Sprintf("%s %s", a.binary, a.version)

	// A go build writing straight to final (a hand-started warm-up) may be
	// mid-way: let it finish before trusting what is there.
	targetsFinal := func(args []string) bool { return buildsTo(args, final) }
	if err := waitForBuilds(ctx, b.rep, what, targetsFinal); err != nil {
		return err
	}
	if usable(final) {
		return nil
	}

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("kubetest: build %s: %w", what, err)
	}
	unlock, err := lockFile(ctx, filepath.Join(dir, ".lock"), b.rep, what)
	if err != nil {
		return fmt.Errorf("kubetest: build %s: %w", what, err)
	}
	defer unlock()
	if usable(final) { // built by whoever held the lock
		return nil
	}
	// Building the same package elsewhere competes for the same two cores
	// and likely warms the same build cache: wait for it too.
	samePkg := func(args []string) bool { return buildsTo(args, final) || buildsPkg(args, a.pkg) }
	if err := waitForBuilds(ctx, b.rep, what, samePkg); err != nil {
		return err
	}
	if usable(final) {
		return nil
	}
	removeStale(dir)

	start := time.Now()
	b.rep.printf("building %s from the Go module proxy into %s (once per version; several minutes on a cold cache)", what, final)
	if err := b.build(ctx, a, dir, final); err != nil {
		return fmt.Errorf("kubetest: build %s: %w", what, err)
	}
	b.rep.printf("built %s in %s", what, time.Since(start).Round(time.Second))
	return nil
}

// removeStale deletes scratch directories left by builds that were killed.
// Only called with the lock held.
func removeStale(dir string) {
	stale, _ := filepath.Glob(filepath.Join(dir, "build-*"))
	for _, s := range stale {
		_ = os.RemoveAll(s)
	}
}

func (b *builder) build(ctx context.Context, a artifact, dir, final string) error {
	scratch, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(scratch)
	logPath := filepath.Join(dir, "build.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	what := fmt.Sprintf("%s %s", a.binary, a.version)
	run := func(step string, stdout *bytes.Buffer, args ...string) error {
		return b.runGo(ctx, what, step, scratch, logFile, logPath, stdout, args...)
	}

	// 1. Where is the module's own go.mod?
	var dl bytes.Buffer
	if err := run("1/4 go mod download", &dl, "mod", "download", "-json", a.module+"@"+a.version); err != nil {
		return err
	}
	var info struct{ GoMod, Error string }
	if err := json.Unmarshal(dl.Bytes(), &info); err != nil || info.GoMod == "" {
		return fmt.Errorf("go mod download %s@%s: no GoMod in %q (%v %s)", a.module, a.version, dl.String(), err, info.Error)
	}
	// 2. Parse it with the go command itself.
	var edit bytes.Buffer
	if err := run("2/4 go mod edit", &edit, "mod", "edit", "-json", info.GoMod); err != nil {
		return err
	}
	gomod, err := scratchGoMod(a, edit.Bytes())
	if err != nil {
		return err
	}
	tools := fmt.Sprintf("//go:build tools\n\npackage tools\n\nimport _ %q\n", a.pkg)
	if err := os.WriteFile(filepath.Join(scratch, "go.mod"), gomod, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(scratch, "tools.go"), []byte(tools), 0o644); err != nil {
		return err
	}
	// 3. Resolve the build list.
	if err := run("3/4 go mod tidy", nil, "mod", "tidy"); err != nil {
		return err
	}
	// 4. Build next to the final path, then rename atomically.
	tmp := filepath.Join(scratch, a.binary)
	if err := run("4/4 go build", nil, "build", "-trimpath", "-ldflags="+a.ldflags, "-o", tmp, a.pkg); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	return os.Rename(tmp, final)
}

// scratchGoMod writes the go.mod of the scratch module that requires a,
// given the JSON (go mod edit -json) of a's own go.mod.
func scratchGoMod(a artifact, modJSON []byte) ([]byte, error) {
	var mod struct {
		Go      string
		Replace []struct {
			Old struct{ Path, Version string }
			New struct{ Path, Version string }
		}
	}
	if err := json.Unmarshal(modJSON, &mod); err != nil {
		return nil, fmt.Errorf("parse go.mod of %s@%s: %w", a.module, a.version, err)
	}
	var buf bytes.Buffer
	buf.WriteString("module piggy.local/kubetest-build\n\n")
	if mod.Go != "" {
		fmt.Fprintf(&buf, "go %s\n\n", mod.Go)
	}
	fmt.Fprintf(&buf, "require %s %s\n", a.module, a.version)
	if a.staging {
		// k8s.io/kubernetes v1.X.Y publishes its staging modules as v0.X.Y.
		stagingVersion, ok := strings.CutPrefix(a.version, "v1.")
		if !ok {
			return nil, fmt.Errorf("kubernetes version %q: want v1.X.Y", a.version)
		}
		stagingVersion = "v0." + stagingVersion
		n := 0
		for _, r := range mod.Replace {
			if r.Old.Version != "" || !strings.HasPrefix(r.New.Path, "./staging/") {
				continue
			}
			if n == 0 {
				buf.WriteString("\nreplace (\n")
			}
			n++
			fmt.Fprintf(&buf, "\t%s => %s %s\n", r.Old.Path, r.Old.Path, stagingVersion)
		}
		if n == 0 {
			return nil, fmt.Errorf("go.mod of %s@%s has no ./staging replaces", a.module, a.version)
		}
		buf.WriteString(")\n")
	}
	return buf.Bytes(), nil
}

// runGo runs the go command in dir with GOWORK=off and GOFLAGS=-mod=mod
// (GOPROXY, GOMODCACHE and the rest come from the environment). Its stderr,
// and its stdout unless captured, go to log; progress is reported while it
// runs; a failure carries the tail of the output.
func (b *builder) runGo(ctx context.Context, what, step, dir string, log *os.File, logPath string, stdout *bytes.Buffer, args ...string) error {
	goCmd := b.opts.GoCommand
	if goCmd == "" {
		goCmd = "go"
	}
	fmt.Fprintf(log, "### %s: %s %s\n", step, goCmd, strings.Join(args, " "))
	tail := &tailBuffer{max: 8 << 10}
	cmd := exec.CommandContext(ctx, goCmd, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	cmd.Stderr = io.MultiWriter(log, tail)
	cmd.Stdout = cmd.Stderr
	if stdout != nil {
		cmd.Stdout = io.MultiWriter(stdout, tail)
	}
	cmd.SysProcAttr = childSysProcAttr()
	// Kill the whole process group (compile, link) on cancellation.
	cmd.Cancel = func() error { return killGroup(cmd.Process.Pid) }
	cmd.WaitDelay = 10 * time.Second

	err := b.rep.during(fmt.Sprintf("building %s: %s", what, step), cmd.Run)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			err = fmt.Errorf("%w (%w)", ctxErr, err)
		}
		return fmt.Errorf("%s %s: %w\n--- last output (full log: %s) ---\n%s", goCmd, strings.Join(args, " "), err, logPath, tail.String())
	}
	return nil
}
