package podsettings

import (
	"strings"
	"testing"
	"time"
)

func TestReadDefaultsAndOverrides(t *testing.T) {
	env := map[string]string{
		"AWS_REGION":                       "eu-west-1",
		"PIGGY_ADDRESS":                    "https://broker:8443",
		"PIGGY_NUMBER_OF_RETRY":            "2",
		"PIGGY_DEFAULT_SECRET_NAME_PREFIX": "prod/",
		"PIGGY_ENFORCE_INTEGRITY":          "false",
	}
	d := LoadDefaults(func(k string) string { return env[k] }, []string{"piggysec.com/piggy-default-secret-name-prefix", " "})
	res := Read(map[string]string{
		Prefix + AWSRegion:               "us-east-2",
		Prefix + DefaultSecretNamePrefix: "mine/",
		Prefix + InitialDelay:            "2s",
		"unrelated/annotation":           "x",
	}, d)
	s := res.Settings
	if s.Region != "us-east-2" || s.Address != "https://broker:8443" || s.NumberOfRetry != 2 || s.InitialDelay != 2*time.Second {
		t.Errorf("settings = %+v", s)
	}
	if s.SecretNamePrefix != "prod/" {
		t.Errorf("locked prefix overridden: %q", s.SecretNamePrefix)
	}
	if s.EnforceIntegrity {
		t.Error("cluster default enforce-integrity=false not applied")
	}
	if got := s.DefaultSecretName("team", "api"); got != "prod/team/api" {
		t.Errorf("DefaultSecretName = %q", got)
	}
	if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "set by the cluster operator") {
		t.Errorf("warnings = %q", res.Warnings)
	}
	if !s.Configured() {
		t.Error("Configured() = false with a default address")
	}
}

func TestReadBadValues(t *testing.T) {
	tests := []struct {
		annotation, value string
		wantWarning       string
		wantDenied        string
	}{
		{PSPAllowPrivilegeEscalation, "sure", `"sure" is not a boolean`, ""},
		{EnforceIntegrity, "flase", `"flase" is not a boolean (true or false); using true`, ""},
		{Standalone, "maybe", "", `"maybe" is not a boolean`},
		{InitialDelay, "soon", "not a non-negative duration", ""},
		{InitialDelay, "-1s", "not a non-negative duration", ""},
		{NumberOfRetry, "-1", "not a non-negative number", ""},
		{PiggyEnvResourceCPULimit, "lots", "not a resource quantity", ""},
		{PiggyEnvImagePullPolicy, "Sometimes", "using IfNotPresent", ""},
		{DNSResolver, "carrier-pigeon", "not a Go resolver network", ""},
		{AWSSSMParameterPath, "relative/path", "", "must start with /"},
	}
	for _, tt := range tests {
		t.Run(tt.annotation+"="+tt.value, func(t *testing.T) {
			res := Read(map[string]string{Prefix + tt.annotation: tt.value}, Defaults{})
			warnings := strings.Join(res.Warnings, "\n")
			if tt.wantWarning != "" && !strings.Contains(warnings, tt.wantWarning) {
				t.Errorf("warnings %q lack %q", warnings, tt.wantWarning)
			}
			if tt.wantDenied != "" && !strings.Contains(res.Denied, tt.wantDenied) {
				t.Errorf("denied %q lacks %q", res.Denied, tt.wantDenied)
			}
			if tt.wantDenied == "" && res.Denied != "" {
				t.Errorf("unexpected denial %q", res.Denied)
			}
		})
	}
	if s := Read(map[string]string{Prefix + EnforceIntegrity: "flase"}, Defaults{}).Settings; !s.EnforceIntegrity {
		t.Error("an unparsable enforce-integrity weakened security")
	}
}

func TestEnvName(t *testing.T) {
	for annotation, want := range map[string]string{
		AWSRegion:     "AWS_REGION",
		PiggyAddress:  "PIGGY_ADDRESS",
		PiggyEnvImage: "PIGGY_ENV_IMAGE",
		Debug:         "DEBUG",
	} {
		if got := EnvName(annotation); got != want {
			t.Errorf("EnvName(%q) = %q, want %q", annotation, got, want)
		}
	}
}

func TestKey(t *testing.T) {
	for _, n := range append(Names, "not-a-setting") {
		if got := Key(n); got != Prefix+n {
			t.Errorf("Key(%q) = %q", n, got)
		}
	}
}

func TestSecuritySettingsAreTightenOnly(t *testing.T) {
	off := LoadDefaults(func(k string) string {
		return map[string]string{"PIGGY_ENFORCE_INTEGRITY": "false"}[k]
	}, nil)
	on := LoadDefaults(func(k string) string {
		return map[string]string{"PIGGY_ENFORCE_SERVICE_ACCOUNT": "true"}[k]
	}, nil)
	tests := []struct {
		name        string
		defaults    Defaults
		annotations map[string]string
		integrity   bool
		sa          bool
		warned      bool
	}{
		{"built-in integrity on: a pod's false is ignored", Defaults{}, map[string]string{Prefix + EnforceIntegrity: "false"}, true, false, true},
		{"operator turned integrity off: a pod may too", off, map[string]string{Prefix + EnforceIntegrity: "false"}, false, false, false},
		{"operator turned integrity off: a pod may turn it on", off, map[string]string{Prefix + EnforceIntegrity: "true"}, true, false, false},
		{"operator has service accounts on: a pod's false is ignored", on, map[string]string{Prefix + EnforceServiceAccount: "false"}, true, true, true},
		{"service accounts off by default: a pod may turn it on", Defaults{}, map[string]string{Prefix + EnforceServiceAccount: "true"}, true, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := Read(tt.annotations, tt.defaults)
			if res.Settings.EnforceIntegrity != tt.integrity || res.Settings.EnforceServiceAccount != tt.sa {
				t.Errorf("integrity %t, service account %t; want %t, %t", res.Settings.EnforceIntegrity, res.Settings.EnforceServiceAccount, tt.integrity, tt.sa)
			}
			warned := strings.Contains(strings.Join(res.Warnings, "\n"), "never off")
			if warned != tt.warned {
				t.Errorf("warnings %q, want a tighten-only warning: %t", res.Warnings, tt.warned)
			}
		})
	}
}
