package proctest

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/piggysec/piggy/libs/testca"
	"github.com/piggysec/piggy/libs/tlsreload"
)

// Service describes a Piggy service binary for the shared lifecycle test.
type Service struct {
	// Dir holds the main package (usually ".").
	Dir string
	// GRPC maps gRPC server names (as logged in "server") to their address flag.
	GRPC map[string]string
	// HTTPS maps HTTPS server names to their address flag.
	HTTPS map[string]string
	// Args are extra arguments the service needs to start.
	Args []string
	// Callers maps each gRPC server name to its methods (full names) and
	// the one identity of the PKI expected to call each.
	Callers map[string]map[string]Caller
}

// Caller is an identity of the PKI, as a service's gRPC method expects it.
type Caller string

// The identities of a PKI: Peer is the service identity (every service
// of a test shares it; it carries the admission-gateway's name), Operator
// the client identity, AnyClient any certificate of the CA.
const (
	Peer      Caller = "peer"
	Operator  Caller = "operator"
	AnyClient Caller = "any client of the CA"
)

// PKI is a CA with a server+client certificate for a service and a client
// certificate for tests, written to a temp dir.
type PKI struct {
	// Service is the service's identity (server and client usage).
	Service tlsreload.Files
	// Client is a test client's identity signed by the same CA: an
	// operator (common name piggy-operator).
	Client *tlsreload.Source
	// Peer is the service identity, loaded for calls one service makes to
	// another (the image-resolver serves ResolveImage only to it).
	Peer *tlsreload.Source
	// CA is the issuing authority, for issuing more certificates.
	CA *testca.CA
	// Dir holds the PEM files.
	Dir string
}

// NewPKI writes a fresh PKI for tests.
func NewPKI(t testing.TB) *PKI {
	t.Helper()
	ca, err := testca.New("piggy test CA")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// One identity for every service of a test: it carries the name the
	// image-resolver expects of the admission-gateway by default.
	svc, err := ca.WriteFiles(dir, "service", testca.Request{CommonName: "service", Hosts: append([]string{"piggy-admission-gateway"}, testca.LoopbackHosts...), Usage: testca.Server | testca.Client})
	if err != nil {
		t.Fatal(err)
	}
	// The client is an operator (the services' default --operator-identities).
	cf, err := ca.WriteFiles(dir, "client", testca.Request{CommonName: "piggy-operator", Usage: testca.Client})
	if err != nil {
		t.Fatal(err)
	}
	client, err := tlsreload.Load(cf)
	if err != nil {
		t.Fatal(err)
	}
	peer, err := tlsreload.Load(svc)
	if err != nil {
		t.Fatal(err)
	}
	return &PKI{Service: svc, Client: client, Peer: peer, CA: ca, Dir: dir}
}

// TLSArgs are the service flags naming the PKI's service identity.
func (p *PKI) TLSArgs() []string {
	return []string{"--tls-cert-file", p.Service.CertFile, "--tls-key-file", p.Service.KeyFile, "--tls-ca-file", p.Service.CAFile}
}

// LoopbackArgs binds every server of s and the metrics port to free
// loopback ports.
func (s Service) LoopbackArgs() []string {
	args := []string{"--metrics-address=127.0.0.1:0"}
	for _, m := range []map[string]string{s.GRPC, s.HTTPS} {
		for _, flag := range m {
			args = append(args, "--"+flag+"=127.0.0.1:0")
		}
	}
	return args
}

// TestLifecycle builds the service, starts it with test certificates,
// checks gRPC health (mTLS) on every gRPC port, /healthz and /readyz on
// every HTTPS port and on the metrics port, /metrics, the profiles of
// --profiling, and that SIGTERM ends
// it with exit code 0 within 5 seconds. It then checks that bad
// configuration exits non-zero with a one-line message.
func TestLifecycle(t *testing.T, s Service) {
	bin := Build(t, s.Dir)
	name := filepath.Base(bin)

	t.Run("starts healthy and stops on SIGTERM", func(t *testing.T) {
		pki := NewPKI(t)
		args := append(append(append(s.LoopbackArgs(), pki.TLSArgs()...), s.Args...), "--profiling")
		p := Start(t, bin, args, nil)
		names := []string{"metrics"}
		for n := range s.GRPC {
			names = append(names, n)
		}
		for n := range s.HTTPS {
			names = append(names, n)
		}
		addrs := p.Addresses(t, names...)
		for n := range s.GRPC {
			CheckGRPCHealth(t, addrs[n], pki.Client.ClientConfig("127.0.0.1"))
		}
		for n := range s.HTTPS {
			for _, path := range []string{"/healthz", "/readyz"} {
				if code, body := Get(t, "https://"+addrs[n]+path, pki.Client.ClientConfig("127.0.0.1")); code != http.StatusOK {
					t.Errorf("%s %s = %d %q, want 200", n, path, code, body)
				}
			}
		}
		checkCallers(t, pki, addrs, s.Callers)
		p.WaitForRecord(t, 10*time.Second, func(r map[string]any) bool {
			return r["message"] == "starting" && r["version"] == "dev" && r["go_version"] == runtime.Version()
		})
		if _, metrics := Get(t, "http://"+addrs["metrics"]+"/metrics", nil); !strings.Contains(metrics, `piggy_build_info{go_version="`+runtime.Version()+`"`) {
			t.Errorf("/metrics has no piggy_build_info of this build")
		}
		for _, path := range []string{"/healthz", "/readyz", "/metrics", "/debug/pprof/cmdline"} {
			if code, _ := Get(t, "http://"+addrs["metrics"]+path, nil); code != http.StatusOK {
				t.Errorf("metrics %s = %d, want 200", path, code)
			}
		}
		code, took := p.Stop(t, syscall.SIGTERM, 10*time.Second)
		if code != 0 {
			t.Errorf("exit code after SIGTERM = %d, want 0", code)
		}
		if took > 5*time.Second {
			t.Errorf("exit took %s after SIGTERM, want at most 5s", took)
		}
	})

	t.Run("--version", func(t *testing.T) {
		out, err := exec.Command(bin, "--version").Output()
		if err != nil || !strings.HasPrefix(string(out), name+" dev (go") {
			t.Errorf("--version: %v, stdout %q, want %q", err, out, name+" dev (go...)")
		}
	})

	t.Run("bad configuration", func(t *testing.T) {
		pki := NewPKI(t)
		missing := filepath.Join(t.TempDir(), "missing.crt")
		good := append(s.LoopbackArgs(), s.Args...)
		var someFlag string
		for _, m := range []map[string]string{s.GRPC, s.HTTPS} {
			for _, f := range m {
				someFlag = f
			}
		}
		tests := []struct {
			name     string
			args     []string
			env      []string
			wantCode int
			want     string
		}{
			{"no TLS files", good, nil, 2, "--tls-cert-file is required"},
			{"missing cert file", append(append([]string{}, good...), "--tls-cert-file", missing, "--tls-key-file", pki.Service.KeyFile, "--tls-ca-file", pki.Service.CAFile), nil, 1, missing},
			{"bad address", append(append(append([]string{}, good...), pki.TLSArgs()...), "--"+someFlag+"=nonsense"), nil, 1, `listen on "nonsense"`},
			{"unparsable env value", append(append([]string{}, good...), pki.TLSArgs()...), []string{"DEBUG=maybe"}, 2, `invalid value "maybe" for DEBUG`},
			{"unknown flag", []string{"--no-such-flag"}, nil, 2, "no-such-flag"},
			{"profiling without metrics", append(append(append([]string{}, good...), pki.TLSArgs()...), "--profiling", "--metrics-address="), nil, 2, "--profiling needs --metrics-address"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				code, stderr := Run(t, bin, tt.args, tt.env)
				if code != tt.wantCode {
					t.Errorf("exit code = %d, want %d; stderr:\n%s", code, tt.wantCode, stderr)
				}
				last := lastLine(stderr)
				if !strings.HasPrefix(last, name+": ") || !strings.Contains(last, tt.want) {
					t.Errorf("last stderr line = %q, want %q prefix and %q", last, name+": ", tt.want)
				}
			})
		}
	})
}

// checkCallers calls every listed method as each identity of the PKI and a
// stranger (another certificate of the same CA) and checks that exactly the
// expected callers get past the identity check. Requests are empty: a
// caller that gets past the check may get any other error.
func checkCallers(t *testing.T, pki *PKI, addrs map[string]string, callers map[string]map[string]Caller) {
	t.Helper()
	stranger, err := pki.CA.WriteFiles(pki.Dir, "stranger", testca.Request{CommonName: "stranger", Usage: testca.Client})
	if err != nil {
		t.Fatal(err)
	}
	strangerTLS, err := tlsreload.Load(stranger)
	if err != nil {
		t.Fatal(err)
	}
	identities := map[Caller]*tlsreload.Source{Peer: pki.Peer, Operator: pki.Client, "stranger": strangerTLS}
	for server, methods := range callers {
		for method, want := range methods {
			for who, src := range identities {
				conn, err := grpc.NewClient(addrs[server], grpc.WithTransportCredentials(credentials.NewTLS(src.ClientConfig("127.0.0.1"))))
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
				err = conn.Invoke(ctx, method, &emptypb.Empty{}, &emptypb.Empty{})
				cancel()
				conn.Close()
				denied := status.Code(err) == codes.PermissionDenied
				if allowed := want == AnyClient || who == want; allowed == denied {
					t.Errorf("%s %s as %s: %v; want allowed=%v", server, method, who, err, allowed)
				}
			}
		}
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

// UnreachableKubeconfig writes a kubeconfig whose API server cannot be
// reached, for services that build their Kubernetes client at start but
// only call the API while serving.
func UnreachableKubeconfig(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	const cfg = `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
