package mutate

import (
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

// escape encodes a JSON pointer reference token (RFC 6901).
func escape(token string) string {
	return strings.NewReplacer("~", "~0", "/", "~1").Replace(token)
}

func containerPath(init bool, i int) string {
	if init {
		return fmt.Sprintf("/spec/initContainers/%d", i)
	}
	return fmt.Sprintf("/spec/containers/%d", i)
}
