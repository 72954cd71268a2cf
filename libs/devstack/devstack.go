// Package devstack runs the whole Piggy system locally on real parts: a
// kube-apiserver + etcd (kubetest), an OCI registry with a demo image, the
// AWS-compatible endpoint seeded with demo values (or real AWS), and the
// image-resolver, secret-broker and admission-gateway binaries with
// generated certificates (TLS and mTLS as in production), with the webhook
// registered. Demo creates a pod through the API and runs its container
// through piggy-env as a kubelet would.
//
// `make dev` runs it through cmd/piggy-dev; the tests run the demo too.
package devstack

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/piggysec/piggy/libs/awslocal"
	"github.com/piggysec/piggy/libs/kubetest"
	"github.com/piggysec/piggy/libs/serve"
	"github.com/piggysec/piggy/libs/testca"
	"github.com/piggysec/piggy/libs/tlsreload"
)

// Ports are the loopback ports of the stack; 0 picks free ones.
type Ports struct {
	GatewayHTTPS, GatewayGRPC, ResolverGRPC, BrokerHTTPS, BrokerGRPC, Registry, AWS int
}

// DefaultPorts are stable so the printed commands stay valid across runs.
var DefaultPorts = Ports{GatewayHTTPS: 18443, GatewayGRPC: 19443, ResolverGRPC: 19444, BrokerHTTPS: 28443, BrokerGRPC: 29443, Registry: 15000, AWS: 14566}

// Options configures Start.
type Options struct {
	// Dir holds certificates, binaries, logs and pod volumes.
	Dir string
	// RepoRoot is the Piggy checkout the binaries are built from.
	RepoRoot string
	// Kube configures the cluster.
	Kube kubetest.Options
	// Ports are the loopback ports.
	Ports Ports
	// RealAWS uses the standard AWS credential chain and endpoints instead
	// of the local AWS-compatible endpoint.
	RealAWS bool
	// Region is the AWS region (default us-east-1).
	Region string
	// Out receives one line per step.
	Out io.Writer
}

// Demo objects.
const (
	DemoNamespace      = "demo"
	DemoServiceAccount = "app"
	DemoSecretName     = "demo/app"
	DemoSSMPath        = "/demo/app"
	brokerNamespace    = "piggy"
	brokerSA           = "secret-broker"
	brokerRole         = "arn:aws:iam::123456789012:role/piggy-secret-broker"
	// DemoAppRole is the IAM role the demo service account may assume
	// itself (standalone mode, IRSA).
	DemoAppRole = "arn:aws:iam::123456789012:role/piggy-demo-app"
	stsAudience = "sts.amazonaws.com"
)

// DemoValues are the demo secret's values (not real secrets).
var DemoValues = map[string]string{"DB_PASSWORD": "demo-db-password", "API_TOKEN": "demo-api-token"}

// Stack is a running local system.
type Stack struct {
	opts     Options
	Cluster  *kubetest.Cluster
	AWS      *awslocal.Server
	CertDir  string
	BinDir   string
	LogDir   string
	Registry string // host:port
	AWSURL   string

	resolver, broker, gateway *service
	brokerEnv                 []string // the broker's AWS environment
	demoPod                   string   // name of the last demo pod, for the printed commands
	servers                   []*http.Server
	serverDone                []chan struct{}
}

// step prints one progress line with the time a step took.
func (s *Stack) step(start time.Time, format string, args ...any) {
	fmt.Fprintf(s.opts.Out, "  ✔ %-58s %6s\n", fmt.Sprintf(format, args...), time.Since(start).Round(10*time.Millisecond))
}

// Start brings the stack up. On error everything started so far is
// stopped and the error says which step failed and why.
func Start(ctx context.Context, opts Options) (_ *Stack, err error) {
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	if opts.Region == "" {
		opts.Region = "us-east-1"
	}
	s := &Stack{opts: opts, CertDir: filepath.Join(opts.Dir, "certs"), BinDir: filepath.Join(opts.Dir, "bin"), LogDir: filepath.Join(opts.Dir, "logs")}
	defer func() {
		if err != nil {
			_ = s.Stop()
		}
	}()
	for _, d := range []string{s.CertDir, s.BinDir, s.LogDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := s.checkPorts(); err != nil {
		return nil, err
	}

	t := time.Now()
	if err := s.build(ctx); err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	s.step(t, "built the services, piggy-env and the demo app")

	t = time.Now()
	if err := s.certificates(); err != nil {
		return nil, fmt.Errorf("certificates: %w", err)
	}
	s.step(t, "generated a CA and certificates in %s", s.CertDir)

	t = time.Now()
	if s.Cluster, err = kubetest.Start(ctx, opts.Kube); err != nil {
		return nil, fmt.Errorf("kube-apiserver: %w", err)
	}
	s.step(t, "kube-apiserver and etcd ready at %s", s.Cluster.Host())

	t = time.Now()
	if err := s.startRegistry(ctx); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	s.step(t, "registry with the demo image at %s", s.Registry)

	t = time.Now()
	brokerEnv, err := s.startAWS(ctx)
	if err != nil {
		return nil, fmt.Errorf("AWS endpoint: %w", err)
	}
	if opts.RealAWS {
		s.step(t, "using real AWS (standard credential chain)")
	} else {
		s.step(t, "AWS-compatible endpoint (STS, Secrets Manager, SSM) at %s", s.AWSURL)
	}

	t = time.Now()
	if err := s.startServices(ctx, brokerEnv); err != nil {
		return nil, err
	}
	s.step(t, "image-resolver, secret-broker and admission-gateway serving")

	t = time.Now()
	if err := s.registerWebhook(ctx); err != nil {
		return nil, fmt.Errorf("webhook registration: %w", err)
	}
	s.step(t, "MutatingWebhookConfiguration piggy-dev registered")
	return s, nil
}

// checkPorts reports taken ports before anything starts.
func (s *Stack) checkPorts() error {
	p := s.opts.Ports
	for name, port := range map[string]int{
		"admission-gateway HTTPS": p.GatewayHTTPS, "admission-gateway gRPC": p.GatewayGRPC, "image-resolver gRPC": p.ResolverGRPC,
		"secret-broker HTTPS": p.BrokerHTTPS, "secret-broker gRPC": p.BrokerGRPC, "registry": p.Registry, "AWS endpoint": p.AWS,
	} {
		if port == 0 {
			continue
		}
		ln, err := net.Listen("tcp", addr(port))
		if err != nil {
			return fmt.Errorf("port %d for the %s is not free: %w (choose another with its flag)", port, name, err)
		}
		ln.Close()
	}
	return nil
}

func addr(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// build compiles the binaries the stack runs.
func (s *Stack) build(ctx context.Context) error {
	targets := []struct{ out, pkg string }{
		{"admission-gateway", "./services/admission-gateway"},
		{"image-resolver", "./services/image-resolver"},
		{"secret-broker", "./services/secret-broker"},
		{"piggy-env", "./services/piggy-env"},
		{"piggy-demo-app", "./libs/cmd/piggy-demo-app"},
	}
	for _, tg := range targets {
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", filepath.Join(s.BinDir, tg.out), tg.pkg)
		cmd.Dir = s.opts.RepoRoot
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w\n%s", tg.pkg, err, out)
		}
	}
	return nil
}

// certificates writes the CA, one identity per service (server and client
// usages, loopback names, common name piggy-<service> as the services
// expect of each other by default) and the operator identity for grpcurl.
func (s *Stack) certificates() error {
	ca, err := testca.New("piggy-dev CA")
	if err != nil {
		return err
	}
	for _, n := range []string{"admission-gateway", "image-resolver", "secret-broker", "registry", "aws"} {
		if _, err := ca.WriteFiles(s.CertDir, n, testca.Request{CommonName: "piggy-" + n, Hosts: testca.LoopbackHosts, Usage: testca.Server | testca.Client, Validity: 30 * 24 * time.Hour}); err != nil {
			return err
		}
	}
	_, err = ca.WriteFiles(s.CertDir, "client", testca.Request{CommonName: "piggy-operator", Usage: testca.Client, Validity: 30 * 24 * time.Hour})
	return err
}

func (s *Stack) cert(name string) tlsreload.Files {
	return tlsreload.Files{CertFile: filepath.Join(s.CertDir, name+".crt"), KeyFile: filepath.Join(s.CertDir, name+".key"), CAFile: filepath.Join(s.CertDir, "ca.crt")}
}

// serveTLS serves h on port with the named certificate.
func (s *Stack) serveTLS(ctx context.Context, what string, port int, cert string, h http.Handler) (string, error) {
	src, err := tlsreload.Load(s.cert(cert))
	if err != nil {
		return "", err
	}
	ln, err := serve.Listen(ctx, what, addr(port))
	if err != nil {
		return "", err
	}
	srv := serve.NewHTTPServer(serve.HTTPOptions{Handler: h, TLS: src.ServerConfig(false), Name: what})
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Printf("%s: %v", what, err)
		}
	}()
	s.servers = append(s.servers, srv)
	s.serverDone = append(s.serverDone, done)
	return ln.Addr().String(), nil
}

// startRegistry serves go-containerregistry's registry and pushes the demo
// image, whose ENTRYPOINT/CMD the resolver will read.
func (s *Stack) startRegistry(ctx context.Context) error {
	host, err := s.serveTLS(ctx, "registry", s.opts.Ports.Registry, "registry", registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	if err != nil {
		return err
	}
	s.Registry = host
	img, err := random.Image(512, 1)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Entrypoint = []string{"piggy-demo-app"}
	cf.Config.Cmd = []string{"--greeting", "hello from the image CMD"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	ref, err := name.ParseReference(s.DemoImage())
	if err != nil {
		return err
	}
	pool, err := tlsreload.Load(tlsreload.Files{CAFile: filepath.Join(s.CertDir, "ca.crt")})
	if err != nil {
		return err
	}
	tr := &http.Transport{TLSClientConfig: pool.ClientConfig("127.0.0.1")}
	return remote.Write(ref, img, remote.WithContext(ctx), remote.WithTransport(tr))
}

// DemoImage is the demo application's image reference.
func (s *Stack) DemoImage() string { return s.Registry + "/demo/app:1" }

// startAWS serves the AWS-compatible endpoint (unless RealAWS), trusting
// web identity tokens signed by the cluster for the broker's role, seeds
// the demo secret and parameters, and returns the broker's AWS environment.
func (s *Stack) startAWS(ctx context.Context) ([]string, error) {
	cs := s.Cluster.Clientset()
	if _, err := kubetest.CreateNamespace(ctx, cs, brokerNamespace); err != nil {
		return nil, err
	}
	if _, err := kubetest.CreateServiceAccount(ctx, cs, brokerNamespace, brokerSA); err != nil {
		return nil, err
	}
	if _, err := kubetest.CreateNamespace(ctx, cs, DemoNamespace); err != nil {
		return nil, err
	}
	if _, err := kubetest.CreateServiceAccount(ctx, cs, DemoNamespace, DemoServiceAccount); err != nil {
		return nil, err
	}
	env := []string{"AWS_REGION=" + s.opts.Region}
	if s.opts.RealAWS {
		return env, nil
	}
	jwks, err := cs.RESTClient().Get().AbsPath("/openid/v1/jwks").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the cluster's JWKS: %w", err)
	}
	aws, err := awslocal.New(awslocal.Options{
		Region:      s.opts.Region,
		WebIdentity: &awslocal.WebIdentity{Issuer: kubetest.ServiceAccountIssuer, Audience: stsAudience, JWKS: jwks},
		Trust: map[string][]string{
			brokerRole:  {"system:serviceaccount:" + brokerNamespace + ":" + brokerSA},
			DemoAppRole: {"system:serviceaccount:" + DemoNamespace + ":" + DemoServiceAccount},
		},
	})
	if err != nil {
		return nil, err
	}
	s.AWS = aws
	host, err := s.serveTLS(ctx, "aws", s.opts.Ports.AWS, "aws", aws)
	if err != nil {
		return nil, err
	}
	s.AWSURL = "https://" + host
	if _, err := aws.PutSecretString(DemoSecretName, `{"DB_PASSWORD": "demo-db-password", "API_TOKEN": "demo-api-token", "PORT": 8080}`); err != nil {
		return nil, err
	}
	for k, v := range map[string]string{"DB_PASSWORD": "demo-ssm-db-password", "API_TOKEN": "demo-ssm-api-token"} {
		if _, err := aws.PutParameter(DemoSSMPath+"/"+k, awslocal.ParameterSecureString, v); err != nil {
			return nil, err
		}
	}

	// The broker's IRSA token, as EKS would project it.
	exp := int64(24 * 3600)
	tr, err := cs.CoreV1().ServiceAccounts(brokerNamespace).CreateToken(ctx, brokerSA, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{stsAudience}, ExpirationSeconds: &exp},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, err
	}
	tokenFile := filepath.Join(s.opts.Dir, "secret-broker-irsa-token")
	if err := os.WriteFile(tokenFile, []byte(tr.Status.Token), 0o600); err != nil {
		return nil, err
	}
	return append(env,
		"AWS_ENDPOINT_URL="+s.AWSURL, "AWS_ENDPOINT_URL_STS="+s.AWSURL,
		"AWS_CA_BUNDLE="+filepath.Join(s.CertDir, "ca.crt"),
		"AWS_ROLE_ARN="+brokerRole, "AWS_WEB_IDENTITY_TOKEN_FILE="+tokenFile,
		"AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY=", "AWS_SESSION_TOKEN=", "AWS_PROFILE=",
	), nil
}

func tlsArgs(f tlsreload.Files) []string {
	return []string{"--tls-cert-file", f.CertFile, "--tls-key-file", f.KeyFile, "--tls-ca-file", f.CAFile}
}

// startServices starts the three services in dependency order.
func (s *Stack) startServices(ctx context.Context, brokerEnv []string) error {
	p := s.opts.Ports
	kubeconfig := s.Cluster.KubeconfigPath()
	s.brokerEnv = brokerEnv
	var err error
	s.resolver, err = startService(ctx, "image-resolver", filepath.Join(s.BinDir, "image-resolver"), append(tlsArgs(s.cert("image-resolver")),
		"--grpc-address", addr(p.ResolverGRPC), "--metrics-address", "127.0.0.1:0", "--kubeconfig", kubeconfig,
		"--registry-ca-file", filepath.Join(s.CertDir, "ca.crt"),
		// The stack's registry listens on loopback, which is refused by default.
		"--allow-internal-registries", s.Registry), nil, filepath.Join(s.LogDir, "image-resolver.log"), "grpc")
	if err != nil {
		return err
	}
	if err := s.startBroker(ctx, addr(p.BrokerHTTPS), addr(p.BrokerGRPC), nil); err != nil {
		return err
	}
	return s.startGateway(ctx, addr(p.GatewayHTTPS), addr(p.GatewayGRPC), nil)
}

// startBroker starts the secret-broker on the given addresses with extra
// arguments.
func (s *Stack) startBroker(ctx context.Context, https, grpc string, extra []string) (err error) {
	s.broker, err = startService(ctx, "secret-broker", filepath.Join(s.BinDir, "secret-broker"), slices.Concat(tlsArgs(s.cert("secret-broker")),
		[]string{"--listen-address", https, "--grpc-address", grpc, "--metrics-address", "127.0.0.1:0",
			"--kubeconfig", s.Cluster.KubeconfigPath()}, extra), append(slices.Clip(s.brokerEnv), "POD_NAMESPACE="+brokerNamespace), // its start claims (Leases) live there
		filepath.Join(s.LogDir, "secret-broker.log"), "grpc", "gateway")
	return err
}

// startGateway starts the admission-gateway on the given addresses with
// extra arguments.
func (s *Stack) startGateway(ctx context.Context, webhook, grpc string, extra []string) (err error) {
	s.gateway, err = startService(ctx, "admission-gateway", filepath.Join(s.BinDir, "admission-gateway"), slices.Concat(tlsArgs(s.cert("admission-gateway")),
		[]string{"--listen-address", webhook, "--grpc-address", grpc, "--metrics-address", "127.0.0.1:0",
			"--kubeconfig", s.Cluster.KubeconfigPath(), "--image-resolver-address", s.resolver.addr("grpc"),
			"--broker-ca-file", filepath.Join(s.CertDir, "ca.crt")}, extra),
		[]string{"PIGGY_ADDRESS=" + s.BrokerURL(), "PIGGY_ENV_IMAGE=" + PiggyEnvImage},
		filepath.Join(s.LogDir, "admission-gateway.log"), "grpc", "webhook")
	return err
}

// Reconfigure restarts the secret-broker and the admission-gateway on the
// addresses they serve now, with extra arguments besides the stack's own
// (what an operator's helm upgrade of their values does); nil extras
// restore the stack's configuration.
func (s *Stack) Reconfigure(ctx context.Context, brokerArgs, gatewayArgs []string) error {
	bHTTPS, bGRPC := s.broker.addr("gateway"), s.broker.addr("grpc")
	gWebhook, gGRPC := s.gateway.addr("webhook"), s.gateway.addr("grpc")
	if err := errors.Join(s.gateway.stop(), s.broker.stop()); err != nil {
		return fmt.Errorf("stop the services: %w", err)
	}
	if err := s.startBroker(ctx, bHTTPS, bGRPC, brokerArgs); err != nil {
		return err
	}
	return s.startGateway(ctx, gWebhook, gGRPC, gatewayArgs)
}

// PiggyEnvImage names the install init container's image; locally the
// piggy-env binary stands in for it.
const PiggyEnvImage = "piggy-env:dev"

// BrokerURL is the broker's HTTPS address as pods use it.
func (s *Stack) BrokerURL() string { return "https://" + s.broker.addr("gateway") }

// registerWebhook points the apiserver at the gateway.
func (s *Stack) registerWebhook(ctx context.Context) error {
	ca, err := os.ReadFile(filepath.Join(s.CertDir, "ca.crt"))
	if err != nil {
		return err
	}
	url := "https://" + s.gateway.addr("webhook") + "/mutate"
	fail := admissionregistrationv1.Fail
	none := admissionregistrationv1.SideEffectClassNone
	ifNeeded := admissionregistrationv1.IfNeededReinvocationPolicy
	timeout := int32(5)
	_, err = s.Cluster.Clientset().AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "piggy-dev"},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:         "pods.piggysec.com",
			ClientConfig: admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: ca},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
			}},
			FailurePolicy: &fail, SideEffects: &none, TimeoutSeconds: &timeout, ReinvocationPolicy: &ifNeeded,
			AdmissionReviewVersions: []string{"v1"},
			NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
				Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"kube-system", brokerNamespace},
			}}},
		}},
	}, metav1.CreateOptions{})
	return err
}

// Stop stops what the stack started, services first.
func (s *Stack) Stop() error {
	var errs []error
	for _, svc := range []*service{s.gateway, s.broker, s.resolver} {
		if svc != nil {
			errs = append(errs, svc.stop())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i, srv := range s.servers {
		errs = append(errs, srv.Shutdown(ctx))
		<-s.serverDone[i]
	}
	if s.Cluster != nil {
		errs = append(errs, s.Cluster.Stop())
	}
	return errors.Join(errs...)
}

// clientTLS is an operator's mTLS client configuration for the services.
func (s *Stack) clientTLS() (*tls.Config, error) {
	src, err := tlsreload.Load(s.cert("client"))
	if err != nil {
		return nil, err
	}
	return src.ClientConfig("127.0.0.1"), nil
}
