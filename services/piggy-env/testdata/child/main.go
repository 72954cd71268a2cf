// Command child is the application stand-in of piggy-env's process tests.
// It prints what it received as one JSON object on stdout: its PID, argv,
// environment and signal masks. CHILD_EXIT sets its exit code;
// CHILD_WAIT_SIGNAL=1 makes it print {"ready":true} first and exit 70 only when
// SIGTERM arrives.
package main

import (
	"encoding/json"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
)

func main() {
	out := map[string]any{
		"pid":  os.Getpid(),
		"args": os.Args,
		"env":  os.Environ(),
	}
	if status, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, line := range strings.Split(string(status), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && (k == "SigBlk" || k == "SigIgn") {
				out[k] = strings.TrimSpace(v)
			}
		}
	}
	enc := json.NewEncoder(os.Stdout)
	if os.Getenv("CHILD_WAIT_SIGNAL") == "1" {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM)
		out["ready"] = true
		enc.Encode(out)
		<-sig
		os.Exit(70)
	}
	enc.Encode(out)
	code, _ := strconv.Atoi(os.Getenv("CHILD_EXIT"))
	os.Exit(code)
}
