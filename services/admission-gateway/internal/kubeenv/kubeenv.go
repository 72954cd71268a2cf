// Package kubeenv reads the ConfigMaps and Secrets that pod env values come
// from, through the Kubernetes API, for the mutation's reference search.
// Only named objects are read (get, never list or watch).
package kubeenv

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/piggysec/piggy/services/admission-gateway/internal/mutate"
)

// Source implements mutate.EnvSource with a clientset.
type Source struct {
	client kubernetes.Interface
}

// New returns a Source.
func New(client kubernetes.Interface) *Source { return &Source{client: client} }

// ConfigMap returns the data of namespace/name or mutate.ErrNotFound.
func (s *Source) ConfigMap(ctx context.Context, namespace, name string) (map[string]string, error) {
	cm, err := s.client.CoreV1().ConfigMaps(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, mapErr(err)
	}
	return cm.Data, nil
}

// Secret returns the data of namespace/name or mutate.ErrNotFound. The
// values are only inspected for the piggy: prefix, never logged.
func (s *Source) Secret(ctx context.Context, namespace, name string) (map[string][]byte, error) {
	sec, err := s.client.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, mapErr(err)
	}
	data := sec.Data
	if len(sec.StringData) > 0 {
		data = make(map[string][]byte, len(sec.Data)+len(sec.StringData))
		for k, v := range sec.Data {
			data[k] = v
		}
		for k, v := range sec.StringData {
			data[k] = []byte(v)
		}
	}
	return data, nil
}

func mapErr(err error) error {
	switch {
	case apierrors.IsNotFound(err):
		return mutate.ErrNotFound
	case apierrors.IsForbidden(err):
		return fmt.Errorf("the admission-gateway may not read it (RBAC): %w", err)
	default:
		return err
	}
}
