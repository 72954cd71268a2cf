package standalone

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// DecodeSecretString decodes a SecretString holding a JSON object and returns
// the values of the keys in want that it holds. String values are returned as
// they are; numbers and booleans as their JSON text (1.50 stays "1.50").
// Other values (null, objects, arrays) are errors naming the key, but only
// for wanted keys: what else the secret holds is not this container's
// business. Errors never quote the secret's content.
func DecodeSecretString(s string, want map[string]bool) (map[string]string, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(s), &raw); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return nil, fmt.Errorf("SecretString is JSON %s, not an object", te.Value)
		}
		return nil, errors.New("SecretString is not a JSON object")
	}
	values := make(map[string]string, len(want))
	for key := range want {
		v, ok := raw[key]
		if !ok {
			continue
		}
		v = bytes.TrimSpace(v)
		switch {
		case len(v) == 0:
			return nil, fmt.Errorf("key %q has no value", key)
		case v[0] == '"':
			var str string
			if err := json.Unmarshal(v, &str); err != nil {
				return nil, fmt.Errorf("key %q: invalid JSON string", key)
			}
			values[key] = str
		case v[0] == 't' || v[0] == 'f' || v[0] == '-' || ('0' <= v[0] && v[0] <= '9'):
			values[key] = string(v)
		case v[0] == 'n':
			return nil, fmt.Errorf("key %q is null; values must be strings, numbers or booleans", key)
		case v[0] == '{':
			return nil, fmt.Errorf("key %q holds a JSON object; values must be strings, numbers or booleans", key)
		case v[0] == '[':
			return nil, fmt.Errorf("key %q holds a JSON array; values must be strings, numbers or booleans", key)
		default:
			return nil, fmt.Errorf("key %q has an unsupported JSON value", key)
		}
	}
	return values, nil
}
