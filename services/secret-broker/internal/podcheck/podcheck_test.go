package podcheck

import (
	"context"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/piggysec/piggy/libs/podgrant"
	"github.com/piggysec/piggy/libs/podidentity"
	"github.com/piggysec/piggy/libs/podsettings"
	"github.com/piggysec/piggy/services/secret-broker/internal/authn"
	"github.com/piggysec/piggy/services/secret-broker/internal/fault"
)

// fakePods is a PodSource over a fixed list.
type fakePods []*corev1.Pod

func (f fakePods) Pod(_ context.Context, ns, name, _ string) (*corev1.Pod, error) {
	for _, p := range f {
		if p.Namespace == ns && p.Name == name {
			return p, nil
		}
	}
	return nil, fault.New(fault.PermissionDenied, "pod_not_found", "no pod")
}

func (f fakePods) PodsWithContainerUID(_ context.Context, ns, uid string) ([]*corev1.Pod, error) {
	var out []*corev1.Pod
	for _, p := range f {
		ids, _ := podidentity.Parse(p.Annotations[podidentity.AnnotationKey])
		if _, ok, _ := ids.Match(uid, ""); ok && p.Namespace == ns {
			out = append(out, p)
		}
	}
	return out, nil
}

const (
	uidApp = "0123456789abcdef0123456789abcdef"
	uidJob = "fedcba9876543210fedcba9876543210"
)

var sigApp = podidentity.Signature([]string{"/app", "serve"})

// pod is a pod as the admission-gateway leaves it with defaults: its
// containers "app" (command /app serve) and "job" (no command) start
// through piggy-env with their PIGGY_UID and a grant of the settings the
// annotations name.
func pod(name, uid, sa string, annotations map[string]string) *corev1.Pod {
	return podWith(podsettings.Defaults{}, name, uid, sa, annotations)
}

// podWith is pod admitted with defaults.
func podWith(defaults podsettings.Defaults, name, uid, sa string, annotations map[string]string) *corev1.Pod {
	p := plainPod(name, uid, sa, annotations)
	s := podsettings.Read(annotations, defaults).Settings
	account := sa
	if account == "" {
		account = "default"
	}
	grant := podgrant.New(s.GrantSource("team-a", account), s.EnforceIntegrity, s.EnforceServiceAccount, []string{"db"}).Format()
	launched := func(name, uid string, args ...string) corev1.Container {
		return corev1.Container{Name: name, Command: []string{"/piggy/piggy-env"}, Args: append([]string{"--"}, args...),
			Env: []corev1.EnvVar{{Name: "DB", Value: "piggy:db"}, {Name: "PIGGY_UID", Value: uid}, {Name: podgrant.EnvName, Value: grant}}}
	}
	p.Spec.Containers = []corev1.Container{launched("app", uidApp, "/app", "serve"), launched("job", uidJob)}
	return p
}

// plainPod is a pod without containers Piggy launched.
func plainPod(name, uid, sa string, annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: name, UID: types.UID(uid), Annotations: annotations},
		Spec:       corev1.PodSpec{ServiceAccountName: sa, Containers: []corev1.Container{{Name: "app", Command: []string{"/app", "serve"}}}},
	}
}

func identities() map[string]string {
	return map[string]string{podidentity.AnnotationKey: podidentity.Identities{
		"app": {UID: uidApp, Signature: sigApp},
		"job": {UID: uidJob, Signature: ""},
	}.Format()}
}

// withGrant sets the PIGGY_GRANT of every container ("": none).
func withGrant(p *corev1.Pod, grant string) *corev1.Pod {
	for i := range p.Spec.Containers {
		c := &p.Spec.Containers[i]
		c.Env = slices.DeleteFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == podgrant.EnvName })
		if grant != "" {
			c.Env = append(c.Env, corev1.EnvVar{Name: podgrant.EnvName, Value: grant})
		}
	}
	return p
}

// changed sets an annotation after admission.
func changed(p *corev1.Pod, name, value string) *corev1.Pod {
	if p.Annotations == nil {
		p.Annotations = map[string]string{}
	}
	p.Annotations[podsettings.Prefix+name] = value
	return p
}

func with(m map[string]string, kv ...string) map[string]string {
	for i := 0; i < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func TestCheck(t *testing.T) {
	integrityOff := podsettings.LoadDefaults(func(k string) string { return map[string]string{"PIGGY_ENFORCE_INTEGRITY": "false"}[k] }, nil)
	bound := authn.Identity{Namespace: "team-a", ServiceAccount: "web", PodName: "web-1", PodUID: "pod-uid-1"}
	tests := []struct {
		name       string
		pods       fakePods
		defaults   podsettings.Defaults
		id         authn.Identity
		ctr        Container
		wantReason string
		wantName   string
	}{
		{name: "match", pods: fakePods{pod("web-1", "pod-uid-1", "web", identities())}, id: bound, ctr: Container{uidApp, sigApp}, wantName: "app"},
		{name: "pod gone", pods: nil, id: bound, ctr: Container{uidApp, sigApp}, wantReason: "pod_not_found"},
		{name: "pod recreated under the same name", pods: fakePods{pod("web-1", "pod-uid-2", "web", identities())}, id: bound, ctr: Container{uidApp, sigApp}, wantReason: "pod_mismatch"},
		{name: "other service account", pods: fakePods{pod("web-1", "pod-uid-1", "api", identities())}, id: bound, ctr: Container{uidApp, sigApp}, wantReason: "pod_mismatch"},
		{name: "default service account", pods: fakePods{pod("web-1", "pod-uid-1", "", identities())}, id: authn.Identity{Namespace: "team-a", ServiceAccount: "default", PodName: "web-1", PodUID: "pod-uid-1"}, ctr: Container{uidApp, sigApp}, wantName: "app"},
		{name: "wrong uid", pods: fakePods{pod("web-1", "pod-uid-1", "web", identities())}, id: bound, ctr: Container{"00000000000000000000000000000000", sigApp}, wantReason: "container_uid_mismatch"},
		{name: "empty uid", pods: fakePods{pod("web-1", "pod-uid-1", "web", identities())}, id: bound, ctr: Container{"", sigApp}, wantReason: "container_uid_mismatch"},
		{name: "wrong signature", pods: fakePods{pod("web-1", "pod-uid-1", "web", identities())}, id: bound, ctr: Container{uidApp, podidentity.Signature([]string{"/bin/sh"})}, wantReason: "signature_mismatch"},
		{name: "empty signature", pods: fakePods{pod("web-1", "pod-uid-1", "web", identities())}, id: bound, ctr: Container{uidApp, ""}, wantReason: "signature_mismatch"},
		{name: "empty signature on both sides", pods: fakePods{pod("web-1", "pod-uid-1", "web", identities())}, id: bound, ctr: Container{uidJob, ""}, wantReason: "signature_mismatch"},
		{name: "no container Piggy launched", pods: fakePods{plainPod("web-1", "pod-uid-1", "web", identities())}, id: bound, ctr: Container{uidApp, sigApp}, wantReason: "container_uid_mismatch"},
		{name: "annotation changed: the spec decides", pods: fakePods{pod("web-1", "pod-uid-1", "web", map[string]string{podidentity.AnnotationKey: "{"})}, id: bound, ctr: Container{uidApp, sigApp}, wantName: "app"},
		{name: "unreadable grant", pods: fakePods{withGrant(pod("web-1", "pod-uid-1", "web", nil), "{")}, id: bound, ctr: Container{uidApp, sigApp}, wantReason: "grant_missing"},
		{name: "no grant (admitted by an older gateway)", pods: fakePods{withGrant(pod("web-1", "pod-uid-1", "web", nil), "")}, id: bound, ctr: Container{uidApp, sigApp}, wantReason: "grant_missing"},
		{
			name: "secret name changed after admission", pods: fakePods{changed(pod("web-1", "pod-uid-1", "web", nil), podsettings.AWSSecretName, "team-b/db")},
			id: bound, ctr: Container{uidApp, sigApp}, wantReason: "pod_settings_changed",
		},
		{
			name: "enforce-service-account turned off after admission", pods: fakePods{changed(pod("web-1", "pod-uid-1", "web", with(identities(), podsettings.Prefix+podsettings.EnforceServiceAccount, "true")), podsettings.EnforceServiceAccount, "false")},
			id: bound, ctr: Container{uidApp, sigApp}, wantReason: "pod_settings_changed",
		},
		{
			name: "integrity off by annotation where the operator allows it", pods: fakePods{podWith(integrityOff, "web-1", "pod-uid-1", "web", with(identities(), podsettings.Prefix+podsettings.EnforceIntegrity, "false"))},
			defaults: integrityOff, id: bound, ctr: Container{uidApp, "whatever"}, wantName: "app",
		},
		{
			name: "integrity off by annotation stays on (tighten-only)", pods: fakePods{pod("web-1", "pod-uid-1", "web", with(identities(), podsettings.Prefix+podsettings.EnforceIntegrity, "false"))},
			id: bound, ctr: Container{uidApp, "whatever"}, wantReason: "signature_mismatch",
		},
		{
			name: "integrity locked on by the operator", pods: fakePods{pod("web-1", "pod-uid-1", "web", with(identities(), podsettings.Prefix+podsettings.EnforceIntegrity, "false"))},
			defaults: podsettings.LoadDefaults(func(string) string { return "" }, []string{podsettings.EnforceIntegrity}),
			id:       bound, ctr: Container{uidApp, "whatever"}, wantReason: "signature_mismatch",
		},
		{
			name: "unparsable integrity annotation stays on", pods: fakePods{pod("web-1", "pod-uid-1", "web", with(identities(), podsettings.Prefix+podsettings.EnforceIntegrity, "nope"))},
			id: bound, ctr: Container{uidApp, "whatever"}, wantReason: "signature_mismatch",
		},
		{
			name: "bad settings", pods: fakePods{pod("web-1", "pod-uid-1", "web", with(identities(), podsettings.Prefix+podsettings.AWSSSMParameterPath, "no-slash"))},
			id: bound, ctr: Container{uidApp, sigApp}, wantReason: "pod_settings",
		},
		{
			name: "unbound token finds the pod by container uid", pods: fakePods{pod("web-1", "pod-uid-1", "web", identities()), pod("other", "pod-uid-9", "api", nil)},
			id: authn.Identity{Namespace: "team-a", ServiceAccount: "web"}, ctr: Container{uidApp, sigApp}, wantName: "app",
		},
		{
			name: "unbound token of another service account", pods: fakePods{pod("web-1", "pod-uid-1", "web", identities())},
			id: authn.Identity{Namespace: "team-a", ServiceAccount: "api"}, ctr: Container{uidApp, sigApp}, wantReason: "pod_not_found",
		},
		{
			name: "unbound token without container uid", pods: fakePods{pod("web-1", "pod-uid-1", "web", identities())},
			id: authn.Identity{Namespace: "team-a", ServiceAccount: "web"}, ctr: Container{"", sigApp}, wantReason: "pod_not_found",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(tt.pods, tt.defaults)
			res, err := c.Check(t.Context(), tt.id, tt.ctr)
			if tt.wantReason != "" {
				if fault.ReasonOf(err) != tt.wantReason || err == nil {
					t.Fatalf("err = %v (reason %q), want reason %q", err, fault.ReasonOf(err), tt.wantReason)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.ContainerName != tt.wantName {
				t.Errorf("container = %q, want %q", res.ContainerName, tt.wantName)
			}
		})
	}
}

func TestSettingsFromAnnotationsAndDefaults(t *testing.T) {
	env := map[string]string{"AWS_REGION": "eu-west-3", "PIGGY_ENFORCE_SERVICE_ACCOUNT": "true"}
	defaults := podsettings.LoadDefaults(func(k string) string { return env[k] }, nil)
	p := podWith(defaults, "web-1", "pod-uid-1", "web", with(identities(),
		podsettings.Prefix+podsettings.AWSSecretName, "team-a/db",
		podsettings.Prefix+podsettings.AWSSecretVersion, "AWSPREVIOUS"))
	res, err := New(fakePods{p}, defaults).Check(t.Context(), authn.Identity{Namespace: "team-a", ServiceAccount: "web", PodName: "web-1", PodUID: "pod-uid-1"}, Container{uidApp, sigApp})
	if err != nil {
		t.Fatal(err)
	}
	s := res.Settings
	if s.SecretName != "team-a/db" || s.SecretVersion != "AWSPREVIOUS" || s.Region != "eu-west-3" || !s.EnforceServiceAccount || !s.EnforceIntegrity {
		t.Errorf("settings = %+v", s)
	}
}

// BenchmarkCheck is the per-request cost of verifying a caller against a
// pod already in hand (informer cache).
func BenchmarkCheck(b *testing.B) {
	ann := with(identities(), "piggysec.com/aws-secret-name", "team-a/web", "piggysec.com/aws-region", "eu-west-1")
	p := pod("web-1", "pod-uid-1", "web", ann)
	p.ResourceVersion = "7"
	c := New(fakePods{p}, podsettings.Defaults{})
	id := authn.Identity{Namespace: "team-a", ServiceAccount: "web", PodName: "web-1", PodUID: "pod-uid-1"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Check(b.Context(), id, Container{uidApp, sigApp}); err != nil {
			b.Fatal(err)
		}
	}
}

func TestANewVersionOfThePodIsReadAgain(t *testing.T) {
	id := authn.Identity{Namespace: "team-a", ServiceAccount: "web", PodName: "web-1", PodUID: "pod-uid-1"}
	v1 := pod("web-1", "pod-uid-1", "web", identities())
	v1.ResourceVersion = "10"
	pods := fakePods{v1}
	c := New(&pods, podsettings.Defaults{})
	for range 2 { // parsed, then from the cache
		if _, err := c.Check(t.Context(), id, Container{uidApp, sigApp}); err != nil {
			t.Fatalf("version 10: %v", err)
		}
	}
	// The same pod, updated: the app container now runs another command.
	other := podidentity.Signature([]string{"/app", "migrate"})
	v2 := pod("web-1", "pod-uid-1", "web", identities())
	v2.Spec.Containers[0].Args = []string{"--", "/app", "migrate"}
	v2.ResourceVersion = "11"
	pods[0] = v2
	if _, err := c.Check(t.Context(), id, Container{uidApp, sigApp}); fault.As(err).Reason != "signature_mismatch" {
		t.Errorf("old signature against version 11 = %v, want signature_mismatch", err)
	}
	if _, err := c.Check(t.Context(), id, Container{uidApp, other}); err != nil {
		t.Errorf("new signature against version 11: %v", err)
	}
}

// TestTheBrokersRegionIsTheDefault: a pod admitted without a region by a
// gateway that has no default region is the broker's default region, and
// one patched to another region afterwards is refused.
func TestTheBrokersRegionIsTheDefault(t *testing.T) {
	defaults := podsettings.LoadDefaults(func(k string) string { return map[string]string{"AWS_REGION": "us-east-1"}[k] }, nil)
	id := authn.Identity{Namespace: "team-a", ServiceAccount: "web", PodName: "web-1", PodUID: "pod-uid-1"}
	p := pod("web-1", "pod-uid-1", "web", identities())
	if _, err := New(fakePods{p}, defaults).Check(t.Context(), id, Container{uidApp, sigApp}); err != nil {
		t.Fatal(err)
	}
	changed(p, podsettings.AWSRegion, "eu-west-1")
	if _, err := New(fakePods{p}, defaults).Check(t.Context(), id, Container{uidApp, sigApp}); fault.ReasonOf(err) != "pod_settings_changed" {
		t.Errorf("region patched after admission: %v, want pod_settings_changed", err)
	}
}
