package awsbody_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"

	"github.com/piggysec/piggy/libs/awsbody"
	"github.com/piggysec/piggy/libs/awslocal"
)

const (
	keyID  = "AKIAAWSBODYTEST00001"
	secret = "awsbodyTestSecretKey00000000000000000000"
	region = "eu-west-3"
)

// TestEarlyAnswerKeepsTheConnection replays, in a fixed order, the race
// between smithy-go's close of the request body and net/http's last read
// of it: the server answers the headers as soon as it has the body, the
// client's body write returns only after the SDK has closed the body it
// built, and the response body comes a little later. Without awsbody the SDK
// call fails with "use of closed network connection".
func TestEarlyAnswerKeepsTheConnection(t *testing.T) {
	tests := []struct {
		name    string
		wrap    func(awsbody.Doer) awsbody.Doer
		wantErr bool
	}{
		{name: "the SDK's own body", wrap: func(d awsbody.Doer) awsbody.Doer { return d }, wantErr: true},
		{name: "a body of its own", wrap: awsbody.Client},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, err := awslocal.New(awslocal.Options{
				Region:            region,
				StaticCredentials: []awslocal.StaticCredentials{{AccessKeyID: keyID, SecretAccessKey: secret}},
			})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := srv.PutSecretString("team-a/web", `{"db":"value"}`); err != nil {
				t.Fatal(err)
			}
			ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				srv.ServeHTTP(&earlyHeaders{ResponseWriter: w, req: r}, r)
			}))
			t.Cleanup(ts.Close)
			sdkBody := &watchedBody{}

			tr := http.DefaultTransport.(*http.Transport).Clone()
			tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				return &slowBodyConn{Conn: c, sdkBody: sdkBody}, nil
			}
			sm := secretsmanager.New(secretsmanager.Options{
				Region:       region,
				BaseEndpoint: aws.String(ts.URL),
				Credentials:  credentials.NewStaticCredentialsProvider(keyID, secret, ""),
				HTTPClient:   sdkBody.watch(tt.wrap(&http.Client{Transport: tr})),
				Retryer:      aws.NopRetryer{},
			})
			out, err := sm.GetSecretValue(t.Context(), &secretsmanager.GetSecretValueInput{SecretId: aws.String("team-a/web")})
			if tt.wantErr {
				if err == nil {
					t.Fatal("GetSecretValue() succeeded; the replay no longer reproduces the race")
				}
				t.Logf("GetSecretValue() error, as expected: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("GetSecretValue() error = %v", err)
			}
			if got := aws.ToString(out.SecretString); got != `{"db":"value"}` {
				t.Errorf("SecretString = %q", got)
			}
		})
	}
}

// earlyHeaders sends the response headers at once and the body once the
// client has dropped the connection, or a second later, as a server under
// load may.
type earlyHeaders struct {
	http.ResponseWriter
	req   *http.Request
	wrote bool
}

func (w *earlyHeaders) WriteHeader(code int) {
	w.ResponseWriter.WriteHeader(code)
	w.ResponseWriter.(http.Flusher).Flush()
}

func (w *earlyHeaders) Write(p []byte) (int, error) {
	if !w.wrote {
		w.wrote = true
		select {
		case <-w.req.Context().Done():
		case <-time.After(time.Second):
		}
	}
	return w.ResponseWriter.Write(p)
}

// watchedBody keeps the request body the SDK built, to tell when the SDK
// has closed it.
type watchedBody struct {
	mu   sync.Mutex
	body io.WriterTo
}

func (b *watchedBody) watch(next awsbody.Doer) awsbody.Doer {
	return doerFunc(func(req *http.Request) (*http.Response, error) {
		b.mu.Lock()
		b.body, _ = req.Body.(io.WriterTo)
		b.mu.Unlock()
		return next.Do(req)
	})
}

// closed reports whether the SDK has closed its body. It is asked only once
// the body has been read to its end: from then on smithy-go's body writes
// nothing and returns io.EOF only after its Close.
func (b *watchedBody) closed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.body == nil {
		return false
	}
	_, err := b.body.WriteTo(io.Discard)
	return errors.Is(err, io.EOF)
}

type doerFunc func(*http.Request) (*http.Response, error)

func (f doerFunc) Do(req *http.Request) (*http.Response, error) { return f(req) }

// slowBodyConn lets a write that carries only request body bytes (one that
// does not start a request) reach the server at once, but returns from it
// only after the SDK has closed its request body.
type slowBodyConn struct {
	net.Conn
	sdkBody *watchedBody
}

func (c *slowBodyConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if line, _ := bufio.NewReader(bytes.NewReader(p)).ReadString(' '); line != "POST " {
		for deadline := time.Now().Add(10 * time.Second); !c.sdkBody.closed() && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
	}
	return n, err
}
