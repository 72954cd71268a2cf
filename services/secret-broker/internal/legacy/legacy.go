// Package legacy answers the original Piggy's secret request, POST /secret,
// for pods its webhook mutated: they run the original piggy-env, which
// calls that endpoint at every container start. It is off unless the
// operator turns it on (--legacy-secret-endpoint) while moving from the
// original; each call is counted (piggy_secret_broker_legacy_requests_total
// {outcome}) and the broker warns that it is deprecated.
//
// # The original protocol
//
// As read in KongZ/piggy (chart piggy-webhooks 0.7.x):
//
//   - piggy-env/main.go, requestSecrets: POST "${PIGGY_ADDRESS}/secret"
//     with the headers "Content-Type: application/json" and "X-Token: " and
//     the content of /var/run/secrets/kubernetes.io/serviceaccount/token
//     (the pod's default service account token: on current Kubernetes a
//     projected token for the API server's audiences, bound to the pod), and
//     the body {"resources":"pods","name":PIGGY_POD_NAME,"uid":PIGGY_UID,
//     "signature":hex SHA-256 of the command line after "--" joined with
//     spaces and trimmed}. It names no keys. TLS is not verified unless
//     PIGGY_SKIP_VERIFY_TLS=false. Any status but 200 is a failed attempt
//     (the body is logged); it tries PIGGY_NUMBER_OF_RETRY times in all,
//     500 ms apart. A 200 body is a JSON object of strings, key → value; every
//     env value "piggy:KEY" takes the value of KEY, and one left unreplaced
//     stops the start ("[NAME] not found") unless PIGGY_IGNORE_NO_ENV.
//   - piggy-webhooks/handler/secret.go: POST only, Content-Type exactly
//     application/json, 401 without X-Token, 400 when the body does not
//     decode or has no name, 400 for every other failure, 200 with the map.
//   - piggy-webhooks/service/secret.go, GetSecret: a TokenReview of X-Token
//     without audiences (the API server's); the namespace and service
//     account from the review, the pod by the name from the body (not from
//     the token); the source from the pod's annotations (aws-secret-name,
//     default <prefix><namespace>/<serviceaccount><suffix>;
//     aws-ssm-parameter-path; aws-region; aws-secret-version); the
//     piggy-uid annotation's entry for the body's uid must equal its
//     signature unless piggy-enforce-integrity is false; PIGGY_ALLOWED_SA;
//     then the whole secret, PIGGY_* configuration names left out.
//   - piggy-webhooks/mutate/pod.go: the piggy-uid annotation is a JSON
//     object container UID → signature, {"<uid>":"<sha256 hex>",...}; the
//     UID is a UUID without dashes (mutate.go, generateUid), given to the
//     container as PIGGY_UID; the command becomes /piggy/piggy-env with
//     args "--" and the original command line; PIGGY_POD_NAME is a fieldRef
//     to metadata.name.
//
// # What this package keeps and what it refuses
//
// Kept: the path, method, headers, body and answer (200 with the key →
// value object; any refusal is another status with the message as plain
// text, which the original piggy-env logs).
//
// Not kept, and why (docs/migration.md):
//   - The pod is the one the token is bound to, never the body's name
//     (which must equal it). Tokens that are not bound to a pod (legacy
//     Secret-based tokens) are refused: nothing else would tie the request
//     to one pod.
//   - Integrity is always enforced: the UID and signature must match the
//     container's spec and the annotation, whatever piggy-enforce-integrity
//     says; a container is needed to know what it may read.
//   - Only the keys the calling container's env references with a literal
//     "piggy:KEY" value are returned, never the whole secret: the original
//     piggy-env reads nothing else from it. Keys referenced through a
//     ConfigMap or Secret are not served (they can change after admission,
//     and the broker does not read them); such pods must be recreated.
//   - The broker's name policy, PIGGY_ALLOWED_SA, regions and AWS budgets
//     apply as to any request, and a container start is answered once: the
//     original piggy-env sends no fetch id, so a retry after an answered
//     attempt of the same start is refused.
package legacy

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc/status"

	"github.com/piggysec/piggy/services/secret-broker/internal/broker"
	"github.com/piggysec/piggy/services/secret-broker/internal/fault"
	"github.com/piggysec/piggy/services/secret-broker/internal/gateway"
	"github.com/piggysec/piggy/services/secret-broker/internal/grpcapi"
	"github.com/piggysec/piggy/services/secret-broker/internal/throttle"
)

// Path is the original's endpoint.
const Path = "/secret"

// TokenHeader carries the pod's token in the original protocol.
const TokenHeader = "X-Token"

// Broker serves the requests (broker.Broker).
type Broker interface {
	GetLegacySecrets(ctx context.Context, req broker.LegacyRequest) (broker.Response, error)
}

// Options configure the handler.
type Options struct {
	// Limiter admits requests before anything is read, as for /v1/secrets;
	// nil admits all.
	Limiter *throttle.Limiter
	// Meter counts the calls; nil counts none.
	Meter metric.Meter
}

// Outcomes of a call, the "outcome" label of the calls counter.
const (
	OutcomeSuccess   = "success"
	OutcomeRefused   = "refused"
	OutcomeInvalid   = "invalid"
	OutcomeThrottled = "throttled"
)

// Register adds POST /secret to mux.
func Register(mux *http.ServeMux, b Broker, opts Options) error {
	h := &handler{broker: b, opts: opts, outcomes: map[string]metric.AddOption{}}
	if opts.Meter != nil {
		c, err := opts.Meter.Int64Counter("piggy_secret_broker_legacy_requests",
			metric.WithDescription("Calls of the original Piggy's POST /secret (pods still running the original piggy-env), by outcome (success, refused, invalid, throttled); turn --legacy-secret-endpoint off once it stays at 0."))
		if err != nil {
			return err
		}
		h.calls = c
		for _, o := range []string{OutcomeSuccess, OutcomeRefused, OutcomeInvalid, OutcomeThrottled} {
			h.outcomes[o] = metric.WithAttributeSet(attribute.NewSet(attribute.String("outcome", o)))
		}
	}
	mux.Handle("POST "+Path, h)
	return nil
}

type handler struct {
	broker   Broker
	opts     Options
	calls    metric.Int64Counter
	outcomes map[string]metric.AddOption
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	outcome := h.serve(w, r)
	if h.calls != nil {
		h.calls.Add(r.Context(), 1, h.outcomes[outcome])
	}
}

func (h *handler) serve(w http.ResponseWriter, r *http.Request) string {
	if h.opts.Limiter != nil {
		release, refused := h.opts.Limiter.Admit(r.Context(), throttle.SourceOf(r.RemoteAddr), "https")
		if refused != nil {
			w.Header().Set("Retry-After", strconv.FormatInt(int64(refused.RetryAfter.Seconds()+0.999), 10))
			writeText(w, http.StatusTooManyRequests, refused.Message())
			return OutcomeThrottled
		}
		defer release()
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, gateway.MaxBodyBytes))
	if err != nil {
		if _, tooBig := errors.AsType[*http.MaxBytesError](err); tooBig {
			writeText(w, http.StatusRequestEntityTooLarge, "request body larger than "+strconv.Itoa(gateway.MaxBodyBytes)+" bytes")
			return OutcomeInvalid
		}
		writeText(w, http.StatusBadRequest, "the request body could not be read")
		return OutcomeInvalid
	}
	req, err := Parse(r.Header, body)
	if err != nil {
		fe := fault.As(err)
		writeText(w, httpStatus(fe), fe.Message)
		return OutcomeInvalid
	}
	resp, err := h.broker.GetLegacySecrets(r.Context(), req)
	if err != nil {
		fe := fault.As(err)
		writeText(w, httpStatus(fe), fe.Message)
		return OutcomeRefused
	}
	values := make(map[string]string, len(resp.Values))
	for k, v := range resp.Values {
		values[k] = v.Reveal()
	}
	b, err := json.Marshal(values) // a map of strings always marshals
	if err != nil {
		writeText(w, http.StatusInternalServerError, "internal error")
		return OutcomeRefused
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
	return OutcomeSuccess
}

// body is the original piggy-env's request body.
type body struct {
	Resources string `json:"resources"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
	Signature string `json:"signature"`
}

// Limits of the body's fields.
const maxFieldBytes = 256

// Parse reads an original request: the token from X-Token, the JSON body
// {"resources":"pods","name","uid","signature"}. Errors are *fault.Error;
// none repeats the token.
func Parse(h http.Header, data []byte) (broker.LegacyRequest, error) {
	if ct := h.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			return broker.LegacyRequest{}, fault.New(fault.InvalidArgument, "invalid_request", "unsupported content type; only application/json is supported")
		}
	}
	token := strings.TrimSpace(h.Get(TokenHeader))
	if token == "" {
		return broker.LegacyRequest{}, fault.New(fault.Unauthenticated, "token_missing", "no %s header: the original piggy-env sends the pod's service account token in it", TokenHeader)
	}
	var b body
	if err := json.Unmarshal(data, &b); err != nil {
		return broker.LegacyRequest{}, fault.New(fault.InvalidArgument, "invalid_request", `the body is not the original piggy-env's JSON object {"resources","name","uid","signature"}`)
	}
	switch {
	case b.Resources != "" && b.Resources != "pods":
		return broker.LegacyRequest{}, fault.New(fault.InvalidArgument, "invalid_request", `"resources" must be "pods"`)
	case b.Name == "":
		return broker.LegacyRequest{}, fault.New(fault.InvalidArgument, "invalid_request", `the body names no pod ("name", PIGGY_POD_NAME)`)
	case len(b.Name) > maxFieldBytes || len(b.UID) > maxFieldBytes || len(b.Signature) > maxFieldBytes:
		return broker.LegacyRequest{}, fault.New(fault.InvalidArgument, "invalid_request", "a field of the body is longer than %d bytes", maxFieldBytes)
	}
	return broker.LegacyRequest{Token: token, PodName: b.Name, ContainerUID: b.UID, Signature: b.Signature}, nil
}

// httpStatus is the status of a refusal: that of its gRPC code through
// the JSON gateway (grpcapi.Status), so both endpoints answer alike.
func httpStatus(fe *fault.Error) int {
	return runtime.HTTPStatusFromCode(status.Code(grpcapi.Status(fe)))
}

// writeText answers with a plain-text message, which the original
// piggy-env puts in its log.
func writeText(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = io.WriteString(w, msg+"\n")
}
