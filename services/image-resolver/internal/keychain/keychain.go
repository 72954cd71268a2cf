// Package keychain gathers the registry credentials a pod is entitled to,
// with Kubernetes' semantics: the pull secrets named by the request (the
// pod's imagePullSecrets and the image-pull-secret annotation), then the
// imagePullSecrets of the pod's service account, in that order. A missing
// secret or service account is skipped with a note, as the kubelet does.
// Platform sources (the ECR keychain, [Cloud]) come after the pull secrets;
// when one cannot produce credentials the lookup continues without them,
// with a note.
//
// Least privilege: it reads only the named secrets and the named service
// account, one client-go Get each; it never lists or watches secrets.
// Parsing of kubernetes.io/dockerconfigjson and kubernetes.io/dockercfg
// data is go-containerregistry's pkg/authn/kubernetes.
//
// Nothing this package returns (notes, source names, errors) holds
// credential material; credentials are only reachable through
// authn.Keychain values and an HMAC identity that is useless outside the
// process.
package keychain

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"

	"github.com/google/go-containerregistry/pkg/authn"
	kauth "github.com/google/go-containerregistry/pkg/authn/kubernetes"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
)

// Errors callers branch on. The API error text is kept for logs; none of
// them carries secret data.
var (
	// ErrReadRefused means the Kubernetes API refused to let the resolver read
	// a named secret or service account (RBAC): an operator has to fix it.
	ErrReadRefused = errors.New("kubernetes refused the read")
	// ErrKubernetes means the Kubernetes API could not be read (unreachable,
	// timeout, server error); retrying may help.
	ErrKubernetes = errors.New("kubernetes read failed")
	// ErrInvalidSecret means a named pull secret holds data that does not
	// parse; like the kubelet, the lookup fails rather than ignoring it.
	ErrInvalidSecret = errors.New("invalid pull secret")
	// ErrForeignNamespace means a request named a pull secret outside its
	// own namespace that the operator did not allow
	// ([Gatherer.AllowNamespaces]). Nothing was read: the answer says
	// nothing about whether the secret exists.
	ErrForeignNamespace = errors.New("pull secret outside the pod's namespace")
)

// Kube is the part of client-go the keychain needs: Get of named secrets
// and service accounts (kubernetes.Interface.CoreV1() satisfies it).
type Kube interface {
	corev1client.SecretsGetter
	corev1client.ServiceAccountsGetter
}

// SecretRef names a pull secret. An empty Namespace means the request's.
type SecretRef struct {
	// Namespace of the secret.
	Namespace string
	// Name of the secret.
	Name string
}

// String formats the reference as namespace/name.
func (r SecretRef) String() string { return r.Namespace + "/" + r.Name }

// Request says whose credentials to gather.
type Request struct {
	// Namespace of the pod; its service account and relative pull secrets live there.
	Namespace string
	// ServiceAccount of the pod; empty means "default".
	ServiceAccount string
	// PullSecrets are tried first, in order.
	PullSecrets []SecretRef
}

// Cloud is a credential source of the platform the resolver runs on, such
// as the ECR keychain: it serves some registries with credentials it
// obtains itself. Its error texts must hold no credential material: they
// become notes and client-visible messages.
type Cloud interface {
	authn.ContextKeychain
	// Describe names the source for registry (host[:port]), e.g. "ECR
	// credentials for region eu-west-1"; ok is false when the source does
	// not serve registry.
	Describe(registry string) (name string, ok bool)
}

// Gatherer reads pull secrets through Kube.
type Gatherer struct {
	kube    Kube
	cloud   []Cloud
	key     []byte          // HMAC key of credential identities, random per process
	foreign map[string]bool // namespaces besides the request's whose pull secrets may be read
}

// New returns a Gatherer. A nil kube runs without Kubernetes: the notes say
// which secrets were not read. Cloud sources are tried after the pull
// secrets, in order.
func New(kube Kube, cloud ...Cloud) *Gatherer {
	key := make([]byte, 32)
	_, _ = rand.Read(key) // crypto/rand does not fail on supported platforms
	return &Gatherer{kube: kube, cloud: cloud, key: key}
}

// AllowNamespaces lets requests name pull secrets in these namespaces
// besides their own (the operator's shared credential namespaces). By
// default a pull secret outside the request's namespace is refused with
// [ErrForeignNamespace] before anything is read, whatever the caller
// checked before. It returns g for chaining and must be called before use.
func (g *Gatherer) AllowNamespaces(namespaces ...string) *Gatherer {
	for _, ns := range namespaces {
		if g.foreign == nil {
			g.foreign = map[string]bool{}
		}
		g.foreign[ns] = true
	}
	return g
}

// Source is one pull secret that was read and holds registry credentials.
type Source struct {
	// Name describes the source for operators, e.g. "pull secret ns/name".
	Name     string
	keychain authn.Keychain
}

// Set is the credentials gathered for one request, in order of preference.
type Set struct {
	// Sources that hold credentials, in the order they are tried.
	Sources []Source
	// Notes describe every source considered (names only), in order.
	Notes []string
	cloud []Cloud
	key   []byte
}

// Gather reads the request's pull secrets and its service account's
// imagePullSecrets. Missing objects are noted and skipped.
func (g *Gatherer) Gather(ctx context.Context, req Request) (*Set, error) {
	set := &Set{key: g.key, cloud: g.cloud}
	if g.kube == nil {
		for _, ref := range req.PullSecrets {
			set.note("pull secret %s: not read (Kubernetes access is off)", qualify(ref, req.Namespace))
		}
		set.note("service account: not read (Kubernetes access is off)")
		return set, nil
	}
	for _, ref := range req.PullSecrets {
		if ref = qualify(ref, req.Namespace); ref.Namespace != req.Namespace && !g.foreign[ref.Namespace] {
			return nil, fmt.Errorf("pull secret %q names namespace %q: %w; only the pod's own namespace and those the operator allows (--pull-secret-namespaces) may be used", ref.Name, ref.Namespace, ErrForeignNamespace)
		}
	}
	seen := map[SecretRef]bool{}
	for _, ref := range req.PullSecrets {
		ref = qualify(ref, req.Namespace)
		if err := g.addSecret(ctx, set, seen, ref, "pull secret"); err != nil {
			return nil, err
		}
	}
	if req.Namespace == "" {
		set.note("service account: not read (the request names no namespace)")
		return set, nil
	}
	saName := req.ServiceAccount
	if saName == "" {
		saName = "default"
	}
	sa, err := g.kube.ServiceAccounts(req.Namespace).Get(ctx, saName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		set.note("service account %s/%s: not found; continuing without its imagePullSecrets", req.Namespace, saName)
		return set, nil
	case err != nil:
		return nil, readError(fmt.Sprintf("service account %s/%s", req.Namespace, saName), err)
	}
	if len(sa.ImagePullSecrets) == 0 {
		set.note("service account %s/%s: no imagePullSecrets", req.Namespace, saName)
	}
	for _, lor := range sa.ImagePullSecrets {
		ref := SecretRef{Namespace: req.Namespace, Name: lor.Name}
		if err := g.addSecret(ctx, set, seen, ref, "imagePullSecret of service account "+req.Namespace+"/"+saName+":"); err != nil {
			return nil, err
		}
	}
	return set, nil
}

func qualify(ref SecretRef, namespace string) SecretRef {
	if ref.Namespace == "" {
		ref.Namespace = namespace
	}
	return ref
}

func (g *Gatherer) addSecret(ctx context.Context, set *Set, seen map[SecretRef]bool, ref SecretRef, what string) error {
	label := what + " " + ref.String()
	switch {
	case ref.Name == "":
		set.note("%s: no name; ignored", label)
		return nil
	case ref.Namespace == "":
		set.note("%s: not read (no namespace)", label)
		return nil
	case seen[ref]:
		set.note("%s: already considered", label)
		return nil
	}
	seen[ref] = true
	s, err := g.kube.Secrets(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		set.note("%s: not found; continuing (Kubernetes semantics)", label)
		return nil
	case err != nil:
		return readError(label, err)
	}
	var dataKey string
	switch s.Type {
	case corev1.SecretTypeDockerConfigJson:
		dataKey = corev1.DockerConfigJsonKey
	case corev1.SecretTypeDockercfg:
		dataKey = corev1.DockerConfigKey
	default:
		set.note("%s: ignored (type %q is not a pull secret)", label, s.Type)
		return nil
	}
	if len(s.Data[dataKey]) == 0 {
		set.note("%s: ignored (no %s data)", label, dataKey)
		return nil
	}
	kc, err := kauth.NewFromPullSecrets(ctx, []corev1.Secret{*s})
	if err != nil {
		// The parse error may quote secret bytes: keep it out of the message.
		return fmt.Errorf("%s: %s data does not parse: %w", label, dataKey, ErrInvalidSecret)
	}
	set.note("%s: read (%s)", label, s.Type)
	set.Sources = append(set.Sources, Source{Name: label, keychain: kc})
	return nil
}

func readError(what string, err error) error {
	if apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) {
		return fmt.Errorf("read %s: %w (%s)", what, ErrReadRefused, apierrors.ReasonForError(err))
	}
	return errors.Join(fmt.Errorf("read %s: %w", what, ErrKubernetes), err)
}

func (s *Set) note(format string, args ...any) {
	s.Notes = append(s.Notes, fmt.Sprintf(format, args...))
}

// Candidate is one credential to try against a repository.
type Candidate struct {
	// Source names where it comes from ("anonymous" for no credentials).
	Source string
	// Keychain resolves to the candidate's credentials for the repository.
	Keychain authn.Keychain
}

// Candidates are the credentials to try for one repository, in order.
type Candidates struct {
	// List holds at least one candidate: the anonymous one when no source
	// has credentials for the repository (the kubelet's rule).
	List []Candidate
	// Identity is an opaque, process-local HMAC of the credentials in List,
	// in order; equal identities mean equal credentials. Anonymous lookups
	// share one identity.
	Identity string
	// Notes say which sources apply to the repository (names only).
	Notes []string
	// Unavailable describes the cloud sources that serve the repository's
	// registry but could not produce credentials ("ECR credentials for
	// region eu-west-1: AWS answered AccessDeniedException"); no secrets.
	Unavailable []string
}

// For returns the candidates whose credentials apply to the repository,
// dropping repeated identical credentials. Cloud sources are asked within
// ctx; one that fails is noted in Unavailable and skipped.
func (s *Set) For(ctx context.Context, repo authn.Resource) (Candidates, error) {
	var (
		c    Candidates
		mac  hash.Hash
		seen = map[authn.AuthConfig]bool{}
	)
	// add appends a candidate; scope is hashed with the credentials so
	// that the same token from another region is another identity (pull
	// secrets have none: equal credentials in two secrets are one identity).
	add := func(name, scope string, cfg *authn.AuthConfig, kc authn.Keychain) {
		if seen[*cfg] {
			c.Notes = append(c.Notes, fmt.Sprintf("%s: same credentials as an earlier source; skipped", name))
			return
		}
		seen[*cfg] = true
		if mac == nil {
			mac = hmac.New(sha256.New, s.key)
		}
		for _, f := range []string{scope, cfg.Username, cfg.Password, cfg.Auth, cfg.IdentityToken, cfg.RegistryToken} {
			var n [8]byte
			binary.BigEndian.PutUint64(n[:], uint64(len(f)))
			mac.Write(n[:])
			mac.Write([]byte(f))
		}
		c.Notes = append(c.Notes, fmt.Sprintf("%s: has credentials for %s", name, repo.RegistryStr()))
		c.List = append(c.List, Candidate{Source: name, Keychain: kc})
	}
	for _, src := range s.Sources {
		auth, err := src.keychain.Resolve(repo)
		if err != nil {
			return Candidates{}, fmt.Errorf("%s: %w", src.Name, ErrInvalidSecret)
		}
		if auth == authn.Anonymous {
			c.Notes = append(c.Notes, fmt.Sprintf("%s: no credentials for %s", src.Name, repo.RegistryStr()))
			continue
		}
		cfg, err := auth.Authorization()
		if err != nil {
			return Candidates{}, fmt.Errorf("%s: %w", src.Name, ErrInvalidSecret)
		}
		add(src.Name, "", cfg, src.keychain)
	}
	for _, cl := range s.cloud {
		name, ok := cl.Describe(repo.RegistryStr())
		if !ok {
			continue
		}
		auth, err := cl.ResolveContext(ctx, repo)
		var cfg *authn.AuthConfig
		if err == nil && auth != authn.Anonymous {
			cfg, err = auth.Authorization()
		}
		switch {
		case err != nil:
			// The Cloud contract: error texts hold no credentials.
			c.Unavailable = append(c.Unavailable, err.Error())
			c.Notes = append(c.Notes, err.Error()+"; continuing without them")
		case cfg == nil:
			c.Notes = append(c.Notes, fmt.Sprintf("%s: no credentials for %s", name, repo.RegistryStr()))
		default:
			// The candidate uses exactly the credentials hashed into the
			// identity, even if the source renews them meanwhile.
			add(name, name, cfg, fixed{authn.FromConfig(*cfg)})
		}
	}
	if len(c.List) == 0 {
		c.List = []Candidate{{Source: "anonymous", Keychain: authn.NewMultiKeychain()}}
		c.Identity = "anonymous"
		if len(c.Unavailable) > 0 {
			// Not shared with lookups that had no cloud source to try:
			// the failure they cache says why credentials were missing.
			c.Identity = "anonymous; cloud credentials unavailable"
		}
		c.Notes = append(c.Notes, "no credentials apply to "+repo.RegistryStr()+"; trying anonymously")
		return c, nil
	}
	c.Identity = hex.EncodeToString(mac.Sum(nil))
	return c, nil
}

// fixed is a keychain answering every resource with one authenticator.
type fixed struct{ auth authn.Authenticator }

// Resolve returns the fixed authenticator.
func (f fixed) Resolve(authn.Resource) (authn.Authenticator, error) { return f.auth, nil }
