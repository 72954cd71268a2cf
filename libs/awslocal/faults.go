package awslocal

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"
)

// FaultKind says what an injected fault does to a call.
type FaultKind string

// Fault kinds.
const (
	// FaultThrottle answers with the service's throttling error (HTTP 400,
	// "ThrottlingException", or "Throttling" for STS), which the SDK's
	// standard retryer retries.
	FaultThrottle FaultKind = "throttle"
	// FaultServerError answers with the service's internal error (HTTP 500:
	// InternalServiceError, InternalServerError, ServerException or
	// InternalFailure).
	FaultServerError FaultKind = "server-error"
	// FaultError answers with Fault.Code, Fault.Status and Fault.Message, for
	// error shapes the server has no other way to produce.
	FaultError FaultKind = "error"
	// FaultLatency delays the call by Fault.Latency, then serves it.
	FaultLatency FaultKind = "latency"
	// FaultCloseConnection drops the connection without a response.
	FaultCloseConnection FaultKind = "close-connection"
)

// Fault is an injected failure for matching calls.
type Fault struct {
	// Service is ServiceSTS, ServiceSecretsManager, ServiceSSM, ServiceECR,
	// or "" for any.
	Service string
	// Operation is an operation name such as "GetSecretValue", or "" for any.
	Operation string
	// Kind is what the fault does.
	Kind FaultKind
	// Times is how many matching calls the fault affects; 0 means every call
	// until ClearFaults.
	Times int
	// Latency is the delay of a FaultLatency fault.
	Latency time.Duration
	// Code, Status (default 400) and Message describe a FaultError response.
	Code    string
	Status  int
	Message string
}

type callKey struct{ service, op string }

// faultTable holds injected faults and call counters; its mutex is separate
// from the data's so that faults never wait for data operations.
type faultTable struct {
	mu     sync.Mutex
	faults []Fault // Times counts down; removed at zero
	calls  map[callKey]int
}

// InjectFault adds a fault. Faults apply in the order they were added: all
// matching latency faults delay the call, then the first matching other
// fault decides its outcome.
func (s *Server) InjectFault(f Fault) error {
	switch f.Kind {
	case FaultThrottle, FaultServerError, FaultCloseConnection:
	case FaultLatency:
		if f.Latency <= 0 {
			return fmt.Errorf("latency fault: latency must be positive")
		}
	case FaultError:
		if f.Code == "" {
			return fmt.Errorf("error fault: code is required")
		}
		if f.Status == 0 {
			f.Status = http.StatusBadRequest
		}
		if f.Status < 400 || f.Status > 599 {
			return fmt.Errorf("error fault: status %d is not an error status", f.Status)
		}
	default:
		return fmt.Errorf("unknown fault kind %q", f.Kind)
	}
	if f.Times < 0 {
		return fmt.Errorf("fault times %d: must not be negative", f.Times)
	}
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	s.faults.faults = append(s.faults.faults, f)
	return nil
}

// Faults returns the faults still active, with Times showing how many calls
// each has left (0: unlimited).
func (s *Server) Faults() []Fault {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	return slices.Clone(s.faults.faults)
}

// ClearFaults removes every injected fault.
func (s *Server) ClearFaults() {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	s.faults.faults = nil
}

// Calls returns how many calls the server received for a service and
// operation, counting failed ones; "" matches any service or operation.
func (s *Server) Calls(service, op string) int {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	n := 0
	for k, c := range s.faults.calls {
		if (service == "" || k.service == service) && (op == "" || k.op == op) {
			n += c
		}
	}
	return n
}

// ResetCalls sets every call counter to zero.
func (s *Server) ResetCalls() {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	clear(s.faults.calls)
}

func (t *faultTable) count(service, op string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.calls[callKey{service, op}]++
}

// apply runs the faults matching a call. It returns the error to answer
// with, or closed when it dropped the connection.
func (t *faultTable) apply(ctx context.Context, w http.ResponseWriter, service, op string) (aerr *apiError, closed bool) {
	var delay time.Duration
	var outcome *Fault
	t.mu.Lock()
	for i := range t.faults {
		f := &t.faults[i]
		if (f.Service != "" && f.Service != service) || (f.Operation != "" && f.Operation != op) {
			continue
		}
		if f.Kind == FaultLatency {
			delay += f.Latency
		} else if outcome == nil {
			c := *f
			outcome = &c
		} else {
			continue
		}
		if f.Times > 0 {
			f.Times--
			if f.Times == 0 {
				f.Kind = "" // exhausted; removed below
			}
		}
	}
	t.faults = slices.DeleteFunc(t.faults, func(f Fault) bool { return f.Kind == "" })
	t.mu.Unlock()

	if delay > 0 {
		timer := time.NewTimer(delay)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
		}
	}
	if outcome == nil {
		return nil, false
	}
	switch outcome.Kind {
	case FaultThrottle:
		code := codeThrottling
		if service == ServiceSTS {
			code = "Throttling"
		}
		return &apiError{status: http.StatusBadRequest, code: code, message: "Rate exceeded"}, false
	case FaultServerError:
		code := map[string]string{
			ServiceSTS:            "InternalFailure",
			ServiceSecretsManager: codeInternalServiceError,
			ServiceSSM:            codeInternalServerError,
			ServiceECR:            codeECRServer,
		}[service]
		return &apiError{status: http.StatusInternalServerError, code: code, message: "An internal error occurred. Try again."}, false
	case FaultError:
		return &apiError{status: outcome.Status, code: outcome.Code, message: outcome.Message}, false
	default: // FaultCloseConnection
		closeConnection(w)
		return nil, true
	}
}

// closeConnection drops the client connection without a response.
func closeConnection(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			_ = conn.Close()
			return
		}
	}
	// HTTP/2 cannot be hijacked; this sentinel panic is net/http's
	// documented way to abort a response (it resets the stream and is not
	// logged).
	panic(http.ErrAbortHandler)
}

// AdminPath is the path prefix of AdminHandler's endpoints.
const AdminPath = "/_awslocal/"

// adminFault is Fault on the wire, with the latency as a Go duration string.
type adminFault struct {
	Service   string    `json:"service,omitempty"`
	Operation string    `json:"operation,omitempty"`
	Kind      FaultKind `json:"kind"`
	Times     int       `json:"times,omitempty"`
	Latency   string    `json:"latency,omitempty"`
	Code      string    `json:"code,omitempty"`
	Status    int       `json:"status,omitempty"`
	Message   string    `json:"message,omitempty"`
}

// AdminHandler serves fault injection and call counters over HTTP, for
// processes that cannot call the Go API. Mount it at AdminPath and only
// when asked to: it lets anyone who reaches it break the server.
//
//	GET    /_awslocal/faults   list active faults
//	POST   /_awslocal/faults   add a fault: {"service":"secretsmanager","operation":"GetSecretValue","kind":"throttle","times":2}
//	                           (kinds: throttle, server-error, error, latency, close-connection;
//	                           "latency":"250ms"; "code","status","message" for error)
//	DELETE /_awslocal/faults   remove all faults
//	GET    /_awslocal/calls?service=ssm&operation=GetParametersByPath   {"count":N}
//	DELETE /_awslocal/calls    reset counters
func (s *Server) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+AdminPath+"faults", func(w http.ResponseWriter, r *http.Request) {
		out := []adminFault{}
		for _, f := range s.Faults() {
			a := adminFault{Service: f.Service, Operation: f.Operation, Kind: f.Kind, Times: f.Times, Code: f.Code, Status: f.Status, Message: f.Message}
			if f.Latency > 0 {
				a.Latency = f.Latency.String()
			}
			out = append(out, a)
		}
		writeAdminJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("POST "+AdminPath+"faults", func(w http.ResponseWriter, r *http.Request) {
		var a adminFault
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&a); err != nil {
			writeAdminJSON(w, http.StatusBadRequest, map[string]string{"error": "decode fault: " + err.Error()})
			return
		}
		f := Fault{Service: a.Service, Operation: a.Operation, Kind: a.Kind, Times: a.Times, Code: a.Code, Status: a.Status, Message: a.Message}
		if a.Latency != "" {
			d, err := time.ParseDuration(a.Latency)
			if err != nil {
				writeAdminJSON(w, http.StatusBadRequest, map[string]string{"error": "latency: " + err.Error()})
				return
			}
			f.Latency = d
		}
		if err := s.InjectFault(f); err != nil {
			writeAdminJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("DELETE "+AdminPath+"faults", func(w http.ResponseWriter, r *http.Request) {
		s.ClearFaults()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET "+AdminPath+"calls", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		writeAdminJSON(w, http.StatusOK, map[string]int{"count": s.Calls(q.Get("service"), q.Get("operation"))})
	})
	mux.HandleFunc("DELETE "+AdminPath+"calls", func(w http.ResponseWriter, r *http.Request) {
		s.ResetCalls()
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

func writeAdminJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
