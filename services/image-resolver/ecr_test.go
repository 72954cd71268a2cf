package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/piggysec/piggy/services/image-resolver/internal/config"
)

// isolateAWS makes the AWS configuration ignore the machine's setup; a
// non-empty profile names one that does not exist, so loading fails.
func isolateAWS(t *testing.T, profile string) {
	t.Helper()
	for _, e := range os.Environ() {
		if k, _, _ := strings.Cut(e, "="); strings.HasPrefix(k, "AWS_") {
			t.Setenv(k, "") // restores the value after the test
			os.Unsetenv(k)
		}
	}
	dir := t.TempDir()
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	if profile != "" {
		t.Setenv("AWS_PROFILE", profile)
	}
}

func TestNewECRKeychain(t *testing.T) {
	tests := []struct {
		name, mode, profile string
		wantKeychain        bool
		wantErr             bool
	}{
		{name: "off: not used", mode: config.ECROff},
		{name: "auto: on when the configuration loads", mode: config.ECRAuto, wantKeychain: true},
		{name: "auto: off when it does not load", mode: config.ECRAuto, profile: "missing"},
		{name: "on", mode: config.ECROn, wantKeychain: true},
		{name: "on: fails when it does not load", mode: config.ECROn, profile: "missing", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			isolateAWS(t, tt.profile)
			cfg := config.Config{ECR: tt.mode, RegistryTimeout: time.Second, NegativeTTL: time.Second}
			kc, err := newECRKeychain(t.Context(), cfg, slog.New(slog.DiscardHandler))
			if (err != nil) != tt.wantErr {
				t.Fatalf("newECRKeychain() error = %v, want error %v", err, tt.wantErr)
			}
			if (kc != nil) != tt.wantKeychain {
				t.Errorf("keychain = %v, want one: %v", kc, tt.wantKeychain)
			}
		})
	}
}
