package mutate

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"

	"github.com/piggysec/piggy/libs/podgrant"
)

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
	_, ok := podgrant.Reference("", v)
	return ok
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

// keys returns the keys c references (see podgrant.Reference): in literal
// env values, in the ConfigMap and Secret entries its env takes with
// valueFrom, and in those it takes whole with envFrom. Missing
// ConfigMaps/Secrets follow Kubernetes: ignored when optional; otherwise
// an error, since the pod cannot start until they exist and Piggy cannot
// tell what they hold.
func (f *referenceFinder) keys(ctx context.Context, c *corev1.Container) ([]string, error) {
	var keys []string
	add := func(name, value string) {
		if k, ok := podgrant.Reference(name, value); ok {
			keys = append(keys, k)
		}
	}
	for _, e := range c.Env {
		add(e.Name, e.Value)
		if e.ValueFrom == nil {
			continue
		}
		if ref := e.ValueFrom.ConfigMapKeyRef; ref != nil {
			data, err := f.configMap(ctx, ref.Name, ref.Optional)
			if err != nil {
				return nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
			add(e.Name, data[ref.Key])
		}
		if ref := e.ValueFrom.SecretKeyRef; ref != nil {
			data, err := f.secret(ctx, ref.Name, ref.Optional)
			if err != nil {
				return nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
			add(e.Name, data[ref.Key])
		}
	}
	for _, from := range c.EnvFrom {
		var (
			data map[string]string
			err  error
		)
		switch {
		case from.ConfigMapRef != nil:
			data, err = f.configMap(ctx, from.ConfigMapRef.Name, from.ConfigMapRef.Optional)
		case from.SecretRef != nil:
			data, err = f.secret(ctx, from.SecretRef.Name, from.SecretRef.Optional)
		}
		if err != nil {
			return nil, fmt.Errorf("envFrom: %w", err)
		}
		for k, v := range data {
			add(from.Prefix+k, v)
		}
	}
	return keys, nil
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
