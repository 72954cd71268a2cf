package mutate

import (
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
)

func TestMarshalMatchesEncodingJSON(t *testing.T) {
	ops := []Op{
		{Op: "add", Path: "/metadata/annotations/piggysec.com~1piggy-uid", Value: `{"a":"b\"<>&"}`},
		{Op: "add", Path: "/spec/volumes", Value: []json.RawMessage{json.RawMessage(`{"name":"v"}`), json.RawMessage(`{"name":"w"}`)}},
		{Op: "add", Path: "/spec/initContainers/0", Value: json.RawMessage(`{"name":"install"}`)},
		{Op: "add", Path: "/spec/containers/0/args", Value: []string{"--", "sh", "-c", "echo \u2028 ünï \x01"}},
		{Op: "add", Path: "/metadata/annotations/odd\x01~0key", Value: "v"},
		{Op: "add", Path: "/spec/containers/0/env", Value: []corev1.EnvVar{{Name: "A", Value: "piggy:\"x\""}, {Name: "B"}, {Name: "C", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}}},
		{Op: "add", Path: "/spec/containers/0/env/-", Value: corev1.EnvVar{Name: "D", Value: "d"}},
		{Op: "add", Path: "/spec/containers/0/volumeMounts", Value: []corev1.VolumeMount{{Name: "piggy-env", MountPath: "/piggy", ReadOnly: true}, {Name: "sub", MountPath: "/s", SubPath: "x"}}},
		{Op: "add", Path: "/spec/containers/0/volumeMounts/-", Value: corev1.VolumeMount{Name: "t", MountPath: "/t"}},
	}
	got, err := Marshal(ops)
	if err != nil {
		t.Fatal(err)
	}
	var gotDoc, wantDoc any
	want, err := json.Marshal(ops)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(got, &gotDoc); err != nil {
		t.Fatalf("Marshal produced invalid JSON: %v: %s", err, got)
	}
	if err := json.Unmarshal(want, &wantDoc); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(wantDoc, gotDoc); diff != "" {
		t.Errorf("Marshal differs from encoding/json (-want +got):\n%s", diff)
	}
}
