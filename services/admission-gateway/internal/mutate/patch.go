package mutate

import (
	"encoding/json"
	"fmt"
	"strings"
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

func appendValue(buf []byte, v any) ([]byte, error) {
	switch v := v.(type) {
	case json.RawMessage:
		return append(buf, v...), nil
	case []json.RawMessage:
		buf = append(buf, '[')
		for i, raw := range v {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = append(buf, raw...)
		}
		return append(buf, ']'), nil
	default:
		b, err := json.Marshal(v)
		return append(buf, b...), err
	}
}

func containerPath(init bool, i int) string {
	if init {
		return fmt.Sprintf("/spec/initContainers/%d", i)
	}
	return fmt.Sprintf("/spec/containers/%d", i)
}
