package legacy

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/piggysec/piggy/libs/logging"
	"github.com/piggysec/piggy/services/secret-broker/internal/broker"
	"github.com/piggysec/piggy/services/secret-broker/internal/fault"
	"github.com/piggysec/piggy/services/secret-broker/internal/throttle"
)

// originalBody is what the original piggy-env sends.
const originalBody = `{"resources":"pods","name":"web-1","uid":"0123456789abcdef0123456789abcdef","signature":"9a1b"}`

func header(token string) http.Header {
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	if token != "" {
		h.Set(TokenHeader, token)
	}
	return h
}

func TestParse(t *testing.T) {
	got, err := Parse(header("tok.en.sig\n"), []byte(originalBody))
	if err != nil {
		t.Fatal(err)
	}
	want := broker.LegacyRequest{Token: "tok.en.sig", PodName: "web-1", ContainerUID: "0123456789abcdef0123456789abcdef", Signature: "9a1b"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("request (-want +got):\n%s", diff)
	}
	// Unknown fields are ignored, as the original did; resources may be left out.
	if _, err := Parse(header("t"), []byte(`{"name":"web-1","uid":"u","signature":"s","namespace":"x"}`)); err != nil {
		t.Errorf("without resources, with an unknown field: %v", err)
	}
	const tok = "eyJ.tok-en-4711.sig"
	long := strings.Repeat("a", maxFieldBytes+1)
	for name, c := range map[string]struct {
		h      http.Header
		body   string
		kind   fault.Kind
		inText string
	}{
		"no token":        {header(""), originalBody, fault.Unauthenticated, "X-Token"},
		"blank token":     {header("  "), originalBody, fault.Unauthenticated, "X-Token"},
		"not JSON":        {header(tok), "name=web-1", fault.InvalidArgument, "JSON object"},
		"a JSON array":    {header(tok), `["web-1"]`, fault.InvalidArgument, "JSON object"},
		"no name":         {header(tok), `{"resources":"pods","uid":"u","signature":"s"}`, fault.InvalidArgument, "names no pod"},
		"other resources": {header(tok), `{"resources":"secrets","name":"web-1"}`, fault.InvalidArgument, "pods"},
		"long field":      {header(tok), `{"name":"` + long + `"}`, fault.InvalidArgument, "longer than"},
		"form content": {func() http.Header {
			h := header(tok)
			h.Set("Content-Type", "application/x-www-form-urlencoded")
			return h
		}(), originalBody, fault.InvalidArgument, "content type"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse(c.h, []byte(c.body))
			fe := fault.As(err)
			if err == nil || fe.Kind != c.kind || !strings.Contains(fe.Message, c.inText) {
				t.Fatalf("Parse = %v, want %v with %q", err, c.kind, c.inText)
			}
			if tok := c.h.Get(TokenHeader); strings.TrimSpace(tok) != "" && strings.Contains(fe.Error(), tok) {
				t.Errorf("the error repeats the token: %v", err)
			}
		})
	}
}

// fakeBroker answers from a fixed response or error and records the request.
type fakeBroker struct {
	got  []broker.LegacyRequest
	resp broker.Response
	err  error
}

func (f *fakeBroker) GetLegacySecrets(_ context.Context, req broker.LegacyRequest) (broker.Response, error) {
	f.got = append(f.got, req)
	return f.resp, f.err
}

func serve(t *testing.T, b Broker, opts Options, method, body, token string) *httptest.ResponseRecorder {
	t.Helper()
	mux := http.NewServeMux()
	if err := Register(mux, b, opts); err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest(method, Path, strings.NewReader(body))
	r.Header = header(token)
	w := httptest.NewRecorder()
	mux.ServeHTTP(w, r)
	return w
}

func TestHandler(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	opts := Options{Meter: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("test")}

	ok := &fakeBroker{resp: broker.Response{Values: map[string]logging.Secret{"db": logging.Secret("v1")}, Missing: []string{"nope"}}}
	w := serve(t, ok, opts, http.MethodPost, originalBody, "tok")
	var got map[string]string
	if err := json.Unmarshal(w.Body.Bytes(), &got); w.Code != http.StatusOK || err != nil {
		t.Fatalf("answer %d %q: %v", w.Code, w.Body, err)
	}
	// The original's answer: a flat object of the values, missing keys absent.
	if diff := cmp.Diff(map[string]string{"db": "v1"}, got); diff != "" {
		t.Errorf("values (-want +got):\n%s", diff)
	}
	if len(ok.got) != 1 || ok.got[0].Token != "tok" || ok.got[0].PodName != "web-1" {
		t.Errorf("broker got %+v", ok.got)
	}

	for _, c := range []struct {
		err  error
		code int
	}{
		{fault.New(fault.Unauthenticated, "token_unbound", "the token is not bound to a pod"), http.StatusUnauthorized},
		{fault.New(fault.PermissionDenied, "signature_mismatch", "the command signature does not match"), http.StatusForbidden},
		{fault.New(fault.NotFound, "secret_not_found", "secret team-a/web not found"), http.StatusNotFound},
		{fault.New(fault.Unavailable, "aws_unavailable", "AWS did not answer; retry"), http.StatusServiceUnavailable},
	} {
		w := serve(t, &fakeBroker{err: c.err}, opts, http.MethodPost, originalBody, "tok")
		if w.Code != c.code || strings.TrimSpace(w.Body.String()) != fault.As(c.err).Message || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/plain") {
			t.Errorf("refusal %v: %d %q", c.err, w.Code, w.Body)
		}
	}
	// A malformed request does not reach the broker.
	never := &fakeBroker{}
	if w := serve(t, never, opts, http.MethodPost, "{", "tok"); w.Code != http.StatusBadRequest || len(never.got) != 0 {
		t.Errorf("malformed body: %d, broker called %d times", w.Code, len(never.got))
	}
	if w := serve(t, never, opts, http.MethodPost, strings.Repeat("x", 70<<10), "tok"); w.Code != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized body: %d", w.Code)
	}
	if w := serve(t, never, opts, http.MethodGet, "", "tok"); w.Code != http.StatusMethodNotAllowed || len(never.got) != 0 {
		t.Errorf("GET: %d", w.Code)
	}

	// Throttled before anything is read.
	lim, err := throttle.New(throttle.Options{PerSourceRate: 1, PerSourceBurst: 1})
	if err != nil {
		t.Fatal(err)
	}
	throttled := &fakeBroker{resp: ok.resp}
	serve(t, throttled, Options{Limiter: lim, Meter: opts.Meter}, http.MethodPost, originalBody, "tok")
	w = serve(t, throttled, Options{Limiter: lim, Meter: opts.Meter}, http.MethodPost, originalBody, "tok")
	if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") == "" || len(throttled.got) != 1 {
		t.Errorf("over the limit: %d, Retry-After %q, broker called %d times", w.Code, w.Header().Get("Retry-After"), len(throttled.got))
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(t.Context(), &rm); err != nil {
		t.Fatal(err)
	}
	counts := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "piggy_secret_broker_legacy_requests" {
				continue
			}
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				o, _ := dp.Attributes.Value("outcome")
				counts[o.AsString()] += dp.Value
			}
		}
	}
	// The GET is not a call of the endpoint (the mux answers 405).
	want := map[string]int64{OutcomeSuccess: 2, OutcomeRefused: 4, OutcomeInvalid: 2, OutcomeThrottled: 1}
	if diff := cmp.Diff(want, counts); diff != "" {
		t.Errorf("calls by outcome (-want +got):\n%s", diff)
	}
}
