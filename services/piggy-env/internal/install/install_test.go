package install

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func certPEM(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func TestInstall(t *testing.T) {
	self := filepath.Join(t.TempDir(), "self")
	if err := os.WriteFile(self, []byte("\x7fELF binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	ca := certPEM(t)
	tests := []struct {
		name      string
		caBundle  string
		wantFiles map[string]fs.FileMode
	}{
		{name: "binary only", wantFiles: map[string]fs.FileMode{BinaryName: BinaryMode}},
		{name: "with CA", caBundle: ca, wantFiles: map[string]fs.FileMode{BinaryName: BinaryMode, CAName: CAMode}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			// Installing twice replaces the read-only files (rename over them).
			for range 2 {
				if err := Install(dir, self, tt.caBundle); err != nil {
					t.Fatalf("Install: %v", err)
				}
			}
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]fs.FileMode{}
			for _, e := range entries {
				info, err := e.Info()
				if err != nil {
					t.Fatal(err)
				}
				got[e.Name()] = info.Mode().Perm()
			}
			if diff := cmp.Diff(tt.wantFiles, got); diff != "" {
				t.Errorf("files mismatch (-want +got), no temp files may remain:\n%s", diff)
			}
			bin, _ := os.ReadFile(filepath.Join(dir, BinaryName))
			if diff := cmp.Diff("\x7fELF binary", string(bin)); diff != "" {
				t.Errorf("binary content mismatch (-want +got):\n%s", diff)
			}
			if tt.caBundle != "" {
				data, _ := os.ReadFile(filepath.Join(dir, CAName))
				if diff := cmp.Diff(tt.caBundle, string(data)); diff != "" {
					t.Errorf("CA content mismatch (-want +got):\n%s", diff)
				}
			}
		})
	}
}

func TestInstallErrors(t *testing.T) {
	self := filepath.Join(t.TempDir(), "self")
	os.WriteFile(self, []byte("bin"), 0o755)
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)
	badCert := "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
	tests := []struct {
		name, dir, self, ca, want string
	}{
		{name: "missing dir", dir: filepath.Join(t.TempDir(), "absent"), self: self, want: "no such file"},
		{name: "dir is a file", dir: file, self: self, want: "is not a directory"},
		{name: "missing self", dir: t.TempDir(), self: filepath.Join(t.TempDir(), "absent"), want: "open own executable"},
		{name: "CA not PEM", dir: t.TempDir(), self: self, ca: "hello", want: "PIGGY_CA_BUNDLE: no PEM certificate found"},
		{name: "CA key only", dir: t.TempDir(), self: self, ca: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", want: "no PEM certificate found"},
		{name: "CA does not parse", dir: t.TempDir(), self: self, ca: badCert, want: "certificate 1 does not parse"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Install(tt.dir, tt.self, tt.ca)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Install error = %v, want %q", err, tt.want)
			}
			if tt.ca != "" {
				// A bad CA bundle is caught before anything is written.
				if entries, _ := os.ReadDir(tt.dir); len(entries) != 0 {
					t.Errorf("Install left %d files after failing", len(entries))
				}
			}
		})
	}
}
