package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/piggysec/piggy/libs/awslocal"
	secretbrokerv1 "github.com/piggysec/piggy/libs/gen/piggy/secretbroker/v1"
	"github.com/piggysec/piggy/libs/kubetest"
	"github.com/piggysec/piggy/libs/podgrant"
	"github.com/piggysec/piggy/libs/podidentity"
	"github.com/piggysec/piggy/libs/podsettings"
	"github.com/piggysec/piggy/libs/proctest"
	"github.com/piggysec/piggy/libs/testca"
	"github.com/piggysec/piggy/libs/tlsreload"
)

// The real-parts tests: one kube-apiserver + etcd for the package
// (kubetest's shared cluster), and per test an awslocal server over TLS and
// a broker process that gets its AWS credentials through STS web identity
// with a token the apiserver issued (IRSA), reads pods and reviews tokens
// with its own RBAC-limited service account, and is called over HTTPS (as
// piggy-env does) and mTLS gRPC.

var kube = kubetest.NewShared(kubetest.DefaultOptions(os.Getenv))

func TestMain(m *testing.M) {
	code := kube.Run(m)
	if leaks := allLogs.leaks(); len(leaks) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: secret values found in %d log lines of the suite:\n%s\n", len(leaks), strings.Join(leaks, "\n"))
		code = 1
	}
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// Names of the test world.
const (
	awsRegion     = "eu-west-3"
	brokerRole    = "arn:aws:iam::111122223333:role/piggy-secret-broker"
	brokerNS      = "piggy-system"
	brokerSA      = "secret-broker"
	brokerSubject = "system:serviceaccount:" + brokerNS + ":" + brokerSA
	audience      = "piggy"
)

// logCollector keeps every log line the suite's processes and servers
// wrote, and the secret values seeded into AWS, so that the suite can prove
// no value was ever logged.
type logCollector struct {
	mu     sync.Mutex
	lines  []string
	values []string
}

var allLogs = &logCollector{}

func (c *logCollector) add(source string, lines ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range lines {
		c.lines = append(c.lines, source+": "+l)
	}
}

func (c *logCollector) seed(values ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.values = append(c.values, values...)
}

func (c *logCollector) Write(p []byte) (int, error) {
	c.add("awslocal", strings.Split(strings.TrimRight(string(p), "\n"), "\n")...)
	return len(p), nil
}

// leaks returns the log lines holding a seeded value.
func (c *logCollector) leaks() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, l := range c.lines {
		for _, v := range c.values {
			if strings.Contains(l, v) {
				out = append(out, l)
				break
			}
		}
	}
	return out
}

func (c *logCollector) count() (lines, values int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.lines), len(c.values)
}

var (
	buildOnce sync.Once
	binDir    string
	binPath   string
	buildErr  error
)

// brokerBinary builds the broker once for the package.
func brokerBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "secret-broker-bin-")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "secret-broker")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// world is one test's broker with its AWS and Kubernetes surroundings.
type world struct {
	t       testing.TB
	cluster *kubetest.Cluster
	cs      *kubernetes.Clientset
	aws     *awslocal.Server
	proc    *proctest.Process
	addrs   map[string]string
	ca      *testca.CA
	dir     string
	// https is what piggy-env would use: server TLS verified with the CA.
	https *http.Client
	// client is an mTLS identity for gRPC.
	client *tlsreload.Source
	// defaults are the pod settings defaults the broker runs with.
	defaults podsettings.Defaults
}

// worldOptions change the broker's start.
type worldOptions struct {
	args []string
	env  []string
	// aws changes the awslocal server's options (its clock, the lifetime
	// of the credentials it issues).
	aws func(*awslocal.Options)
}

func newWorld(t testing.TB, opts worldOptions) *world {
	t.Helper()
	bin := brokerBinary(t)
	c := kube.Cluster(t)
	w := &world{t: t, cluster: c, cs: c.Clientset(), dir: t.TempDir()}
	ctx := context.Background()

	// The broker's own identity and least privileges in the cluster.
	if _, err := w.cs.CoreV1().Namespaces().Get(ctx, brokerNS, metav1.GetOptions{}); err != nil {
		if _, err := kubetest.CreateNamespace(ctx, w.cs, brokerNS); err != nil {
			t.Fatal(err)
		}
		if _, err := kubetest.CreateServiceAccount(ctx, w.cs, brokerNS, brokerSA); err != nil {
			t.Fatal(err)
		}
		role := &rbacv1.ClusterRole{
			ObjectMeta: metav1.ObjectMeta{Name: "piggy-secret-broker"},
			Rules: []rbacv1.PolicyRule{
				{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}},
				{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}},
			},
		}
		if _, err := w.cs.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		binding := &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "piggy-secret-broker"},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: brokerNS, Name: brokerSA}},
		}
		if _, err := w.cs.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// Start claims: Leases in the broker's own namespace only (the
		// chart's Role).
		claims := &rbacv1.Role{
			ObjectMeta: metav1.ObjectMeta{Name: "piggy-secret-broker-start-claims", Namespace: brokerNS},
			Rules: []rbacv1.PolicyRule{
				{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"create", "get", "delete", "deletecollection"}},
			},
		}
		if _, err := w.cs.RbacV1().Roles(brokerNS).Create(ctx, claims, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		claimsBinding := &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: claims.Name, Namespace: brokerNS},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: claims.Name},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: brokerNS, Name: brokerSA}},
		}
		if _, err := w.cs.RbacV1().RoleBindings(brokerNS).Create(ctx, claimsBinding, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	apiToken, err := kubetest.RequestToken(ctx, w.cs, brokerNS, brokerSA, kubetest.TokenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := w.file("kubeconfig", fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: %q, certificate-authority-data: %s}}]
users: [{name: broker, user: {token: %q}}]
contexts: [{name: c, context: {cluster: c, user: broker}}]
current-context: c
`, c.Host(), b64(c.CAPEM()), apiToken.Token))
	// IRSA: the projected token for STS, verified by awslocal against the
	// apiserver's real signing keys.
	irsa, err := kubetest.RequestToken(ctx, w.cs, brokerNS, brokerSA, kubetest.TokenOptions{Audiences: []string{"sts.amazonaws.com"}})
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := w.file("irsa-token", irsa.Token)
	jwks, err := w.cs.CoreV1().RESTClient().Get().AbsPath("/openid/v1/jwks").DoRaw(ctx)
	if err != nil {
		t.Fatal(err)
	}

	awsOpts := awslocal.Options{
		Region:      awsRegion,
		WebIdentity: &awslocal.WebIdentity{Issuer: kubetest.ServiceAccountIssuer, Audience: "sts.amazonaws.com", JWKS: jwks},
		Trust:       map[string][]string{brokerRole: {brokerSubject}},
		Allow:       map[string][]string{brokerRole: {"team-*", "/team-*", "rollout-*", "bench-*"}},
		Logger:      slog.New(slog.NewJSONHandler(allLogs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if opts.aws != nil {
		opts.aws(&awsOpts)
	}
	w.aws, err = awslocal.New(awsOpts)
	if err != nil {
		t.Fatal(err)
	}
	awsTS := httptest.NewTLSServer(w.aws)
	t.Cleanup(awsTS.Close)
	awsCA := w.file("aws-ca.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: awsTS.Certificate().Raw})))

	w.ca, err = testca.New("secret-broker e2e CA")
	if err != nil {
		t.Fatal(err)
	}
	tlsFiles, err := w.ca.WriteFiles(w.dir, "broker", testca.Request{CommonName: "secret-broker", Hosts: testca.LoopbackHosts, Usage: testca.Server | testca.Client})
	if err != nil {
		t.Fatal(err)
	}
	clientFiles, err := w.ca.WriteFiles(w.dir, "operator", testca.Request{CommonName: "piggy-operator", Usage: testca.Client})
	if err != nil {
		t.Fatal(err)
	}
	if w.client, err = tlsreload.Load(clientFiles); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(w.ca.CertPEM)
	w.https = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, MaxIdleConnsPerHost: 64,
	}}
	t.Cleanup(w.https.CloseIdleConnections)

	args := append([]string{
		"--tls-cert-file", tlsFiles.CertFile, "--tls-key-file", tlsFiles.KeyFile, "--tls-ca-file", tlsFiles.CAFile,
		"--listen-address=127.0.0.1:0", "--grpc-address=127.0.0.1:0", "--metrics-address=127.0.0.1:0",
		"--kubeconfig", kubeconfig,
		"--log-level=debug", // more lines for the no-secret-in-logs check
		"--aws-max-backoff=100ms",
	}, opts.args...)
	env := append([]string{
		"POD_NAMESPACE=" + brokerNS,
		"AWS_REGION=" + awsRegion,
		"AWS_ROLE_ARN=" + brokerRole,
		"AWS_WEB_IDENTITY_TOKEN_FILE=" + tokenFile,
		"AWS_ROLE_SESSION_NAME=piggy-secret-broker",
		"AWS_ENDPOINT_URL=" + awsTS.URL,
		"AWS_ENDPOINT_URL_STS=" + awsTS.URL,
		"AWS_CA_BUNDLE=" + awsCA,
		"AWS_EC2_METADATA_DISABLED=true",
		"AWS_CONFIG_FILE=" + filepath.Join(w.dir, "no-aws-config"),
		"AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(w.dir, "no-aws-credentials"),
		"AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY=", "AWS_SESSION_TOKEN=", "AWS_PROFILE=",
		// Every client of the harness calls from 127.0.0.1, like pods
		// behind one NAT: the per-source limit is off unless a test (with
		// clients on other loopback addresses) sets it.
		"PER_SOURCE_RATE=0",
	}, opts.env...)
	w.defaults = podsettings.LoadDefaults(func(name string) string {
		for _, kv := range env {
			if k, v, _ := strings.Cut(kv, "="); k == name {
				return v
			}
		}
		return ""
	}, nil)
	w.proc = proctest.Start(t, bin, args, env)
	w.addrs = w.proc.Addresses(t, "gateway", "grpc", "metrics")
	t.Cleanup(func() {
		code, took := w.proc.Stop(t, syscall.SIGTERM, 10*time.Second)
		allLogs.add("secret-broker", strings.Split(w.proc.Output(), "\n")...)
		if code != 0 {
			t.Errorf("broker exited %d after SIGTERM (took %s)", code, took)
		}
	})
	return w
}

func (w *world) file(name, content string) string {
	w.t.Helper()
	p := filepath.Join(w.dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		w.t.Fatal(err)
	}
	return p
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// seed stores a secret in AWS and remembers its values for the log check.
func (w *world) seed(name string, kv map[string]string) {
	w.t.Helper()
	b, _ := json.Marshal(kv)
	if _, err := w.aws.PutSecretString(name, string(b)); err != nil {
		w.t.Fatal(err)
	}
	for k, v := range kv {
		if !strings.HasPrefix(k, "PIGGY_") && len(v) >= 8 {
			allLogs.seed(v)
		}
	}
}

// secretValue returns a unique value that must never be logged.
func secretValue(tag string) string {
	return "sv-" + tag + "-" + podidentity.NewUID()[:16]
}

// namespace creates a namespace with service accounts.
func (w *world) namespace(prefix string, serviceAccounts ...string) string {
	w.t.Helper()
	ns, err := kubetest.CreateNamespace(context.Background(), w.cs, prefix)
	if err != nil {
		w.t.Fatal(err)
	}
	for _, sa := range serviceAccounts {
		if _, err := kubetest.CreateServiceAccount(context.Background(), w.cs, ns.Name, sa); err != nil {
			w.t.Fatal(err)
		}
	}
	return ns.Name
}

// container is a piggy-launched container as the admission-gateway leaves
// it: a UID and the signature of its command line in the pod annotation,
// and the fetch id of the piggy-env process that asks for it (each of its
// requests is an attempt of that one fetch; empty sends none, as a
// piggy-env older than once-per-start).
type container struct {
	uid       string
	signature string
	fetchID   string
}

// newFetchID is a fetch id as piggy-env makes one per process.
func newFetchID() string { return podidentity.NewUID()[:32] }

// nextFetch is the container asked for by another piggy-env process.
func (c container) nextFetch() container {
	c.fetchID = newFetchID()
	return c
}

// restart reports the next start of container "main" of pod, as the
// kubelet does after a restart: its restartCount one more.
func (w *world) restart(t testing.TB, pod *corev1.Pod) int32 {
	t.Helper()
	var n int32
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		p, err := w.cs.CoreV1().Pods(pod.Namespace).Get(context.Background(), pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(p.Status.ContainerStatuses) == 0 {
			p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "main", Image: p.Spec.Containers[0].Image}}
		} else {
			p.Status.ContainerStatuses[0].RestartCount++
		}
		st := &p.Status.ContainerStatuses[0]
		st.ContainerID = "containerd://" + podidentity.NewUID()
		st.State = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}}
		st.Started, st.Ready = ptr(true), true
		n = st.RestartCount
		_, err = w.cs.CoreV1().Pods(pod.Namespace).UpdateStatus(context.Background(), p, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func ptr[T any](v T) *T { return &v }

// piggyPod creates a pod as the admission-gateway leaves it: its "main"
// container starts through piggy-env with a PIGGY_UID and the grant of
// its references (db, api, api_key, nope) under the settings of the extra
// annotations (names without the prefix) and the broker's defaults.
func (w *world) piggyPod(ns, name, sa string, annotations map[string]string) (*corev1.Pod, container) {
	w.t.Helper()
	return w.launchedPod(ns, name, sa, annotations, "db", "api", "api_key", "nope")
}

// launchedPod is piggyPod with the keys the container references.
func (w *world) launchedPod(ns, name, sa string, annotations map[string]string, keys ...string) (*corev1.Pod, container) {
	w.t.Helper()
	pod, ctr, err := w.createLaunchedPod(ns, name, sa, annotations, keys...)
	if err != nil {
		w.t.Fatal(err)
	}
	return pod, ctr
}

// createLaunchedPod is launchedPod for goroutines: it returns errors.
func (w *world) createLaunchedPod(ns, name, sa string, annotations map[string]string, keys ...string) (*corev1.Pod, container, error) {
	command := []string{"/app/server", "--port=8080"}
	ctr := container{uid: podidentity.NewUID(), signature: podidentity.Signature(command), fetchID: newFetchID()}
	pod, err := kubetest.CreatePod(context.Background(), w.cs, ns, name, sa, func(p *corev1.Pod) {
		p.Annotations = map[string]string{podidentity.AnnotationKey: podidentity.Identities{"main": {UID: ctr.uid, Signature: ctr.signature}}.Format()}
		for k, v := range annotations {
			p.Annotations["piggysec.com/"+k] = v
		}
		account := sa
		if account == "" {
			account = "default"
		}
		s := podsettings.Read(p.Annotations, w.defaults).Settings
		grant := podgrant.New(s.GrantSource(ns, account), s.EnforceIntegrity, s.EnforceServiceAccount, keys)
		c := &p.Spec.Containers[0]
		c.Command, c.Args = []string{"/piggy/piggy-env"}, append([]string{"--"}, command...)
		c.Env = nil
		for _, k := range keys {
			c.Env = append(c.Env, corev1.EnvVar{Name: strings.ToUpper(k), Value: "piggy:" + k})
		}
		c.Env = append(c.Env, corev1.EnvVar{Name: "PIGGY_UID", Value: ctr.uid}, corev1.EnvVar{Name: podgrant.EnvName, Value: grant.Format()})
	})
	return pod, ctr, err
}

// podToken is the projected token the kubelet would mount in the pod.
func (w *world) podToken(pod *corev1.Pod) string {
	w.t.Helper()
	tok, err := kubetest.RequestPodToken(context.Background(), w.cs, pod, audience)
	if err != nil {
		w.t.Fatal(err)
	}
	return tok
}

// answer is the gateway's JSON answer, success or error.
type answer struct {
	Status      int               `json:"-"`
	Values      map[string]string `json:"values"`
	MissingKeys []string          `json:"missingKeys"`
	SourceName  string            `json:"sourceName"`
	Code        int               `json:"code"`
	Message     string            `json:"message"`
}

// getSecrets calls POST /v1/secrets exactly as piggy-env does.
func (w *world) getSecrets(t testing.TB, token string, ctr container, keys ...string) answer {
	t.Helper()
	return w.getSecretsWith(t, w.https, token, ctr, keys...)
}

func (w *world) getSecretsWith(t testing.TB, client *http.Client, token string, ctr container, keys ...string) answer {
	t.Helper()
	a, err := w.tryGetSecrets(client, token, ctr, keys...)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// tryGetSecrets is getSecrets for goroutines: it returns errors.
func (w *world) tryGetSecrets(client *http.Client, token string, ctr container, keys ...string) (answer, error) {
	fields := map[string]any{"containerUid": ctr.uid, "signature": ctr.signature, "keys": keys}
	if ctr.fetchID != "" {
		fields["fetchId"] = ctr.fetchID
	}
	body, _ := json.Marshal(fields)
	req, err := http.NewRequest(http.MethodPost, "https://"+w.addrs["gateway"]+"/v1/secrets", bytes.NewReader(body))
	if err != nil {
		return answer{}, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return answer{}, err
	}
	var a answer
	if err := json.Unmarshal(data, &a); err != nil {
		return answer{}, fmt.Errorf("HTTP %d body %q: %w", resp.StatusCode, data, err)
	}
	a.Status = resp.StatusCode
	return a, nil
}

// grpcClient dials the broker's gRPC port with the operator's certificate.
func (w *world) grpcClient(t testing.TB, cfg *tls.Config) secretbrokerv1.SecretBrokerServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(w.addrs["grpc"], grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return secretbrokerv1.NewSecretBrokerServiceClient(conn)
}

// metric sums the samples of a Prometheus metric whose labels contain every
// given label pair, from text exposition.
func metric(text, name string, labels ...string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(\{[^}]*\})? ([0-9.eE+-]+)$`)
	var sum float64
	for _, m := range re.FindAllStringSubmatch(text, -1) {
		ok := true
		for i := 0; i+1 < len(labels); i += 2 {
			if !strings.Contains(m[1], labels[i]+`="`+labels[i+1]+`"`) {
				ok = false
			}
		}
		if ok {
			v, _ := strconv.ParseFloat(m[2], 64)
			sum += v
		}
	}
	return sum
}

// brokerMetrics scrapes the broker's /metrics.
func (w *world) brokerMetrics(t testing.TB) string {
	t.Helper()
	code, body := proctest.Get(t, "http://"+w.addrs["metrics"]+"/metrics", nil)
	if code != http.StatusOK {
		t.Fatalf("/metrics = %d", code)
	}
	return body
}

// apiserverTokenReviews counts the TokenReviews the apiserver has made
// (answered 201), from its own metrics. Requests it turned away while
// overloaded (429, which client-go retries) are not reviews.
func (w *world) apiserverTokenReviews(t testing.TB) float64 {
	t.Helper()
	raw, err := w.cs.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return metric(string(raw), "apiserver_request_total", "resource", "tokenreviews", "verb", "POST", "code", "201")
}

// apiserverLeaseRequests counts the Lease requests the apiserver has
// served, by verb (POST answered 201, GET and DELETE answered 200), from
// its own metrics; requests turned away while it was overloaded (429,
// retried by client-go) are not counted. They are the cluster's: the
// apiserver's renewals of its own identity Lease are in the GETs.
func (w *world) apiserverLeaseRequests(t testing.TB) map[string]float64 {
	t.Helper()
	raw, err := w.cs.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for verb, code := range map[string]string{"POST": "201", "GET": "200", "DELETE": "200"} {
		out[verb] = metric(string(raw), "apiserver_request_total", "resource", "leases", "verb", verb, "code", code)
	}
	return out
}
