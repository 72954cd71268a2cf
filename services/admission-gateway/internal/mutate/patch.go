package mutate

import (
	"encoding/json"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/piggysec/piggy/services/admission-gateway/internal/jsonappend"
)

// Op is one RFC 6902 operation.
type Op struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

// patch accumulates operations.
type patch struct{ ops []Op }

func (p *patch) add(path string, value any) {
	p.ops = append(p.ops, Op{Op: "add", Path: path, Value: value})
}

func (p *patch) replace(path string, value any) {
	p.ops = append(p.ops, Op{Op: "replace", Path: path, Value: value})
}

// appendAll adds values to the array at path: the whole array when the
// object has none (or an empty one), element by element otherwise.
func appendAll[T any](p *patch, path string, existing int, values []T) {
	if len(values) == 0 {
		return
	}
	if existing == 0 {
		p.add(path, values)
		return
	}
	for _, v := range values {
		p.add(path+"/-", v)
	}
}

var pointerEscaper = strings.NewReplacer("~", "~0", "/", "~1")

// escape encodes a JSON pointer reference token (RFC 6901).
func escape(token string) string { return pointerEscaper.Replace(token) }

// Marshal encodes ops as an RFC 6902 document. Pre-encoded values
// (json.RawMessage) are copied as they are, without the re-validation and
// compaction encoding/json applies to them.
func Marshal(ops []Op) ([]byte, error) { return AppendPatch(make([]byte, 0, 4096), ops) }

// AppendPatch appends the RFC 6902 document of ops to buf, like Marshal.
func AppendPatch(buf []byte, ops []Op) ([]byte, error) {
	buf = append(buf, '[')
	for i, op := range ops {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, `{"op":`...)
		buf, _ = appendValue(buf, op.Op) // strings always encode
		buf = append(buf, `,"path":`...)
		buf, _ = appendValue(buf, op.Path)
		buf = append(buf, `,"value":`...)
		var err error
		if buf, err = appendValue(buf, op.Value); err != nil {
			return nil, fmt.Errorf("encode patch value at %s: %w", op.Path, err)
		}
		buf = append(buf, '}')
	}
	return append(buf, ']'), nil
}

// appendValue encodes the values the mutation builds without reflection
// (the webhook's hot path); anything else goes through encoding/json.
func appendValue(buf []byte, v any) ([]byte, error) {
	switch v := v.(type) {
	case string:
		return jsonappend.String(buf, v), nil
	case []string:
		buf = append(buf, '[')
		for i, s := range v {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = jsonappend.String(buf, s)
		}
		return append(buf, ']'), nil
	case corev1.EnvVar:
		if v.ValueFrom != nil {
			break
		}
		return appendEnvVar(buf, v), nil
	case []corev1.EnvVar:
		buf = append(buf, '[')
		for i, e := range v {
			if i > 0 {
				buf = append(buf, ',')
			}
			if e.ValueFrom != nil {
				b, err := json.Marshal(e)
				if err != nil {
					return nil, err
				}
				buf = append(buf, b...)
				continue
			}
			buf = appendEnvVar(buf, e)
		}
		return append(buf, ']'), nil
	case []corev1.VolumeMount:
		buf = append(buf, '[')
		for i, m := range v {
			if i > 0 {
				buf = append(buf, ',')
			}
			if b, ok := appendMount(buf, m); ok {
				buf = b
				continue
			}
			b, err := json.Marshal(m)
			if err != nil {
				return nil, err
			}
			buf = append(buf, b...)
		}
		return append(buf, ']'), nil
	case corev1.VolumeMount:
		if b, ok := appendMount(buf, v); ok {
			return b, nil
		}
	case json.RawMessage:
		return append(buf, v...), nil
	case []any:
		buf = append(buf, '[')
		for i, e := range v {
			if i > 0 {
				buf = append(buf, ',')
			}
			var err error
			if buf, err = appendValue(buf, e); err != nil {
				return nil, err
			}
		}
		return append(buf, ']'), nil
	case []json.RawMessage:
		buf = append(buf, '[')
		for i, raw := range v {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = append(buf, raw...)
		}
		return append(buf, ']'), nil
	}
	b, err := json.Marshal(v)
	return append(buf, b...), err
}

func appendEnvVar(buf []byte, e corev1.EnvVar) []byte {
	buf = append(buf, `{"name":`...)
	buf = jsonappend.String(buf, e.Name)
	if e.Value != "" {
		buf = append(buf, `,"value":`...)
		buf = jsonappend.String(buf, e.Value)
	}
	return append(buf, '}')
}

// appendMount encodes the mounts the mutation builds (name, path,
// read-only); it reports false for others.
func appendMount(buf []byte, m corev1.VolumeMount) ([]byte, bool) {
	if m.SubPath != "" || m.SubPathExpr != "" || m.MountPropagation != nil || m.RecursiveReadOnly != nil {
		return buf, false
	}
	buf = append(buf, `{"name":`...)
	buf = jsonappend.String(buf, m.Name)
	if m.ReadOnly {
		buf = append(buf, `,"readOnly":true`...)
	}
	buf = append(buf, `,"mountPath":`...)
	buf = jsonappend.String(buf, m.MountPath)
	return append(buf, '}'), true
}

func containerPath(init bool, i int) string {
	if init {
		return fmt.Sprintf("/spec/initContainers/%d", i)
	}
	return fmt.Sprintf("/spec/containers/%d", i)
}
