// Command healthcheck is the Docker HEALTHCHECK of Piggy's images in the local
// compose stack: the runtime images are distroless (no shell, no curl), so
// this static binary GETs one URL and exits 0 on a 2xx answer, 1 otherwise.
//
//	healthcheck http://127.0.0.1:9090/readyz
//
// It is built into the "compose" target of deploy/docker/*.Dockerfile only;
// the production images (the default target) do not contain it. It uses the
// standard library only and is built outside the Go workspace
// (GOWORK=off go build ./deploy/healthcheck/main.go).
package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: healthcheck <url>")
		os.Exit(2)
	}
	if err := check(os.Args[1], 3*time.Second); err != nil {
		fmt.Fprintln(os.Stderr, "unhealthy:", err)
		os.Exit(1)
	}
}

// check GETs url within timeout and reports any answer but 2xx.
func check(url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s: HTTP %d: %s", url, resp.StatusCode, body)
	}
	return nil
}
