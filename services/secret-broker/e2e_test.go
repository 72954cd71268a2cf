package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/piggysec/piggy/libs/awslocal"
	secretbrokerv1 "github.com/piggysec/piggy/libs/gen/piggy/secretbroker/v1"
	"github.com/piggysec/piggy/libs/kubetest"
	"github.com/piggysec/piggy/libs/podidentity"
	"github.com/piggysec/piggy/libs/tlsreload"
)

// TestEndToEnd runs the broker process against the real apiserver and
// awslocal and checks every authentication, authorisation and failure path
// a pod can meet, over the HTTPS gateway (as piggy-env) and mTLS gRPC.
func TestEndToEnd(t *testing.T) {
	w := newWorld(t, worldOptions{})
	ctx := t.Context()
	nsA := w.namespace("team-a-", "web", "api")
	nsB := w.namespace("team-b-", "web")

	dbA, apiA := secretValue("db-a"), secretValue("api-a")
	w.seed(nsA+"/web", map[string]string{"db": dbA, "api_key": apiA, "PIGGY_UID": "reserved-value-0001"})
	w.seed(nsA+"/api-only", map[string]string{"db": secretValue("api-only"), "PIGGY_ALLOWED_SA": nsA + ":api"})
	w.seed(nsB+"/web", map[string]string{"db": secretValue("db-b")})
	grantValue := secretValue("grant")
	w.seed(nsB+"/grant", map[string]string{"db": grantValue, "PIGGY_ALLOWED_SA": " team-x:foo , " + nsA + ":web "})
	w.seed(nsA+"/throttled", map[string]string{"db": secretValue("throttled")})
	w.seed(nsA+"/down", map[string]string{"db": secretValue("down")})
	ssmValue := secretValue("ssm")
	if _, err := w.aws.PutParameter("/"+nsA+"/app/db", awslocal.ParameterSecureString, ssmValue); err != nil {
		t.Fatal(err)
	}
	allLogs.seed(ssmValue)

	podWeb, ctrWeb := w.piggyPod(nsA, "web-1", "web", nil)
	tokWeb := w.podToken(podWeb)

	t.Run("token bound to the right pod succeeds over HTTPS", func(t *testing.T) {
		got := w.getSecrets(t, tokWeb, ctrWeb, "db", "api_key", "nope")
		want := answer{Status: http.StatusOK, Values: map[string]string{"db": dbA, "api_key": apiA}, MissingKeys: []string{"nope"}, SourceName: nsA + "/web"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("answer (-want +got):\n%s", diff)
		}
		// Only the requested keys: the same token asking for one key gets one.
		if got := w.getSecrets(t, tokWeb, ctrWeb, "db"); len(got.Values) != 1 || got.Values["db"] != dbA {
			t.Errorf("values = %v, want only db", got.Values)
		}
	})

	t.Run("same request over mTLS gRPC", func(t *testing.T) {
		client := w.grpcClient(t, w.client.ClientConfig("127.0.0.1"))
		md := metadata.Pairs("authorization", "Bearer "+tokWeb)
		// The same fetch (its fetch id) over the other transport: the
		// broker answers a container start once, and its retries.
		resp, err := client.GetSecrets(metadata.NewOutgoingContext(ctx, md), &secretbrokerv1.GetSecretsRequest{ContainerUid: ctrWeb.uid, Signature: ctrWeb.signature, Keys: []string{"db"}, FetchId: ctrWeb.fetchID})
		if err != nil || resp.GetValues()["db"] != dbA {
			t.Errorf("GetSecrets = %v, %v", resp.GetSourceName(), err)
		}
		_, err = client.GetSecrets(ctx, &secretbrokerv1.GetSecretsRequest{ContainerUid: ctrWeb.uid, Signature: ctrWeb.signature, Keys: []string{"db"}})
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("GetSecrets without a token = %v, want Unauthenticated", err)
		}
	})

	refused := func(t *testing.T, got answer, wantStatus int, wantInMessage string) {
		t.Helper()
		if got.Status != wantStatus || len(got.Values) != 0 || !strings.Contains(got.Message, wantInMessage) {
			t.Errorf("answer = %+v, want HTTP %d with %q in the message and no values", got, wantStatus, wantInMessage)
		}
	}

	t.Run("token of another pod of the same service account is refused", func(t *testing.T) {
		podWeb2, ctrWeb2 := w.piggyPod(nsA, "web-2", "web", nil)
		tokWeb2 := w.podToken(podWeb2)
		if got := w.getSecrets(t, tokWeb2, ctrWeb2, "db"); got.Status != http.StatusOK {
			t.Fatalf("web-2 with its own identity: %+v", got)
		}
		// web-2's token with web-1's container identity.
		refused(t, w.getSecrets(t, tokWeb2, ctrWeb, "db"), http.StatusForbidden, "container UID")
	})

	t.Run("unbound token is refused", func(t *testing.T) {
		st, err := kubetest.RequestToken(ctx, w.cs, nsA, "web", kubetest.TokenOptions{Audiences: []string{audience}})
		if err != nil {
			t.Fatal(err)
		}
		refused(t, w.getSecrets(t, st.Token, ctrWeb, "db"), http.StatusUnauthorized, "not bound to a pod")
	})

	t.Run("wrong audience is refused", func(t *testing.T) {
		other, err := kubetest.RequestPodToken(ctx, w.cs, podWeb, "not-piggy")
		if err != nil {
			t.Fatal(err)
		}
		refused(t, w.getSecrets(t, other, ctrWeb, "db"), http.StatusUnauthorized, "audience")
		// The API-audience default token (what the original accepted).
		def, err := kubetest.RequestToken(ctx, w.cs, nsA, "web", kubetest.TokenOptions{Pod: podWeb})
		if err != nil {
			t.Fatal(err)
		}
		refused(t, w.getSecrets(t, def.Token, ctrWeb, "db"), http.StatusUnauthorized, "audience")
	})

	t.Run("missing or junk token is refused", func(t *testing.T) {
		refused(t, w.getSecrets(t, "", ctrWeb, "db"), http.StatusUnauthorized, "no bearer token")
		refused(t, w.getSecrets(t, "not.a.token", ctrWeb, "db"), http.StatusUnauthorized, "not a service account token")
		// Well-formed claims with a forged signature reach the apiserver,
		// which rejects them.
		sig := strings.LastIndex(tokWeb, ".")
		forged := tokWeb[:sig+1] + strings.Repeat("A", len(tokWeb)-sig-1)
		refused(t, w.getSecrets(t, forged, ctrWeb, "db"), http.StatusUnauthorized, "rejected")
	})

	t.Run("wrong container identity is refused", func(t *testing.T) {
		refused(t, w.getSecrets(t, tokWeb, container{uid: podidentity.NewUID(), signature: ctrWeb.signature}, "db"), http.StatusForbidden, "container UID")
		refused(t, w.getSecrets(t, tokWeb, container{uid: ctrWeb.uid, signature: podidentity.Signature([]string{"/bin/sh", "-c", "env"})}, "db"), http.StatusForbidden, "signature")
		refused(t, w.getSecrets(t, tokWeb, container{uid: ctrWeb.uid, signature: ""}, "db"), http.StatusForbidden, "signature")
		refused(t, w.getSecrets(t, tokWeb, container{uid: "", signature: ctrWeb.signature}, "db"), http.StatusForbidden, "container UID")
	})

	t.Run("pod without a piggy-uid annotation is refused", func(t *testing.T) {
		bare, err := kubetest.CreatePod(ctx, w.cs, nsA, "bare", "web")
		if err != nil {
			t.Fatal(err)
		}
		refused(t, w.getSecrets(t, w.podToken(bare), container{}, "db"), http.StatusForbidden, "container UID")
		refused(t, w.getSecrets(t, w.podToken(bare), ctrWeb, "db"), http.StatusForbidden, "container UID")
	})

	t.Run("deleted pod is refused", func(t *testing.T) {
		pod, ctr := w.piggyPod(nsA, "short-lived", "web", nil)
		tok := w.podToken(pod)
		if got := w.getSecrets(t, tok, ctr, "db"); got.Status != http.StatusOK {
			t.Fatalf("before deletion: %+v", got)
		}
		if err := w.cs.CoreV1().Pods(nsA).Delete(ctx, pod.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		// The review of the token may be cached; the pod check is not.
		var got answer
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if got = w.getSecrets(t, tok, ctr, "db"); got.Status != http.StatusOK {
				break
			}
		}
		refused(t, got, http.StatusForbidden, "no longer exists")
		// A new pod of the same name does not inherit the old token.
		w.piggyPod(nsA, "short-lived", "web", nil)
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if got = w.getSecrets(t, tok, ctr, "db"); strings.Contains(got.Message, "earlier pod") {
				break
			}
		}
		refused(t, got, http.StatusForbidden, "earlier pod")
	})

	t.Run("PIGGY_ALLOWED_SA allows", func(t *testing.T) {
		pod, ctr := w.piggyPod(nsA, "grant", "web", map[string]string{"aws-secret-name": nsB + "/grant"})
		got := w.getSecrets(t, w.podToken(pod), ctr, "db")
		if got.Status != http.StatusOK || got.Values["db"] != grantValue || got.SourceName != nsB+"/grant" {
			t.Errorf("answer = %+v", got)
		}
		api, ctrAPI := w.piggyPod(nsA, "api", "api", map[string]string{"aws-secret-name": nsA + "/api-only"})
		if got := w.getSecrets(t, w.podToken(api), ctrAPI, "db"); got.Status != http.StatusOK {
			t.Errorf("api service account: %+v", got)
		}
	})

	t.Run("PIGGY_ALLOWED_SA denies", func(t *testing.T) {
		pod, ctr := w.piggyPod(nsA, "not-listed", "web", map[string]string{"aws-secret-name": nsA + "/api-only"})
		refused(t, w.getSecrets(t, w.podToken(pod), ctr, "db"), http.StatusForbidden, "does not list "+nsA+":web")
	})

	t.Run("enforce-service-account requires the list", func(t *testing.T) {
		pod, ctr := w.piggyPod(nsA, "enforced", "web", map[string]string{"piggy-enforce-service-account": "true"})
		refused(t, w.getSecrets(t, w.podToken(pod), ctr, "db"), http.StatusForbidden, "PIGGY_ALLOWED_SA")
	})

	t.Run("secret outside the namespace policy is refused", func(t *testing.T) {
		pod, ctr := w.piggyPod(nsA, "intruder", "web", map[string]string{"aws-secret-name": nsB + "/web"})
		refused(t, w.getSecrets(t, w.podToken(pod), ctr, "db"), http.StatusForbidden, nsB+"/web")
		// Whether a secret outside the policy exists is not revealed.
		pod, ctr = w.piggyPod(nsA, "prober", "web", map[string]string{"aws-secret-name": nsB + "/no-such-secret"})
		refused(t, w.getSecrets(t, w.podToken(pod), ctr, "db"), http.StatusForbidden, nsB+"/no-such-secret")
		pod, ctr = w.piggyPod(nsA, "ssm-intruder", "web", map[string]string{"aws-ssm-parameter-path": "/" + nsB})
		refused(t, w.getSecrets(t, w.podToken(pod), ctr, "db"), http.StatusForbidden, "/"+nsB)
	})

	t.Run("missing secret is 404 with its name", func(t *testing.T) {
		pod, ctr := w.piggyPod(nsA, "missing", "web", map[string]string{"aws-secret-name": nsA + "/missing"})
		got := w.getSecrets(t, w.podToken(pod), ctr, "db")
		refused(t, got, http.StatusNotFound, `"`+nsA+`/missing"`)
		if got.Code != int(codes.NotFound) {
			t.Errorf("code = %d, want %d", got.Code, codes.NotFound)
		}
	})

	t.Run("keys the container never referenced are refused without saying whether they exist", func(t *testing.T) {
		pod, ctr := w.launchedPod(nsA, "db-only", "web", nil, "db")
		tok := w.podToken(pod)
		if got := w.getSecrets(t, tok, ctr, "db"); got.Status != http.StatusOK || got.Values["db"] != dbA {
			t.Fatalf("referenced key: %+v", got)
		}
		// api_key exists in the secret, no-such-key does not, PIGGY_UID is
		// reserved: the same refusal, naming only the key asked for.
		for _, key := range []string{"api_key", "no-such-key", "PIGGY_ALLOWED_SA"} {
			got := w.getSecrets(t, tok, ctr, "db", key)
			want := fmt.Sprintf("container \"main\" of pod %s/db-only was not admitted with a piggy: reference to key %q; the keys a container may read are those it referenced when the pod was created", nsA, key)
			if got.Status != http.StatusForbidden || got.Message != want || len(got.Values) != 0 || len(got.MissingKeys) != 0 {
				t.Errorf("key %s: answer = %+v, want 403 %q", key, got, want)
			}
		}
	})

	t.Run("settings changed after admission are refused", func(t *testing.T) {
		for _, tc := range []struct {
			name              string
			admitted          map[string]string
			annotation, value string
			statusBeforePatch int
		}{
			{"secret re-pointed", nil, "aws-secret-name", nsB + "/grant", http.StatusOK},
			{"region re-pointed", nil, "aws-region", "us-east-2", http.StatusOK},
			{"enforce-service-account turned off", map[string]string{"piggy-enforce-service-account": "true"}, "piggy-enforce-service-account", "false", http.StatusForbidden},
		} {
			pod, ctr := w.piggyPod(nsA, "patched-"+strings.ReplaceAll(tc.annotation, "-", ""), "web", tc.admitted)
			tok := w.podToken(pod)
			if got := w.getSecrets(t, tok, ctr, "db"); got.Status != tc.statusBeforePatch {
				t.Fatalf("%s: before the patch: %+v", tc.name, got)
			}
			patch := fmt.Sprintf(`{"metadata":{"annotations":{"piggysec.com/%s":%q}}}`, tc.annotation, tc.value)
			if _, err := w.cs.CoreV1().Pods(nsA).Patch(ctx, pod.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
				t.Fatal(err)
			}
			var got answer
			if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
				got = w.getSecrets(t, tok, ctr, "db")
				return got.Status != tc.statusBeforePatch || got.Message != "" && strings.Contains(got.Message, "settings cannot change"), nil
			}); err != nil {
				t.Fatalf("%s: after the patch the broker still answers %+v (%v)", tc.name, got, err)
			}
			if got.Status != http.StatusForbidden || !strings.Contains(got.Message, "its settings differ from what was admitted") || len(got.Values) != 0 {
				t.Errorf("%s: after the patch: %+v, want 403 settings differ from what was admitted", tc.name, got)
			}
		}
	})

	t.Run("SSM parameter path", func(t *testing.T) {
		pod, ctr := w.piggyPod(nsA, "ssm", "web", map[string]string{"aws-ssm-parameter-path": "/" + nsA + "/app"})
		got := w.getSecrets(t, w.podToken(pod), ctr, "db", "nope")
		if got.Status != http.StatusOK || got.Values["db"] != ssmValue || !slices.Equal(got.MissingKeys, []string{"nope"}) {
			t.Errorf("answer = %+v", got)
		}
	})

	t.Run("throttling then success", func(t *testing.T) {
		pod, ctr := w.piggyPod(nsA, "throttled", "web", map[string]string{"aws-secret-name": nsA + "/throttled"})
		tok := w.podToken(pod)
		before := w.aws.Calls(awslocal.ServiceSecretsManager, "GetSecretValue")
		if err := w.aws.InjectFault(awslocal.Fault{Service: awslocal.ServiceSecretsManager, Operation: "GetSecretValue", Kind: awslocal.FaultThrottle, Times: 2}); err != nil {
			t.Fatal(err)
		}
		got := w.getSecrets(t, tok, ctr, "db")
		if got.Status != http.StatusOK {
			t.Errorf("answer = %+v, want 200 after the SDK's retries", got)
		}
		if n := w.aws.Calls(awslocal.ServiceSecretsManager, "GetSecretValue") - before; n != 3 {
			t.Errorf("GetSecretValue calls = %d, want 3 (two throttled, one served)", n)
		}
	})

	t.Run("AWS down is 503", func(t *testing.T) {
		pod, ctr := w.piggyPod(nsA, "down", "web", map[string]string{"aws-secret-name": nsA + "/down"})
		tok := w.podToken(pod)
		for _, kind := range []awslocal.FaultKind{awslocal.FaultServerError, awslocal.FaultCloseConnection, awslocal.FaultThrottle} {
			if err := w.aws.InjectFault(awslocal.Fault{Service: awslocal.ServiceSecretsManager, Kind: kind}); err != nil {
				t.Fatal(err)
			}
			got := w.getSecrets(t, tok, ctr, "db")
			w.aws.ClearFaults()
			refused(t, got, http.StatusServiceUnavailable, nsA+"/down")
			if got.Code != int(codes.Unavailable) {
				t.Errorf("%s: code = %d, want %d", kind, got.Code, codes.Unavailable)
			}
		}
		if got := w.getSecrets(t, tok, ctr, "db"); got.Status != http.StatusOK {
			t.Errorf("after recovery: %+v", got)
		}
	})

	t.Run("gRPC without a client certificate is refused", func(t *testing.T) {
		caOnly, err := tlsreload.Load(tlsreload.Files{CAFile: w.dir + "/ca.crt"})
		if err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, err = w.grpcClient(t, caOnly.ClientConfig("127.0.0.1")).GetCacheStats(cctx, &secretbrokerv1.GetCacheStatsRequest{})
		if status.Code(err) != codes.Unavailable {
			t.Errorf("GetCacheStats without a client certificate = %v, want the handshake refused", err)
		}
		// A certificate from another CA is refused too.
		_, err = w.grpcClient(t, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}).GetCacheStats(cctx, &secretbrokerv1.GetCacheStatsRequest{}) //nolint:gosec // the client side is not under test
		if status.Code(err) != codes.Unavailable {
			t.Errorf("GetCacheStats with no certificate at all = %v, want refused", err)
		}
	})

	t.Run("diagnostics over mTLS gRPC", func(t *testing.T) {
		client := w.grpcClient(t, w.client.ClientConfig("127.0.0.1"))
		e, err := client.ExplainAccess(ctx, &secretbrokerv1.ExplainAccessRequest{Namespace: nsA, PodName: "web-1", ContainerName: "main"})
		if err != nil {
			t.Fatal(err)
		}
		if !e.GetAllowed() || e.GetSourceName() != nsA+"/web" || e.GetRegion() != awsRegion || e.GetVersion() != "AWSCURRENT" ||
			e.GetSource() != secretbrokerv1.Source_SOURCE_SECRETS_MANAGER || !slices.Equal(e.GetKeys(), []string{"api", "api_key", "db", "nope"}) || e.GetServiceAccount() != "web" {
			t.Errorf("ExplainAccess = %v", e)
		}
		e, err = client.ExplainAccess(ctx, &secretbrokerv1.ExplainAccessRequest{Namespace: nsA, PodName: "intruder", ContainerName: "main"})
		if err != nil || e.GetAllowed() {
			t.Errorf("ExplainAccess of the intruder = %v, %v; want not allowed", e, err)
		}
		stats, err := client.GetCacheStats(ctx, &secretbrokerv1.GetCacheStatsRequest{})
		if err != nil || stats.GetSecrets().GetHits() == 0 || stats.GetTokenReviews().GetMisses() == 0 || stats.GetSecrets().GetTtl().AsDuration() != time.Minute {
			t.Errorf("GetCacheStats = %v, %v", stats, err)
		}
	})

	t.Run("IRSA credentials through STS, fetched once", func(t *testing.T) {
		if n := w.aws.Calls(awslocal.ServiceSTS, "AssumeRoleWithWebIdentity"); n != 1 {
			t.Errorf("AssumeRoleWithWebIdentity calls = %d, want 1 for the whole run", n)
		}
	})

	t.Run("request log lines", func(t *testing.T) {
		ok := w.proc.WaitForRecord(t, 5*time.Second, func(r map[string]any) bool {
			return r["message"] == "Request from [sa="+nsA+":web], [pod=web-1] was successful"
		})
		want := map[string]any{"namespace": nsA, "pod_name": "web-1", "service_account": "web", "secret_name": nsA + "/web"}
		for k, v := range want {
			if ok[k] != v {
				t.Errorf("success record %s = %v, want %v", k, ok[k], v)
			}
		}
		bad := w.proc.WaitForRecord(t, 5*time.Second, func(r map[string]any) bool {
			return r["message"] == "Request from [sa="+nsA+":web], [pod=intruder] failed"
		})
		if bad["reason"] != "policy_denied" || bad["secret_name"] != nsB+"/web" || bad["level"] != "warn" {
			t.Errorf("failure record = %v", bad)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		m := w.brokerMetrics(t)
		for _, c := range []struct {
			name   string
			labels []string
		}{
			{"piggy_secret_broker_requests_total", []string{"outcome", "success", "reason", "ok"}},
			{"piggy_secret_broker_requests_total", []string{"outcome", "failure", "reason", "policy_denied"}},
			{"piggy_secret_broker_aws_calls_total", []string{"operation", "GetSecretValue", "status", "ok"}},
			{"piggy_secret_broker_aws_calls_total", []string{"operation", "GetSecretValue", "status", "InternalServiceError"}},
			{"piggy_secret_broker_aws_calls_total", []string{"operation", "GetParametersByPath", "status", "ok"}},
			{"piggy_secret_broker_cache_hits_total", []string{"cache", "secrets"}},
			{"piggy_secret_broker_cache_misses_total", []string{"cache", "token_reviews"}},
			{"piggy_secret_broker_tokenreview_duration_seconds_count", []string{"result", "authenticated"}},
			{"piggy_secret_broker_tokenreview_duration_seconds_count", []string{"result", "rejected"}},
			{"piggy_secret_broker_request_duration_seconds_count", nil},
			{"piggy_secret_broker_pod_lookups_total", nil},
		} {
			if metric(m, c.name, c.labels...) == 0 {
				t.Errorf("metric %s%v is missing or zero", c.name, c.labels)
			}
		}
	})

	t.Run("no secret value in this broker's logs", func(t *testing.T) {
		out := w.proc.Output()
		allLogs.mu.Lock()
		values := slices.Clone(allLogs.values)
		allLogs.mu.Unlock()
		for _, v := range append(values, dbA, apiA, grantValue, ssmValue) {
			if strings.Contains(out, v) {
				t.Errorf("secret value %q appears in the broker's logs", v)
			}
		}
		if !strings.Contains(out, "was successful") {
			t.Error("the broker logged no request line; the check would prove nothing")
		}
	})
}

// TestAllowUnboundTokens checks the migration switch: with
// --allow-unbound-tokens a token that is not bound to a pod is accepted,
// the pod being found by its container UID among the pods of the token's
// service account, with a warning; without a matching pod it is refused.
func TestAllowUnboundTokens(t *testing.T) {
	w := newWorld(t, worldOptions{args: []string{"--allow-unbound-tokens"}})
	ns := w.namespace("team-u-", "web", "api")
	value := secretValue("unbound")
	w.seed(ns+"/web", map[string]string{"db": value})
	pod, ctr := w.piggyPod(ns, "legacy", "web", nil)
	st, err := kubetest.RequestToken(t.Context(), w.cs, ns, "web", kubetest.TokenOptions{Audiences: []string{audience}})
	if err != nil {
		t.Fatal(err)
	}
	if got := w.getSecrets(t, st.Token, ctr, "db"); got.Status != http.StatusOK || got.Values["db"] != value {
		t.Errorf("unbound token with the pod's container identity: %+v", got)
	}
	w.proc.WaitForRecord(t, 5*time.Second, func(r map[string]any) bool {
		return r["level"] == "warn" && strings.Contains(fmt.Sprint(r["message"]), "not bound to a pod") && r["namespace"] == ns
	})
	w.proc.WaitForRecord(t, 5*time.Second, func(r map[string]any) bool {
		return r["message"] == "Request from [sa="+ns+":web], [pod="+pod.Name+"] was successful"
	})
	// Another service account's unbound token cannot borrow the pod.
	other, err := kubetest.RequestToken(t.Context(), w.cs, ns, "api", kubetest.TokenOptions{Audiences: []string{audience}})
	if err != nil {
		t.Fatal(err)
	}
	if got := w.getSecrets(t, other.Token, ctr, "db"); got.Status != http.StatusForbidden {
		t.Errorf("unbound token of another service account: %+v", got)
	}
	// Bound tokens keep working, and still must match their own pod.
	if got := w.getSecrets(t, w.podToken(pod), ctr, "db"); got.Status != http.StatusOK {
		t.Errorf("bound token: %+v", got)
	}
}
