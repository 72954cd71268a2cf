package mutate

import (
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
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
func Marshal(ops []Op) ([]byte, error) {
	buf := make([]byte, 0, 4096)
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
		return appendString(buf, v), nil
	case []string:
		buf = append(buf, '[')
		for i, s := range v {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = appendString(buf, s)
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
	buf = appendString(buf, e.Name)
	if e.Value != "" {
		buf = append(buf, `,"value":`...)
		buf = appendString(buf, e.Value)
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
	buf = appendString(buf, m.Name)
	if m.ReadOnly {
		buf = append(buf, `,"readOnly":true`...)
	}
	buf = append(buf, `,"mountPath":`...)
	buf = appendString(buf, m.MountPath)
	return append(buf, '}'), true
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string (RFC 8259), escaping quotes,
// backslashes, control characters, invalid UTF-8 (as U+FFFD) and the line
// separators U+2028/U+2029.
func appendString(buf []byte, s string) []byte {
	buf = append(buf, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			buf = append(buf, s[start:i]...)
			switch c {
			case '"', '\\':
				buf = append(buf, '\\', c)
			case '\n':
				buf = append(buf, '\\', 'n')
			case '\r':
				buf = append(buf, '\\', 'r')
			case '\t':
				buf = append(buf, '\\', 't')
			default:
				buf = append(buf, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			buf = append(buf, s[start:i]...)
			buf = append(buf, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			buf = append(buf, s[start:i]...)
			buf = append(buf, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	buf = append(buf, s[start:]...)
	return append(buf, '"')
}

func containerPath(init bool, i int) string {
	if init {
		return fmt.Sprintf("/spec/initContainers/%d", i)
	}
	return fmt.Sprintf("/spec/containers/%d", i)
}
