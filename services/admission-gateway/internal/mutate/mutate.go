package mutate

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/piggysec/piggy/libs/podgrant"
	"github.com/piggysec/piggy/libs/podidentity"
	"github.com/piggysec/piggy/libs/podsettings"
	"github.com/piggysec/piggy/services/admission-gateway/internal/brokeraddr"
)

// Names and paths of what Piggy adds to a pod.
const (
	InstallContainerName = "install-piggy-env"
	LauncherVolumeName   = "piggy-env"
	TokenVolumeName      = "piggy-token"
	LauncherDir          = "/piggy"
	LauncherPath         = LauncherDir + "/piggy-env"
	CAFile               = LauncherDir + "/ca.crt"
	TokenDir             = "/var/run/secrets/piggysec.com/serviceaccount"
	TokenFile            = TokenDir + "/token"
)

// ResolveFailurePolicy says what happens when an image's command cannot be
// read.
type ResolveFailurePolicy string

// Resolve failure policies.
const (
	// DenyOnResolveFailure refuses the pod with a message (default).
	DenyOnResolveFailure ResolveFailurePolicy = "deny"
	// AdmitOnResolveFailure admits the pod leaving that container
	// unmutated, with an admission warning.
	AdmitOnResolveFailure ResolveFailurePolicy = "admit"
)

// Config holds the operator's mutation settings.
type Config struct {
	// Defaults are the cluster-wide annotation defaults.
	Defaults podsettings.Defaults
	// EnvImage is the default piggy-env image of the install container.
	EnvImage string
	// TokenAudience is the audience of the projected token (default "piggy").
	TokenAudience string
	// TokenExpiration is the projected token's lifetime (minimum 10m).
	TokenExpiration time.Duration
	// BrokerCABundle is the PEM bundle piggy-env verifies the broker with
	// at start (SetBrokerCABundle replaces it);
	// empty means the system roots.
	BrokerCABundle string
	// AllowedAddresses are the broker URLs pods may use, as
	// brokeraddr.ParsePattern reads them (scheme, host, port and path
	// compared exactly; "*." as the leftmost label of the host stands for
	// one label). Entries that do not parse allow nothing: config.Load
	// refuses them.
	AllowedAddresses []string
	// SkipVerifyTLS lets piggy-env skip broker certificate verification.
	SkipVerifyTLS bool
	// PullSecretNamespaces are the namespaces, besides the pod's own, that
	// piggysec.com/image-pull-secret-namespace may name. Empty: pull
	// secrets come only from the pod's namespace.
	PullSecretNamespaces []string
	// OnResolveFailure is the policy for unreadable image configurations.
	OnResolveFailure ResolveFailurePolicy
	// InstallRunAsUser is the install container's UID; nil leaves it to
	// the image and the pod.
	InstallRunAsUser *int64
	// ResolveTimeout bounds each image lookup.
	ResolveTimeout time.Duration
}

// ImageLookup asks for the ENTRYPOINT and CMD of a container image.
type ImageLookup struct {
	Image          string
	Namespace      string
	ServiceAccount string
	PullSecrets    []SecretRef
	OS, Arch       string
	SkipTLSVerify  bool
}

// SecretRef names a pull secret.
type SecretRef struct{ Namespace, Name string }

// ImageConfig is what the mutation needs from an image.
type ImageConfig struct {
	Digest     string
	Entrypoint []string
	Cmd        []string
}

// ImageConfigResolver reads image configurations (the image-resolver).
type ImageConfigResolver interface {
	Resolve(ctx context.Context, lookup ImageLookup) (ImageConfig, error)
}

// Outcome is the decision for one pod.
type Outcome struct {
	// Patch holds the operations; empty when nothing changes.
	Patch []Op
	// Warnings are returned to the user as admission warnings.
	Warnings []string
	// Denied, when set, is the message the pod is refused with.
	Denied string
	// Mutated lists the containers now started by piggy-env.
	Mutated []string
}

// Mutator builds mutations.
type Mutator struct {
	cfg      Config
	allowed  []brokeraddr.Pattern
	resolver ImageConfigResolver
	env      EnvSource
	newUID   func() string

	// Pre-encoded parts of the patch that only depend on the operator's
	// configuration: encoding them per review dominated the webhook's cost.
	launcherVolume, tokenVolume json.RawMessage
	installContainers           sync.Map // installKey → json.RawMessage
	brokerCA                    atomic.Pointer[string]
	installVariants             atomic.Int64

	// The volumes as values, to compare a pod's volumes of those names
	// with (checkReserved).
	launcherVol, tokenVol corev1.Volume
}

// New returns a Mutator. resolver and env may be shared by concurrent
// reviews; the Mutator holds no per-review state.
func New(cfg Config, resolver ImageConfigResolver, env EnvSource) *Mutator {
	if cfg.TokenAudience == "" {
		cfg.TokenAudience = "piggy"
	}
	if cfg.TokenExpiration < 10*time.Minute {
		cfg.TokenExpiration = 10 * time.Minute
	}
	if cfg.OnResolveFailure == "" {
		cfg.OnResolveFailure = DenyOnResolveFailure
	}
	if cfg.ResolveTimeout <= 0 {
		cfg.ResolveTimeout = 3 * time.Second
	}
	m := &Mutator{cfg: cfg, resolver: resolver, env: env, newUID: podidentity.NewUID}
	m.SetBrokerCABundle(cfg.BrokerCABundle)
	for _, a := range cfg.AllowedAddresses {
		if p, err := brokeraddr.ParsePattern(a); err == nil {
			m.allowed = append(m.allowed, p)
		}
	}
	m.launcherVol = corev1.Volume{Name: LauncherVolumeName, VolumeSource: corev1.VolumeSource{
		EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: ptr(resource.MustParse("32Mi"))},
	}}
	expiry := int64(cfg.TokenExpiration / time.Second)
	m.tokenVol = corev1.Volume{Name: TokenVolumeName, VolumeSource: corev1.VolumeSource{
		Projected: &corev1.ProjectedVolumeSource{
			DefaultMode: ptr(int32(0o444)),
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
				Audience: cfg.TokenAudience, ExpirationSeconds: &expiry, Path: "token",
			}}},
		},
	}}
	m.launcherVolume, m.tokenVolume = mustJSON(m.launcherVol), mustJSON(m.tokenVol)
	return m
}

// SetBrokerCABundle replaces the PEM bundle pods get to verify the broker
// with (the operator rotated the file); later reviews use it.
func (m *Mutator) SetBrokerCABundle(pem string) { m.brokerCA.Store(&pem) }

// brokerCABundle is the current bundle; empty: the system roots.
func (m *Mutator) brokerCABundle() string { return *m.brokerCA.Load() }

// mustJSON encodes the constant API values New builds; they always encode.
func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("mutate: encode %T: %v", v, err))
	}
	return b
}

// target is one container to launch through piggy-env.
type target struct {
	init      bool
	index     int
	container *corev1.Container
	// launched is true when the container already runs piggy-env.
	launched bool
	// commandLine is the original command line once known.
	commandLine []string
	// keys are the keys the container references.
	keys []string
	// warning is set when the policy admitted an unresolvable container.
	skip bool
}

// Mutate decides what to do with pod, created in namespace. A pod the
// original Piggy webhook mutated is admitted unchanged with a warning
// (see mutatedByOriginal). A pod that uses Piggy's reserved names for
// anything but Piggy's own earlier output is denied first (see
// checkReserved).
func (m *Mutator) Mutate(ctx context.Context, pod *corev1.Pod, namespace string) Outcome {
	read := podsettings.Read(pod.Annotations, m.cfg.Defaults)
	s := read.Settings
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	configured := s.Configured()
	standaloneDefault := s.Standalone && s.SecretName == "" && s.SSMParameterPath == ""
	if standaloneDefault {
		s.SecretName = s.DefaultSecretName(namespace, sa)
	}
	out := Outcome{}
	if m.mutatedByOriginal(pod, s) {
		out.Warnings = []string{originalWarning}
		return out
	}
	if msg := m.checkReserved(pod, s); msg != "" {
		out.Denied = msg
		return out
	}
	if !configured {
		return out
	}
	out.Warnings = read.Warnings
	if read.Denied != "" {
		out.Denied = read.Denied
		return out
	}

	targets, unread, err := m.findTargets(ctx, pod, namespace)
	out.Warnings = append(out.Warnings, unread...)
	if err != nil {
		out.Denied = err.Error()
		return out
	}
	if len(targets) == 0 {
		return out
	}
	if !s.Standalone {
		if msg := m.checkAddress(s.Address); msg != "" {
			out.Denied = msg
			return out
		}
	}
	if msg := m.checkPullSecretNamespace(s, namespace); msg != "" {
		out.Denied = msg
		return out
	}
	if standaloneDefault {
		out.Warnings = append(out.Warnings, fmt.Sprintf("piggy: no %s%s set; standalone mode reads the default secret %q", podsettings.Prefix, podsettings.AWSSecretName, s.SecretName))
	}

	warnings, denied := m.resolveCommands(ctx, pod, namespace, sa, s, targets)
	out.Warnings = append(out.Warnings, warnings...)
	if denied != "" {
		out.Denied = denied
		return out
	}

	// checkReserved has made sure that the identities of launched
	// containers are Piggy's and that nobody else has one.
	ids := podidentity.Identities{}
	p := patch{ops: make([]Op, 0, 16)}
	proxy := !s.Standalone
	for _, t := range targets {
		if t.skip {
			continue
		}
		out.Mutated = append(out.Mutated, t.container.Name)
		grant := ""
		if proxy {
			grant = podgrant.New(s.GrantSource(namespace, sa), s.EnforceIntegrity, s.EnforceServiceAccount, t.keys).Format()
		}
		if t.launched {
			if uid := envValue(t.container, "PIGGY_UID"); uid != "" {
				ids[t.container.Name] = podidentity.Entry{UID: uid, Signature: podidentity.Signature(t.commandLine)}
			}
			if proxy {
				setGrant(&p, t, grant)
			}
			continue
		}
		entry := podidentity.Entry{Signature: podidentity.Signature(t.commandLine)}
		if proxy {
			entry.UID = m.newUID()
			ids[t.container.Name] = entry
		}
		m.launch(&p, t, s, entry.UID, grant)
	}
	if len(out.Mutated) == 0 {
		return out
	}
	m.ensureVolumes(&p, pod, proxy)
	m.ensureInstallContainer(&p, pod, s, proxy)
	if proxy {
		annotation := ids.Format()
		if pod.Annotations[podidentity.AnnotationKey] != annotation {
			if pod.Annotations == nil {
				p.add("/metadata/annotations", map[string]string{podidentity.AnnotationKey: annotation})
			} else {
				p.add("/metadata/annotations/"+escape(podidentity.AnnotationKey), annotation)
			}
		}
		if s.SecretName == "" && s.SSMParameterPath == "" && !hasLaunched(targets) {
			out.Warnings = append(out.Warnings, fmt.Sprintf("piggy: no %s%s set; the broker reads the default secret %q", podsettings.Prefix, podsettings.AWSSecretName, s.DefaultSecretName(namespace, sa)))
		}
	}
	out.Patch = p.ops
	return out
}

func hasLaunched(ts []*target) bool {
	return slices.ContainsFunc(ts, func(t *target) bool { return t.launched })
}

// findTargets lists the containers that already run piggy-env or reference
// piggy: values, init containers first, and warnings naming the Secrets
// that were not searched (Secret reads are off in the namespace).
func (m *Mutator) findTargets(ctx context.Context, pod *corev1.Pod, namespace string) ([]*target, []string, error) {
	finder := newReferenceFinder(m.env, namespace)
	var targets []*target
	for _, group := range []struct {
		init       bool
		containers []corev1.Container
	}{{true, pod.Spec.InitContainers}, {false, pod.Spec.Containers}} {
		for i := range group.containers {
			c := &group.containers[i]
			if group.init && c.Name == InstallContainerName {
				continue
			}
			keys, err := finder.keys(ctx, c)
			if err != nil {
				return nil, finder.warnings, fmt.Errorf("container %q: %w", c.Name, err)
			}
			if isLaunched(c) {
				targets = append(targets, &target{init: group.init, index: i, container: c, launched: true, commandLine: c.Args[1:], keys: keys})
				continue
			}
			if len(keys) > 0 {
				targets = append(targets, &target{init: group.init, index: i, container: c, keys: keys})
			}
		}
	}
	return targets, finder.warnings, nil
}

// checkAddress validates the broker address against the allowlist.
func (m *Mutator) checkAddress(addr string) string {
	if addr == "" {
		return fmt.Sprintf("piggy: no broker address: set the %s%s annotation (or the cluster default PIGGY_ADDRESS), or %s%s: \"true\"",
			podsettings.Prefix, podsettings.PiggyAddress, podsettings.Prefix, podsettings.Standalone)
	}
	u, err := brokeraddr.Parse(addr)
	if err != nil {
		return fmt.Sprintf("piggy: %s%s %s", podsettings.Prefix, podsettings.PiggyAddress, err)
	}
	for _, allowed := range m.allowed {
		if allowed.Match(u) {
			return ""
		}
	}
	return fmt.Sprintf("piggy: %s%s %q is not an allowed broker address (allowed: %s); ask your cluster operator",
		podsettings.Prefix, podsettings.PiggyAddress, addr, strings.Join(m.cfg.AllowedAddresses, ", "))
}

// checkPullSecretNamespace refuses a pull secret of another namespace
// unless the operator allows that namespace. The message names only what
// the pod asked for: it never says whether anything exists there.
func (m *Mutator) checkPullSecretNamespace(s podsettings.Settings, namespace string) string {
	ns := s.PullSecretNamespace
	if s.PullSecretName == "" || ns == "" || ns == namespace || slices.Contains(m.cfg.PullSecretNamespaces, ns) {
		return ""
	}
	return fmt.Sprintf("piggy: annotation %s%s: pull secrets come from the pod's own namespace %q; namespace %q is not one the cluster operator shares pull secrets from",
		podsettings.Prefix, podsettings.ImagePullSecretNamespace, namespace, ns)
}

// resolveCommands fills in the command line of every target, asking the
// image resolver (concurrently) for containers without a command.
func (m *Mutator) resolveCommands(ctx context.Context, pod *corev1.Pod, namespace, sa string, s podsettings.Settings, targets []*target) (warnings []string, denied string) {
	lookups := make([]*target, 0, len(targets))
	for _, t := range targets {
		if t.launched {
			continue
		}
		if len(t.container.Command) > 0 {
			t.commandLine = append(slices.Clone(t.container.Command), t.container.Args...)
			continue
		}
		lookups = append(lookups, t)
	}
	if len(lookups) == 0 {
		return nil, ""
	}
	base := ImageLookup{Namespace: namespace, ServiceAccount: sa, SkipTLSVerify: s.SkipVerifyRegistry}
	for _, ref := range pod.Spec.ImagePullSecrets {
		if ref.Name != "" {
			base.PullSecrets = append(base.PullSecrets, SecretRef{Namespace: namespace, Name: ref.Name})
		}
	}
	if s.PullSecretName != "" {
		ns := s.PullSecretNamespace
		if ns == "" {
			ns = namespace
		}
		base.PullSecrets = append(base.PullSecrets, SecretRef{Namespace: ns, Name: s.PullSecretName})
	}
	base.OS, base.Arch = platform(pod)

	results := make([]ImageConfig, len(lookups))
	errs := make([]error, len(lookups))
	resolve := func(ctx context.Context, i int) {
		ctx, cancel := context.WithTimeout(ctx, m.cfg.ResolveTimeout)
		defer cancel()
		l := base
		l.Image = lookups[i].container.Image
		results[i], errs[i] = m.resolver.Resolve(ctx, l)
	}
	if len(lookups) == 1 {
		// The common case needs no goroutine (whose stack would grow to
		// what a gRPC call needs, for every review).
		resolve(ctx, 0)
	} else {
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(4)
		for i := range lookups {
			g.Go(func() error {
				resolve(gctx, i)
				return nil
			})
		}
		_ = g.Wait()
	}
	for i, t := range lookups {
		if errs[i] != nil {
			msg := fmt.Sprintf("piggy: container %q has no command and the command of image %q could not be read: %v; set the container's command explicitly",
				t.container.Name, t.container.Image, errs[i])
			if m.cfg.OnResolveFailure == AdmitOnResolveFailure {
				t.skip = true
				warnings = append(warnings, msg+" (admitted without Piggy by operator policy: its piggy: values stay unresolved)")
				continue
			}
			return warnings, msg
		}
		t.commandLine = commandLine(t.container, results[i])
		if len(t.commandLine) == 0 {
			return warnings, fmt.Sprintf("piggy: container %q: image %q has neither ENTRYPOINT nor CMD; set the container's command", t.container.Name, t.container.Image)
		}
		warnings = append(warnings, fmt.Sprintf("piggy: container %q has no command; using the ENTRYPOINT/CMD of %s", t.container.Name, results[i].Digest))
	}
	return warnings, ""
}

// commandLine applies Kubernetes' rules for a container without command:
// the image ENTRYPOINT, followed by the container's args when it has any,
// else by the image CMD.
func commandLine(c *corev1.Container, img ImageConfig) []string {
	line := slices.Clone(img.Entrypoint)
	if len(c.Args) > 0 {
		return append(line, c.Args...)
	}
	return append(line, img.Cmd...)
}

// platform reads kubernetes.io/os and kubernetes.io/arch from the node
// selector, or from a required node affinity term that pins one value.
func platform(pod *corev1.Pod) (os, arch string) {
	os = pod.Spec.NodeSelector[corev1.LabelOSStable]
	arch = pod.Spec.NodeSelector[corev1.LabelArchStable]
	aff := pod.Spec.Affinity
	if aff == nil || aff.NodeAffinity == nil || aff.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		return os, arch
	}
	terms := aff.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
	if len(terms) != 1 {
		return os, arch
	}
	for _, e := range terms[0].MatchExpressions {
		if e.Operator != corev1.NodeSelectorOpIn || len(e.Values) != 1 {
			continue
		}
		switch {
		case e.Key == corev1.LabelOSStable && os == "":
			os = e.Values[0]
		case e.Key == corev1.LabelArchStable && arch == "":
			arch = e.Values[0]
		}
	}
	return os, arch
}

func envValue(c *corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// launch rewrites one container to start through piggy-env; grant is its
// PIGGY_GRANT in proxy mode.
func (m *Mutator) launch(p *patch, t *target, s podsettings.Settings, uid, grant string) {
	base := containerPath(t.init, t.index)
	p.add(base+"/command", []string{LauncherPath})
	p.add(base+"/args", append([]string{"--"}, t.commandLine...))
	appendAll(p, base+"/volumeMounts", len(t.container.VolumeMounts), launcherMounts(s))
	env := m.launcherEnv(s, uid)
	if grant != "" {
		env = append(env, corev1.EnvVar{Name: podgrant.EnvName, Value: grant})
	}
	appendAll(p, base+"/env", len(t.container.Env), env)
}

// setGrant gives a container Piggy launched earlier (re-invocation, or a
// mutated pod created again) the grant of this admission: the keys it
// references and the settings in force now, whatever the copy carried.
func setGrant(p *patch, t *target, grant string) {
	base := containerPath(t.init, t.index) + "/env"
	for i := len(t.container.Env) - 1; i >= 0; i-- {
		if t.container.Env[i].Name != podgrant.EnvName {
			continue
		}
		if t.container.Env[i].Value != grant || t.container.Env[i].ValueFrom != nil {
			p.replace(base+"/"+strconv.Itoa(i), corev1.EnvVar{Name: podgrant.EnvName, Value: grant})
		}
		return
	}
	appendAll(p, base, len(t.container.Env), []corev1.EnvVar{{Name: podgrant.EnvName, Value: grant}})
}

// launcherEnv is the PIGGY_* environment of a launched container. Settings
// that matter for security are always set explicitly so that a value the
// pod sets itself earlier in env is overridden (the last definition wins).
func (m *Mutator) launcherEnv(s podsettings.Settings, uid string) []corev1.EnvVar {
	env := make([]corev1.EnvVar, 0, 8)
	set := func(name, value string) { env = append(env, corev1.EnvVar{Name: name, Value: value}) }
	if s.Standalone {
		set("PIGGY_STANDALONE", "true")
		if s.SSMParameterPath != "" {
			set("PIGGY_AWS_SSM_PARAMETER_PATH", s.SSMParameterPath)
		} else {
			set("PIGGY_AWS_SECRET_NAME", s.SecretName)
		}
		if s.Region != "" {
			set("PIGGY_AWS_REGION", s.Region)
		}
		if s.SecretVersion != "" {
			set("PIGGY_AWS_SECRET_VERSION", s.SecretVersion)
		}
	} else {
		set("PIGGY_STANDALONE", "false")
		set("PIGGY_ADDRESS", s.Address)
		set("PIGGY_UID", uid)
		set("PIGGY_TOKEN_FILE", TokenFile)
		if m.brokerCABundle() != "" {
			set("PIGGY_CA_FILE", CAFile)
		}
		set("PIGGY_SKIP_VERIFY_TLS", strconv.FormatBool(m.cfg.SkipVerifyTLS))
	}
	if s.IgnoreNoEnv {
		set("PIGGY_IGNORE_NO_ENV", "true")
	}
	if s.Debug {
		set("PIGGY_DEBUG", "true")
	}
	if s.DNSResolver != "" {
		set("PIGGY_DNS_RESOLVER", s.DNSResolver)
	}
	if s.InitialDelay > 0 {
		set("PIGGY_INITIAL_DELAY", s.InitialDelay.String())
	}
	// PIGGY_RETRIES counts retries after the first attempt, whichever
	// annotation named the count (the original's piggy-number-of-retry
	// counts attempts and was converted when read).
	if s.Retries > 0 {
		set("PIGGY_RETRIES", strconv.Itoa(s.Retries))
	}
	return env
}

// ensureVolumes adds the launcher volume and, in proxy mode, the projected
// token volume, unless present.
func (m *Mutator) ensureVolumes(p *patch, pod *corev1.Pod, proxy bool) {
	has := func(name string) bool {
		return slices.ContainsFunc(pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == name })
	}
	var vols []json.RawMessage
	if !has(LauncherVolumeName) {
		vols = append(vols, m.launcherVolume)
	}
	if proxy && !has(TokenVolumeName) {
		vols = append(vols, m.tokenVolume)
	}
	appendAll(p, "/spec/volumes", len(pod.Spec.Volumes), vols)
}

// ensureInstallContainer inserts the install init container first, unless
// present.
func (m *Mutator) ensureInstallContainer(p *patch, pod *corev1.Pod, s podsettings.Settings, proxy bool) {
	if slices.ContainsFunc(pod.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == InstallContainerName }) {
		return
	}
	c := m.installContainerJSON(s, proxy)
	if len(pod.Spec.InitContainers) == 0 {
		p.add("/spec/initContainers", []any{c})
		return
	}
	p.add("/spec/initContainers/0", c)
}

func ptr[T any](v T) *T { return &v }
