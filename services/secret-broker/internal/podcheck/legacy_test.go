package podcheck

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"

	"github.com/piggysec/piggy/libs/podgrant"
	"github.com/piggysec/piggy/libs/podidentity"
	"github.com/piggysec/piggy/libs/podsettings"
	"github.com/piggysec/piggy/services/secret-broker/internal/authn"
	"github.com/piggysec/piggy/services/secret-broker/internal/fault"
)

// originalPod is a pod as the original webhook left it: container "app"
// (command /app serve) launched through piggy-env with PIGGY_UID uidApp,
// the original's PIGGY_* env and literal references to db and token, the
// annotation {uid: signature}, and no PIGGY_GRANT.
func originalPod(name, uid, sa string, annotations map[string]string) *corev1.Pod {
	p := plainPod(name, uid, sa, annotations)
	if p.Annotations == nil {
		p.Annotations = map[string]string{}
	}
	if _, ok := p.Annotations[podidentity.AnnotationKey]; !ok {
		b, _ := json.Marshal(map[string]string{uidApp: sigApp})
		p.Annotations[podidentity.AnnotationKey] = string(b)
	}
	p.Spec.Containers = []corev1.Container{{
		Name: "app", Command: []string{"/piggy/piggy-env"}, Args: []string{"--", "/app", "serve"},
		Env: []corev1.EnvVar{
			{Name: "DB_PASSWORD", Value: "piggy:db"},
			{Name: "TOKEN", Value: "piggy:token"},
			{Name: "PLAIN", Value: "not-a-reference"},
			{Name: "FROM_CM", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{Key: "k"}}},
			{Name: "PIGGY_AWS_SECRET_NAME", Value: "team-a/web"},
			{Name: "PIGGY_AWS_REGION", Value: ""},
			{Name: "PIGGY_AWS_SSM_PARAMETER_PATH", Value: ""},
			{Name: "PIGGY_ADDRESS", Value: "https://piggy-webhooks.piggy-webhooks.svc.cluster.local"},
			{Name: "PIGGY_POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
			{Name: "PIGGY_UID", Value: uidApp},
		},
	}}
	return p
}

func TestParseOriginalUIDs(t *testing.T) {
	ids, err := ParseOriginalUIDs(`{"` + uidApp + `":"` + sigApp + `","` + uidJob + `":""}`)
	if err != nil {
		t.Fatal(err)
	}
	if !ids.Match(uidApp, sigApp) {
		t.Error("the original's own entry does not match")
	}
	for _, c := range []struct{ uid, sig string }{
		{uidApp, podidentity.Signature([]string{"/bin/sh"})}, // another command
		{uidJob, sigApp},       // another container's signature
		{uidJob, ""},           // empty on both sides
		{"", sigApp}, {"", ""}, // no UID
		{uidApp[:8], sigApp[:8]}, // prefixes
	} {
		if ids.Match(c.uid, c.sig) {
			t.Errorf("Match(%q, %q) = true", c.uid, c.sig)
		}
	}
	// This Piggy's own format, junk and nothing are not the original's.
	ours := podidentity.Identities{"app": {UID: uidApp, Signature: sigApp}}.Format()
	for _, v := range []string{ours, "{", `["a"]`, `{"a":1}`, "", "  ", "null"} {
		if _, err := ParseOriginalUIDs(v); err == nil {
			t.Errorf("ParseOriginalUIDs(%q) succeeded", v)
		}
	}
}

func TestLiteralReferences(t *testing.T) {
	c := &corev1.Container{Env: []corev1.EnvVar{
		{Name: "A", Value: "piggy:a"},
		{Name: "B", Value: "piggy:b"},
		{Name: "B", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}, // the last B counts
		{Name: "C", Value: "x"},
		{Name: "C", Value: "piggy:c"},
		{Name: "D", Value: "piggy:a"},
		{Name: "E", Value: "piggy:"},
		{Name: "F", Value: "prefix piggy:f"},
		{Name: "PIGGY_X", Value: "piggy:x"},          // a reserved name
		{Name: "G", Value: "piggy:PIGGY_ALLOWED_SA"}, // a reserved key
	}}
	if diff := cmp.Diff([]string{"a", "c"}, LiteralReferences(c)); diff != "" {
		t.Errorf("references (-want +got):\n%s", diff)
	}
}

func TestCheckLegacy(t *testing.T) {
	bound := authn.Identity{Namespace: "team-a", ServiceAccount: "web", PodName: "web-1", PodUID: "pod-uid-1"}
	app := Container{uidApp, sigApp}
	edit := func(p *corev1.Pod, f func(*corev1.Pod)) *corev1.Pod { f(p); return p }
	setEnv := func(name, value string) func(*corev1.Pod) {
		return func(p *corev1.Pod) {
			c := &p.Spec.Containers[0]
			for i := range c.Env {
				if c.Env[i].Name == name {
					c.Env[i].Value = value
					return
				}
			}
			c.Env = append(c.Env, corev1.EnvVar{Name: name, Value: value})
		}
	}
	otherSig := podidentity.Signature([]string{"/bin/sh", "-c", "env"})
	tests := []struct {
		name       string
		pod        *corev1.Pod
		id         authn.Identity
		ctr        Container
		wantReason string
	}{
		{name: "match", pod: originalPod("web-1", "pod-uid-1", "web", nil), id: bound, ctr: app},
		{name: "unbound token", pod: originalPod("web-1", "pod-uid-1", "web", nil), id: authn.Identity{Namespace: "team-a", ServiceAccount: "web"}, ctr: app, wantReason: "token_unbound"},
		{name: "token of an earlier pod of the name", pod: originalPod("web-1", "pod-uid-2", "web", nil), id: bound, ctr: app, wantReason: "pod_mismatch"},
		{name: "other service account", pod: originalPod("web-1", "pod-uid-1", "api", nil), id: bound, ctr: app, wantReason: "pod_mismatch"},
		{name: "wrong uid", pod: originalPod("web-1", "pod-uid-1", "web", nil), id: bound, ctr: Container{uidJob, sigApp}, wantReason: "container_uid_mismatch"},
		{name: "wrong signature", pod: originalPod("web-1", "pod-uid-1", "web", nil), id: bound, ctr: Container{uidApp, otherSig}, wantReason: "signature_mismatch"},
		{name: "empty signature", pod: originalPod("web-1", "pod-uid-1", "web", nil), id: bound, ctr: Container{uidApp, ""}, wantReason: "signature_mismatch"},
		// The annotation must agree with the spec, too.
		{name: "annotation gives another signature", pod: originalPod("web-1", "pod-uid-1", "web", map[string]string{podidentity.AnnotationKey: `{"` + uidApp + `":"` + otherSig + `"}`}), id: bound, ctr: app, wantReason: "signature_mismatch"},
		{name: "annotation of this Piggy's format", pod: originalPod("web-1", "pod-uid-1", "web", identities()), id: bound, ctr: app, wantReason: "not_original_pod"},
		{name: "no annotation", pod: edit(originalPod("web-1", "pod-uid-1", "web", nil), func(p *corev1.Pod) { delete(p.Annotations, podidentity.AnnotationKey) }), id: bound, ctr: app, wantReason: "not_original_pod"},
		{name: "container this Piggy admitted", pod: edit(originalPod("web-1", "pod-uid-1", "web", nil), setEnv(podgrant.EnvName, podgrant.New(podgrant.Source{Kind: podgrant.SecretsManager, Name: "team-a/web"}, true, false, []string{"db"}).Format())), id: bound, ctr: app, wantReason: "not_original_pod"},
		{name: "secret name changed after admission", pod: originalPod("web-1", "pod-uid-1", "web", map[string]string{podsettings.Prefix + podsettings.AWSSecretName: "team-a/other"}), id: bound, ctr: app, wantReason: "pod_settings_changed"},
		{name: "region changed after admission", pod: edit(originalPod("web-1", "pod-uid-1", "web", map[string]string{podsettings.Prefix + podsettings.AWSRegion: "eu-west-1"}), setEnv("PIGGY_AWS_REGION", "eu-west-3")), id: bound, ctr: app, wantReason: "pod_settings_changed"},
		{name: "SSM path added after admission", pod: originalPod("web-1", "pod-uid-1", "web", map[string]string{podsettings.Prefix + podsettings.AWSSSMParameterPath: "/team-a/app"}), id: bound, ctr: app, wantReason: "pod_settings_changed"},
		{name: "no literal reference", pod: edit(originalPod("web-1", "pod-uid-1", "web", nil), func(p *corev1.Pod) {
			p.Spec.Containers[0].Env = slices.DeleteFunc(p.Spec.Containers[0].Env, func(e corev1.EnvVar) bool { return e.Name == "DB_PASSWORD" || e.Name == "TOKEN" })
		}), id: bound, ctr: app, wantReason: "key_not_granted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(fakePods{tt.pod}, podsettings.Defaults{})
			got, err := c.CheckLegacy(t.Context(), tt.id, tt.ctr)
			if tt.wantReason != "" {
				if fault.ReasonOf(err) != tt.wantReason {
					t.Fatalf("err = %v (%s), want %s", err, fault.ReasonOf(err), tt.wantReason)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := podgrant.New(podgrant.Source{Kind: podgrant.SecretsManager, Name: "team-a/web"}, true, false, []string{"db", "token"})
			if diff := cmp.Diff(want, got.Grant); diff != "" || got.ContainerName != "app" {
				t.Errorf("container %q, grant (-want +got):\n%s", got.ContainerName, diff)
			}
		})
	}
}

// TestCachedOriginalPods: the pod cache keeps what CheckLegacy reads of
// a container the original webhook launched, and CheckLegacy gives the
// trimmed pod the grant the full one gets.
func TestCachedOriginalPods(t *testing.T) {
	full := originalPod("web-1", "pod-uid-1", "web", nil)
	full.Spec.Containers[0].Env = append(full.Spec.Containers[0].Env,
		corev1.EnvVar{Name: "TOKEN", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}})
	obj, err := trimPod(full)
	if err != nil {
		t.Fatal(err)
	}
	trimmed := obj.(*corev1.Pod)
	var names []string
	for _, e := range trimmed.Spec.Containers[0].Env {
		names = append(names, e.Name)
	}
	if diff := cmp.Diff([]string{"DB_PASSWORD", "TOKEN", "PIGGY_AWS_SECRET_NAME", "PIGGY_AWS_REGION", "PIGGY_AWS_SSM_PARAMETER_PATH", "PIGGY_UID", "TOKEN"}, names); diff != "" {
		t.Errorf("kept env (-want +got):\n%s", diff)
	}
	id := authn.Identity{Namespace: "team-a", ServiceAccount: "web", PodName: "web-1", PodUID: "pod-uid-1"}
	for _, p := range []*corev1.Pod{full, trimmed} {
		got, err := New(fakePods{p}, podsettings.Defaults{}).CheckLegacy(t.Context(), id, Container{uidApp, sigApp})
		if err != nil {
			t.Fatal(err)
		}
		// TOKEN's last definition is not a literal: only db.
		if diff := cmp.Diff([]string{"db"}, got.Grant.Keys); diff != "" {
			t.Errorf("keys (-want +got):\n%s", diff)
		}
	}
}
