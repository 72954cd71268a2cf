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
	const n = 200 // more than the workers (on small machines): some run on their own goroutine
	var arrived sync.WaitGroup
	arrived.Add(n)
	release := make(chan struct{})
	h := pooled(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Done()
		<-release
		_, _ = io.WriteString(w, r.URL.Query().Get("i"))
	}))
	srv := startHTTP2(h)
	defer srv.Close()
	client := srv.Client()
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
			if resp.ProtoMajor != 2 {
				t.Errorf("request %d used %s, want HTTP/2", i, resp.Proto)
			}
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
			srv := startHTTP2(pooled(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic(v) })))
			defer srv.Close()
			// net/http recovers the re-raised panic and resets the
			// stream: the client sees an error, the process lives on.
			if resp, err := srv.Client().Get(srv.URL); err == nil {
				resp.Body.Close()
				t.Fatalf("got %d, want the connection dropped", resp.StatusCode)
			}
			// The worker that ran the handler is still serving.
			ok := pooled(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }))
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			req.ProtoMajor = 2
			ok.ServeHTTP(rec, req)
			if rec.Body.String() != "ok" {
				t.Errorf("after the panic: %q", rec.Body.String())
			}
		})
	}
}

// startHTTP2 serves h over TLS with HTTP/2, quietly; its Client speaks
// HTTP/2.
func startHTTP2(h http.Handler) *httptest.Server {
	srv := httptest.NewUnstartedServer(h)
	srv.EnableHTTP2 = true
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	return srv
}
