package deploytest

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// dockerfile is the parsed instruction list of deploy/docker/<image>.Dockerfile:
// continuation lines joined, comments dropped.
type instruction struct {
	cmd, rest string
	stage     string
}

func dockerfile(t testing.TB, image string) []instruction {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot(), "deploy", "docker", image+".Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var out []instruction
	var stage, cur string
	for _, line := range strings.Split(string(raw), "\n") {
		trimmed := strings.TrimSpace(line)
		if cur == "" && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur += strings.TrimSuffix(trimmed, "\\") + " "
			continue
		}
		cur += trimmed
		cmd, rest, _ := strings.Cut(cur, " ")
		cmd = strings.ToUpper(cmd)
		if cmd == "FROM" {
			if _, as, ok := strings.Cut(rest, " AS "); ok {
				stage = strings.TrimSpace(as)
			}
		}
		out = append(out, instruction{cmd: cmd, rest: strings.TrimSpace(rest), stage: stage})
		cur = ""
	}
	return out
}

// dockerfileEntrypoint returns the exec-form ENTRYPOINT of the final stage.
func dockerfileEntrypoint(t testing.TB, image string) []string {
	t.Helper()
	var entry []string
	ins := dockerfile(t, image)
	final := ins[len(ins)-1].stage
	for _, i := range ins {
		if i.cmd == "ENTRYPOINT" && i.stage == final {
			if err := json.Unmarshal([]byte(i.rest), &entry); err != nil {
				t.Fatalf("%s: ENTRYPOINT %s is not the exec form: %v", image, i.rest, err)
			}
		}
	}
	return entry
}

var argRef = regexp.MustCompile(`\$\{?([A-Z_]+)\}?`)

// TestDockerfiles: each image builds from the workspace with golang 1.26 into
// a distroless non-root image whose ENTRYPOINT is the binary; the Go build
// commands of the Dockerfiles are run here as written (docker is not), and
// the COPY sources exist.
func TestDockerfiles(t *testing.T) {
	for _, image := range []string{"admission-gateway", "image-resolver", "secret-broker", "piggy-env"} {
		t.Run(image, func(t *testing.T) {
			ins := dockerfile(t, image)
			final := ins[len(ins)-1].stage
			if final != "runtime" {
				t.Errorf("the last (default) stage is %q, want runtime", final)
			}
			var froms, users []string
			var builds []string
			for _, i := range ins {
				switch i.cmd {
				case "FROM":
					froms = append(froms, i.stage+"="+i.rest)
				case "USER":
					if i.stage == final {
						users = append(users, i.rest)
					}
				case "RUN":
					if strings.Contains(i.rest, "go build") {
						builds = append(builds, i.rest)
					}
				case "COPY":
					if !strings.HasPrefix(i.rest, "--from=") {
						fields := strings.Fields(i.rest)
						for _, src := range fields[:len(fields)-1] {
							if _, err := os.Stat(filepath.Join(repoRoot(), src)); err != nil {
								t.Errorf("COPY source %s: %v", src, err)
							}
						}
					}
				}
			}
			joined := strings.Join(froms, "\n")
			if !strings.Contains(joined, "build=--platform=$BUILDPLATFORM golang:${GO_VERSION} AS build") ||
				!strings.Contains(joined, "runtime=gcr.io/distroless/static-debian12:nonroot AS runtime") {
				t.Errorf("stages:\n%s", joined)
			}
			if len(users) != 1 || users[0] != "65532:65532" {
				t.Errorf("final stage USER %v, want 65532:65532 (distroless nonroot)", users)
			}
			entry := dockerfileEntrypoint(t, image)
			if len(entry) != 1 || entry[0] != "/usr/local/bin/"+image {
				t.Errorf("ENTRYPOINT %v", entry)
			}
			if len(builds) == 0 {
				t.Fatal("no go build")
			}
			// Run the image's own go build command (the service's, not the
			// healthcheck's) for the host platform.
			for _, b := range builds {
				cmdline := b[strings.Index(b, "go build"):]
				if !strings.Contains(cmdline, "./services/"+image) {
					continue
				}
				out := t.TempDir()
				cmdline = strings.ReplaceAll(cmdline, "/out/", out+"/")
				cmdline = argRef.ReplaceAllStringFunc(cmdline, func(ref string) string {
					return map[string]string{"VERSION": "test"}[argRef.FindStringSubmatch(ref)[1]]
				})
				cmd := exec.Command("sh", "-c", cmdline)
				cmd.Dir = repoRoot()
				cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-buildvcs=false")
				if b, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("%s: %v\n%s", cmdline, err, b)
				}
				bin := filepath.Join(out, image)
				if info, err := os.Stat(bin); err != nil || info.Size() == 0 {
					t.Fatalf("%s produced no binary: %v", cmdline, err)
				}
				// Static: no dynamic section, so it runs on distroless/static.
				if b, _ := exec.Command("file", bin).Output(); len(b) > 0 && !strings.Contains(string(b), "statically linked") {
					t.Errorf("%s is not statically linked: %s", bin, b)
				}
			}
		})
	}
}

// TestHealthcheckProgram: deploy/healthcheck (the compose images' Docker
// HEALTHCHECK) exits 0 on 2xx and 1 otherwise.
func TestHealthcheckProgram(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "healthcheck")
	cmd := exec.Command("go", "build", "-o", bin, "./deploy/healthcheck/main.go")
	cmd.Dir = repoRoot()
	cmd.Env = append(os.Environ(), "GOWORK=off", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	srv := newStatusServer(t)
	for path, want := range map[string]int{"/ok": 0, "/unready": 1} {
		if code := exitCode(exec.Command(bin, srv+path).Run()); code != want {
			t.Errorf("healthcheck %s exited %d, want %d", path, code, want)
		}
	}
	if code := exitCode(exec.Command(bin, "http://127.0.0.1:1/readyz").Run()); code != 1 {
		t.Errorf("healthcheck of a closed port exited %d, want 1", code)
	}
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}
