package mutate

import (
	"context"
	"errors"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// ReferencePrefix starts every value piggy-env replaces.
const ReferencePrefix = "piggy:"

// ErrNotFound is returned by an EnvSource for a missing ConfigMap or Secret.
var ErrNotFound = errors.New("not found")

// ErrNotRead is returned by an EnvSource for a Secret it may not read (the
// operator has not enabled Secret reads in its namespace). The search goes
// on without it, and the pod gets a warning.
var ErrNotRead = errors.New("not read")

// EnvSource reads the ConfigMaps and Secrets that env values come from.
// Each returns at least the entries that hold references (IsReference), or
// ErrNotFound.
type EnvSource interface {
	// ConfigMap returns the entries of a ConfigMap.
	ConfigMap(ctx context.Context, namespace, name string) (map[string]string, error)
	// Secret returns the entries of a Secret.
	Secret(ctx context.Context, namespace, name string) (map[string]string, error)
}

// IsReference reports whether v is a "piggy:KEY" value.
func IsReference(v string) bool {
	return strings.HasPrefix(v, ReferencePrefix) && len(v) > len(ReferencePrefix)
}

// referenceFinder looks for piggy: values, reading each ConfigMap and
// Secret at most once per review.
type referenceFinder struct {
	src        EnvSource
	namespace  string
	configMaps map[string]map[string]string
	secrets    map[string]map[string]string
	// warnings name the Secrets that were not read, once each.
	warnings []string
}

func newReferenceFinder(src EnvSource, namespace string) *referenceFinder {
	return &referenceFinder{src: src, namespace: namespace, configMaps: map[string]map[string]string{}, secrets: map[string]map[string]string{}}
}

// references reports whether c references a piggy: value. Missing
// ConfigMaps/Secrets follow Kubernetes: ignored when optional; otherwise an
// error, since the pod cannot start until they exist and Piggy cannot tell
// what they hold.
func (f *referenceFinder) references(ctx context.Context, c *corev1.Container) (bool, error) {
	for _, e := range c.Env {
		if IsReference(e.Value) {
			return true, nil
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			continue
		}
		if ref := e.ValueFrom.ConfigMapKeyRef; ref != nil {
			data, err := f.configMap(ctx, ref.Name, ref.Optional)
			if err != nil {
				return false, fmt.Errorf("env %s: %w", e.Name, err)
			}
			if IsReference(data[ref.Key]) {
				return true, nil
			}
		}
		if ref := e.ValueFrom.SecretKeyRef; ref != nil {
			data, err := f.secret(ctx, ref.Name, ref.Optional)
			if err != nil {
				return false, fmt.Errorf("env %s: %w", e.Name, err)
			}
			if IsReference(data[ref.Key]) {
				return true, nil
			}
		}
	}
	for _, from := range c.EnvFrom {
		if ref := from.ConfigMapRef; ref != nil {
			data, err := f.configMap(ctx, ref.Name, ref.Optional)
			if err != nil {
				return false, fmt.Errorf("envFrom: %w", err)
			}
			for _, v := range data {
				if IsReference(v) {
					return true, nil
				}
			}
		}
		if ref := from.SecretRef; ref != nil {
			data, err := f.secret(ctx, ref.Name, ref.Optional)
			if err != nil {
				return false, fmt.Errorf("envFrom: %w", err)
			}
			for _, v := range data {
				if IsReference(v) {
					return true, nil
				}
			}
		}
	}
	return false, nil
}

func (f *referenceFinder) configMap(ctx context.Context, name string, optional *bool) (map[string]string, error) {
	if data, ok := f.configMaps[name]; ok {
		return data, nil
	}
	data, err := f.src.ConfigMap(ctx, f.namespace, name)
	if err != nil {
		return nil, missing("ConfigMap", f.namespace, name, optional, err)
	}
	f.configMaps[name] = data
	return data, nil
}

func (f *referenceFinder) secret(ctx context.Context, name string, optional *bool) (map[string]string, error) {
	if data, ok := f.secrets[name]; ok {
		return data, nil
	}
	data, err := f.src.Secret(ctx, f.namespace, name)
	if errors.Is(err, ErrNotRead) {
		f.warnings = append(f.warnings, fmt.Sprintf("piggy: Secret %s/%s was not searched for piggy: values (the cluster operator has not enabled Secret reads in this namespace); put piggy: references in the env value or a ConfigMap", f.namespace, name))
		data, err = map[string]string{}, nil
	}
	if err != nil {
		return nil, missing("Secret", f.namespace, name, optional, err)
	}
	f.secrets[name] = data
	return data, nil
}

// missing turns a lookup error into nil (optional and absent) or an error
// a developer can act on.
func missing(kind, namespace, name string, optional *bool, err error) error {
	if errors.Is(err, ErrNotFound) {
		if optional != nil && *optional {
			return nil
		}
		return fmt.Errorf("%s %s/%s not found; Piggy cannot tell whether it holds piggy: values (create it first or mark the reference optional)", kind, namespace, name)
	}
	return fmt.Errorf("read %s %s/%s: %w", kind, namespace, name, err)
}
