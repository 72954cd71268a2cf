// Package install implements "piggy-env install <dir>": the init container
// copies the piggy-env executable, and optionally the broker's CA bundle,
// into the shared volume the application container mounts.
//
// Files are written to a temporary name in the target directory, synced,
// given their final mode and renamed, so a reader never sees a partial file.
package install

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// File names written into the target directory.
const (
	BinaryName = "piggy-env"
	CAName     = "ca.crt"
)

// Modes of the written files.
const (
	BinaryMode fs.FileMode = 0o555
	CAMode     fs.FileMode = 0o444
)

// Install copies the executable at self to dir/piggy-env and, when caBundle
// is not empty, writes it to dir/ca.crt after checking that it holds at least
// one parseable certificate. dir must exist.
func Install(dir, self, caBundle string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("install directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("install directory %s is not a directory", dir)
	}
	if caBundle != "" {
		if err := CheckCABundle([]byte(caBundle)); err != nil {
			return fmt.Errorf("PIGGY_CA_BUNDLE: %w", err)
		}
	}
	src, err := os.Open(self)
	if err != nil {
		return fmt.Errorf("open own executable: %w", err)
	}
	defer src.Close()
	if err := writeAtomic(filepath.Join(dir, BinaryName), src, BinaryMode); err != nil {
		return err
	}
	if caBundle != "" {
		if err := writeAtomic(filepath.Join(dir, CAName), strings.NewReader(caBundle), CAMode); err != nil {
			return err
		}
	}
	return nil
}

// CheckCABundle reports an error unless pemData holds at least one PEM
// CERTIFICATE block and every such block parses.
func CheckCABundle(pemData []byte) error {
	n := 0
	for rest := pemData; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return fmt.Errorf("certificate %d does not parse: %w", n+1, err)
		}
		n++
	}
	if n == 0 {
		return errors.New("no PEM certificate found")
	}
	return nil
}

func writeAtomic(dst string, r io.Reader, mode fs.FileMode) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".*.tmp")
	if err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err = io.Copy(tmp, r); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err = tmp.Chmod(mode); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err = os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	return nil
}
