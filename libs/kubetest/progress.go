package kubetest

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// progressEvery is how often a long step reports that it is still running.
const progressEvery = 30 * time.Second

// reporter prints progress lines to Options.Progress and Options.Logf.
type reporter struct {
	mu   sync.Mutex
	w    io.Writer
	logf func(format string, args ...any)
}

func newReporter(opts Options) *reporter {
	return &reporter{w: opts.Progress, logf: opts.Logf}
}

func (r *reporter) printf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.w != nil {
		fmt.Fprintf(r.w, "kubetest: %s\n", msg)
	}
	if r.logf != nil {
		r.logf("kubetest: %s", msg)
	}
}

// during runs fn, reporting the start, the elapsed time every progressEvery
// and the end of step.
func (r *reporter) during(step string, fn func() error) error {
	start := time.Now()
	r.printf("%s ...", step)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				r.printf("%s: still running, %s elapsed", step, time.Since(start).Round(time.Second))
			}
		}
	}()
	err := fn()
	close(stop)
	<-done
	if err != nil {
		r.printf("%s: failed after %s", step, time.Since(start).Round(time.Second))
	} else {
		r.printf("%s: done in %s", step, time.Since(start).Round(time.Second))
	}
	return err
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu      sync.Mutex
	max     int
	buf     []byte
	dropped bool
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
		t.dropped = true
	}
	return len(p), nil
}

// String returns the kept bytes, starting at a line boundary when some
// were dropped.
func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.buf
	if t.dropped {
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(b)
}

// fileTail returns about the last n bytes of the file at path, from a line
// boundary, or a note saying why it cannot.
func fileTail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	defer f.Close()
	t := &tailBuffer{max: int(n)}
	if fi, err := f.Stat(); err == nil && fi.Size() > n {
		if _, err := f.Seek(fi.Size()-n-1, io.SeekStart); err == nil {
			t.dropped = true
		}
	}
	_, _ = io.Copy(t, f)
	return t.String()
}
