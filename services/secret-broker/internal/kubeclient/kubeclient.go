// Package kubeclient builds the broker's Kubernetes clients (in-cluster
// configuration or a kubeconfig file) and classifies the client's errors.
//
// TokenReviews have a client of their own (NewTokenReviews), with its own
// client-go rate limiter: a flood of tokens to review cannot delay the pod
// reads and the informer's list and watch, nor the other way round.
package kubeclient

import (
	"fmt"
	"net/http"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes"
	authenticationv1 "k8s.io/client-go/kubernetes/typed/authentication/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/piggysec/piggy/services/secret-broker/internal/fault"
)

// Options configure New.
type Options struct {
	// Kubeconfig is a kubeconfig file; empty uses the in-cluster
	// configuration (service account token and CA of the broker's pod).
	Kubeconfig string
	// QPS and Burst bound the client's request rate (client-go's limiter).
	QPS   float32
	Burst int
	// UserAgent names the broker in apiserver logs and audit.
	UserAgent string
}

// New returns a clientset whose HTTP requests are traced (otelhttp).
func New(o Options) (*kubernetes.Clientset, error) {
	cfg, err := restConfig(o)
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return cs, nil
}

// NewTokenReviews returns a TokenReview client with its own rate limiter
// (o.QPS and o.Burst) and connections, separate from New's.
func NewTokenReviews(o Options) (authenticationv1.TokenReviewInterface, error) {
	cfg, err := restConfig(o)
	if err != nil {
		return nil, err
	}
	c, err := authenticationv1.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes TokenReview client: %w", err)
	}
	return c.TokenReviews(), nil
}

// restConfig loads the configuration with o's rate limit and user agent.
func restConfig(o Options) (*rest.Config, error) {
	var (
		cfg *rest.Config
		err error
	)
	if o.Kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", o.Kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client configuration: %w", err)
	}
	cfg.QPS, cfg.Burst, cfg.UserAgent = o.QPS, o.Burst, o.UserAgent
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return otelhttp.NewTransport(rt) })
	return cfg, nil
}

// Classify maps a Kubernetes API client error to a fault: RBAC refusals
// are the broker's own misconfiguration (Internal); everything else that
// stops an answer (network, 5xx, 429, timeouts) is transient (Unavailable).
// message says what failed; the API's own text goes to the cause only.
func Classify(err error, message string) error {
	switch {
	case apierrors.IsForbidden(err), apierrors.IsUnauthorized(err):
		return fault.Wrap(err, fault.Internal, "kube_forbidden", "%s: the broker's own Kubernetes permissions are insufficient", message)
	default:
		return fault.Wrap(err, fault.Unavailable, "kube_unavailable", "%s; retry", message)
	}
}
