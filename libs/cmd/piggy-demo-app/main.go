// Command piggy-demo-app is the application of Piggy's local demo: it
// prints one JSON object with its process ID, arguments and environment, so
// the demo can show what the application saw after piggy-env replaced the
// piggy: values.
package main

import (
	"encoding/json"
	"os"
	"strings"
)

func main() {
	env := map[string]string{}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	out := map[string]any{"pid": os.Getpid(), "args": os.Args[1:], "env": env}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(1)
	}
}
