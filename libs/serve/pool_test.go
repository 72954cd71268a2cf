package serve

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

func TestPooledAnswersMoreRequestsThanWorkers(t *testing.T) {
	const n = 300 // more than the workers: some run on their own goroutine
	var arrived sync.WaitGroup
	arrived.Add(n)
	release := make(chan struct{})
	h := pooled(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Done()
		<-release
		_, _ = io.WriteString(w, r.URL.Query().Get("i"))
	}))
	srv := httptest.NewServer(h)
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: n, MaxIdleConnsPerHost: n}}
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			resp, err := client.Get(srv.URL + "/?i=" + string(rune('a'+i%26)))
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if want := string(rune('a' + i%26)); string(b) != want {
				t.Errorf("request %d got %q, want %q", i, b, want)
			}
		})
	}
	arrived.Wait() // every request is in a handler at once
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestPooledPanicsReachNetHTTP(t *testing.T) {
	for name, v := range map[string]any{"abort": http.ErrAbortHandler, "bug": "boom"} {
		t.Run(name, func(t *testing.T) {
			srv := httptest.NewUnstartedServer(pooled(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic(v) })))
			srv.Config.ErrorLog = log.New(io.Discard, "", 0)
			srv.Start()
			defer srv.Close()
			// net/http recovers the re-raised panic and drops the
			// connection: the client sees an error, the process lives on.
			if resp, err := http.Get(srv.URL); err == nil {
				resp.Body.Close()
				t.Fatalf("got %d, want the connection dropped", resp.StatusCode)
			}
			// The worker that ran the handler is still serving.
			ok := pooled(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }))
			rec := httptest.NewRecorder()
			ok.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
			if rec.Body.String() != "ok" {
				t.Errorf("after the panic: %q", rec.Body.String())
			}
		})
	}
}
