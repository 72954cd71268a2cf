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
		"PIGGY_RETRIES":                    "2",
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
	if s.Region != "us-east-2" || s.Address != "https://broker:8443" || s.Retries != 2 || s.InitialDelay != 2*time.Second {
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
		{Retries, "-1", "not a non-negative number of retries", ""},
		{NumberOfRetry, "-1", "not a non-negative number of attempts", ""},
		{NumberOfRetry, "three", "not a non-negative number of attempts", ""},
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

// The original Piggy's piggy-number-of-retry counts attempts (its piggy-env
// tried "for i := 0; i < numberOfRetry; i++", default 1, and its webhook
// passed values above 0 only); piggy-retries counts retries after the first.
func TestRetries(t *testing.T) {
	defaults := func(env map[string]string, locked ...string) Defaults {
		return LoadDefaults(func(k string) string { return env[k] }, locked)
	}
	tests := []struct {
		name        string
		defaults    Defaults
		annotations map[string]string
		want        int
		wantWarning string
	}{
		{name: "unset: one attempt", want: 0},
		{name: "old name counts attempts", annotations: map[string]string{Prefix + NumberOfRetry: "3"}, want: 2},
		{name: "old name 1 is one attempt", annotations: map[string]string{Prefix + NumberOfRetry: "1"}, want: 0},
		{name: "old name 0 is one attempt", annotations: map[string]string{Prefix + NumberOfRetry: "0"}, want: 0},
		{name: "old name negative", annotations: map[string]string{Prefix + NumberOfRetry: "-4"}, want: 0, wantWarning: `"-4" is not a non-negative number of attempts`},
		{name: "old name junk", annotations: map[string]string{Prefix + NumberOfRetry: "3x"}, want: 0, wantWarning: "use piggysec.com/piggy-retries"},
		{name: "old name overflow", annotations: map[string]string{Prefix + NumberOfRetry: "99999999999999999999"}, want: 0, wantWarning: "not a non-negative number of attempts"},
		{name: "old name trimmed", annotations: map[string]string{Prefix + NumberOfRetry: " 5 "}, want: 4},
		{name: "new name counts retries", annotations: map[string]string{Prefix + Retries: "3"}, want: 3},
		{name: "new name 0", annotations: map[string]string{Prefix + Retries: "0"}, want: 0},
		{name: "new name junk", annotations: map[string]string{Prefix + Retries: "many"}, want: 0, wantWarning: `"many" is not a non-negative number of retries`},
		{
			name:        "both on the pod: the new name wins",
			annotations: map[string]string{Prefix + Retries: "1", Prefix + NumberOfRetry: "5"},
			want:        1, wantWarning: "piggy-number-of-retry: ignored: piggysec.com/piggy-retries is set too",
		},
		{name: "cluster default with the old name", defaults: defaults(map[string]string{"PIGGY_NUMBER_OF_RETRY": "4"}), want: 3},
		{name: "cluster default with the new name", defaults: defaults(map[string]string{"PIGGY_RETRIES": "4"}), want: 4},
		{
			name:        "a pod's old name beats a default with the new name",
			defaults:    defaults(map[string]string{"PIGGY_RETRIES": "4"}),
			annotations: map[string]string{Prefix + NumberOfRetry: "2"}, want: 1,
		},
		{
			name:        "a pod's new name beats a default with the old name",
			defaults:    defaults(map[string]string{"PIGGY_NUMBER_OF_RETRY": "4"}),
			annotations: map[string]string{Prefix + Retries: "0"}, want: 0,
		},
		{
			name:        "locking the old name locks the new one",
			defaults:    defaults(map[string]string{"PIGGY_NUMBER_OF_RETRY": "2"}, NumberOfRetry),
			annotations: map[string]string{Prefix + Retries: "9"}, want: 1, wantWarning: "piggy-retries: set by the cluster operator",
		},
		{
			name:        "locking the new name locks the old one",
			defaults:    defaults(map[string]string{"PIGGY_RETRIES": "2"}, Retries),
			annotations: map[string]string{Prefix + NumberOfRetry: "9"}, want: 2, wantWarning: "piggy-number-of-retry: set by the cluster operator",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := Read(tt.annotations, tt.defaults)
			if res.Settings.Retries != tt.want {
				t.Errorf("Retries = %d, want %d", res.Settings.Retries, tt.want)
			}
			warnings := strings.Join(res.Warnings, "\n")
			if tt.wantWarning == "" && warnings != "" {
				t.Errorf("unexpected warnings %q", warnings)
			}
			if !strings.Contains(warnings, tt.wantWarning) {
				t.Errorf("warnings %q lack %q", warnings, tt.wantWarning)
			}
			if res.Denied != "" {
				t.Errorf("denied: %s", res.Denied)
			}
		})
	}
}

func TestOriginalSettingsNotReadAreWarned(t *testing.T) {
	res := Read(map[string]string{Prefix + "piggy-skip-verify-tls": "true"}, Defaults{})
	want := "piggy: annotation piggysec.com/piggy-skip-verify-tls: a setting of the original Piggy that is not read here; ignored: piggy-env always verifies the broker's certificate"
	if len(res.Warnings) != 1 || !strings.HasPrefix(res.Warnings[0], want) {
		t.Errorf("warnings = %q, want one starting %q", res.Warnings, want)
	}
	if res.Denied != "" {
		t.Errorf("denied: %s", res.Denied)
	}
}
