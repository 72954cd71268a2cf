package serve

import (
	"net/http"
	"runtime"
	"sync"
)

// workersPerProc sizes the handler pool per processor: enough for the
// requests in flight at once, not only for the running ones.
const workersPerProc = 16

// pooled runs next, for HTTP/2 requests, on a process-wide pool of
// long-lived goroutines.
//
// net/http starts a goroutine for every HTTP/2 request, and a new
// goroutine's stack is small: a handler with a deep call chain (tracing,
// JSON, a gRPC call) grows and copies it on every request, which costs
// more than handing the request to a goroutine whose stack has already
// grown. The calling goroutine waits, so the handler still runs within
// ServeHTTP as net/http requires. When every worker is busy, the request
// runs on the calling goroutine, as without the pool; a panic in a worker
// is re-raised on the calling goroutine, where net/http expects it.
func pooled(next http.Handler) http.Handler {
	startWorkers.Do(func() {
		for range workersPerProc * runtime.GOMAXPROCS(0) {
			go worker()
		}
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 {
			// HTTP/1 serves a connection's requests on one goroutine,
			// whose stack stays grown.
			next.ServeHTTP(w, r)
			return
		}
		j := jobs.Get().(*job)
		j.h, j.w, j.r = next, w, r
		select {
		case work <- j:
			v := <-j.done
			j.h, j.w, j.r = nil, nil, nil
			jobs.Put(j)
			if v != nil {
				panic(v)
			}
		default:
			j.h, j.w, j.r = nil, nil, nil
			jobs.Put(j)
			next.ServeHTTP(w, r)
		}
	})
}

// job is one request handed to a worker; done receives the handler's
// panic value, or nil.
type job struct {
	h    http.Handler
	w    http.ResponseWriter
	r    *http.Request
	done chan any
}

var (
	startWorkers sync.Once
	// work is unbuffered: a send succeeds only when a worker is idle.
	work = make(chan *job)
	jobs = sync.Pool{New: func() any { return &job{done: make(chan any, 1)} }}
)

func worker() {
	for j := range work {
		j.run()
	}
}

func (j *job) run() {
	defer func() { j.done <- recover() }()
	j.h.ServeHTTP(j.w, j.r)
}
