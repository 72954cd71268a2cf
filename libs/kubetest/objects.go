package kubetest

import (
	"context"
	"fmt"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// PauseImage is the image of the container in CreatePod's Pods. Nothing
// pulls it: there is no kubelet.
const PauseImage = "registry.k8s.io/pause:3.10"

// objectMeta names an object: a name ending in "-" is a prefix for a name
// the apiserver generates (metadata.generateName).
func objectMeta(namespace, name string) metav1.ObjectMeta {
	if strings.HasSuffix(name, "-") {
		return metav1.ObjectMeta{Namespace: namespace, GenerateName: name}
	}
	return metav1.ObjectMeta{Namespace: namespace, Name: name}
}

// CreateNamespace creates a namespace (a name ending in "-" is a prefix for
// a generated name) together with its "default" ServiceAccount, which a
// real cluster's controller manager would create. Without it the
// ServiceAccount admission plugin rejects Pods that name no service account.
func CreateNamespace(ctx context.Context, cs kubernetes.Interface, name string) (*corev1.Namespace, error) {
	ns, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: objectMeta("", name)}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create namespace %q: %w", name, err)
	}
	if _, err := CreateServiceAccount(ctx, cs, ns.Name, "default"); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	return ns, nil
}

// CreateServiceAccount creates a ServiceAccount (a name ending in "-" is a
// prefix for a generated name).
func CreateServiceAccount(ctx context.Context, cs kubernetes.Interface, namespace, name string) (*corev1.ServiceAccount, error) {
	sa, err := cs.CoreV1().ServiceAccounts(namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: objectMeta(namespace, name)}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create service account %s/%s: %w", namespace, name, err)
	}
	return sa, nil
}

// NewPod returns a minimal Pod running as serviceAccount (empty: the
// namespace's "default") with one container "main" of PauseImage. A name
// ending in "-" is a prefix for a generated name.
func NewPod(namespace, name, serviceAccount string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: objectMeta(namespace, name),
		Spec: corev1.PodSpec{
			ServiceAccountName: serviceAccount,
			Containers:         []corev1.Container{{Name: "main", Image: PauseImage}},
		},
	}
}

// CreatePod creates NewPod(namespace, name, serviceAccount), changed by
// mutate functions first, and returns the stored Pod (with its UID). It
// stays Pending: nothing schedules or runs it.
func CreatePod(ctx context.Context, cs kubernetes.Interface, namespace, name, serviceAccount string, mutate ...func(*corev1.Pod)) (*corev1.Pod, error) {
	pod := NewPod(namespace, name, serviceAccount)
	for _, m := range mutate {
		m(pod)
	}
	created, err := cs.CoreV1().Pods(namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create pod %s/%s: %w", namespace, name, err)
	}
	return created, nil
}

// TokenOptions are the parameters of a TokenRequest.
type TokenOptions struct {
	// Audiences of the token; empty means the apiserver's API audiences.
	Audiences []string
	// Expiration is the requested lifetime; zero means one hour. The
	// apiserver's minimum is 10 minutes.
	Expiration time.Duration
	// Pod, if set, binds the token to this Pod (name and UID): it stops
	// validating when the Pod is deleted, and a TokenReview of it reports
	// the Pod in status.user.extra.
	Pod *corev1.Pod
}

// RequestToken issues a service account token through the TokenRequest API
// (what the kubelet does for projected token volumes) and returns its
// status (Token, ExpirationTimestamp).
func RequestToken(ctx context.Context, cs kubernetes.Interface, namespace, serviceAccount string, opts TokenOptions) (*authenticationv1.TokenRequestStatus, error) {
	expiration := opts.Expiration
	if expiration == 0 {
		expiration = time.Hour
	}
	seconds := int64(expiration / time.Second)
	req := &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences:         opts.Audiences,
			ExpirationSeconds: &seconds,
		},
	}
	if opts.Pod != nil {
		req.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{
			Kind:       "Pod",
			APIVersion: "v1",
			Name:       opts.Pod.Name,
			UID:        opts.Pod.UID,
		}
	}
	resp, err := cs.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, serviceAccount, req, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("request token for %s/%s: %w", namespace, serviceAccount, err)
	}
	return &resp.Status, nil
}

// RequestPodToken issues a one-hour token for audience, for the Pod's
// service account and bound to the Pod: the token the kubelet would mount
// into it.
func RequestPodToken(ctx context.Context, cs kubernetes.Interface, pod *corev1.Pod, audience string) (string, error) {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	status, err := RequestToken(ctx, cs, pod.Namespace, sa, TokenOptions{Audiences: []string{audience}, Pod: pod})
	if err != nil {
		return "", err
	}
	return status.Token, nil
}

// ReviewToken asks the apiserver whether token is valid for audiences
// (empty: the apiserver's API audiences) through the TokenReview API.
// An invalid token is not an error: check Authenticated and Error.
func ReviewToken(ctx context.Context, cs kubernetes.Interface, token string, audiences ...string) (*authenticationv1.TokenReviewStatus, error) {
	review := &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}
	resp, err := cs.AuthenticationV1().TokenReviews().Create(ctx, review, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("review token: %w", err)
	}
	return &resp.Status, nil
}
