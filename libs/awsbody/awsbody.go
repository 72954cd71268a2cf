// Package awsbody gives net/http a request body of its own for every AWS
// SDK request, so that the SDK's early close of the body it built cannot
// break a connection that is still being used. It depends on the standard
// library only, so piggy-env may link it.
//
// The race it removes: smithy-go closes the request body as soon as the
// response headers arrive. For a body net/http does not know to be in
// memory, the transport flushes the headers, writes the body straight to
// the connection and then reads the body once more to check that nothing
// is left; a server that answered in between has made smithy-go close the
// body, whose WriteTo then returns io.EOF, which net/http takes for a write
// error: it closes the connection while the response is still being read
// ("deserialization failed ... use of closed network connection").
package awsbody

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
)

// Doer is the HTTP client interface of the AWS SDK (aws.HTTPClient).
type Doer interface {
	Do(*http.Request) (*http.Response, error)
}

// Client wraps next so that each request with a body goes out with an
// in-memory copy of it that nothing but net/http holds.
func Client(next Doer) Doer { return client{next: next} }

type client struct{ next Doer }

// Do reads the body the SDK built (SDK request bodies are already in
// memory: query strings and JSON documents) and sends the request with a
// bytes.Reader over the same bytes.
func (c client) Do(req *http.Request) (*http.Response, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return c.next.Do(req)
	}
	b, err := io.ReadAll(req.Body)
	if err != nil {
		return nil, fmt.Errorf("read request body: %w", err)
	}
	out := req.Clone(req.Context())
	out.Body = io.NopCloser(bytes.NewReader(b))
	out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	out.ContentLength = int64(len(b))
	return c.next.Do(out)
}
