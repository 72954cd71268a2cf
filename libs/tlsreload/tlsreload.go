// Package tlsreload serves TLS and mTLS configurations whose certificate, key
// and CA bundle are read from files and re-read when those files change, so
// that rotated certificates (cert-manager, Kubernetes secret volumes) take
// effect without a restart.
//
// The configurations never capture material at construction: certificates
// are chosen per handshake (GetCertificate, GetClientCertificate) and peers
// are verified per handshake against the current CA pool (VerifyConnection),
// which keeps ALPN and the other settings the servers add untouched.
package tlsreload

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"
)

// Files names the PEM files of one TLS identity. CertFile and KeyFile go
// together; CAFile is the bundle used to verify peers.
type Files struct {
	// CertFile is the PEM certificate chain presented to peers.
	CertFile string
	// KeyFile is the PEM private key of CertFile.
	KeyFile string
	// CAFile is the PEM bundle of CAs trusted to sign peer certificates.
	CAFile string
}

// Source holds the current TLS material of Files.
type Source struct {
	files   Files
	current atomic.Pointer[material]
}

type material struct {
	cert   *tls.Certificate
	pool   *x509.CertPool
	digest [sha256.Size]byte
}

// Load reads files and returns a Source. It fails when a named file cannot
// be read or parsed; the error names the file. A Files with only CAFile set
// is valid (a client that verifies servers without presenting a certificate).
func Load(files Files) (*Source, error) {
	if (files.CertFile == "") != (files.KeyFile == "") {
		return nil, errors.New("tls: certificate and key files must be set together")
	}
	if files.CertFile == "" && files.CAFile == "" {
		return nil, errors.New("tls: no certificate, key or CA file set")
	}
	s := &Source{files: files}
	if _, err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// Reload re-reads the files. It reports whether the material changed. On
// error the previous material stays in use.
func (s *Source) Reload() (bool, error) {
	m, err := read(s.files)
	if err != nil {
		return false, err
	}
	old := s.current.Load()
	if old != nil && old.digest == m.digest {
		return false, nil
	}
	s.current.Store(m)
	return true, nil
}

// Run re-reads the files every interval until ctx ends. Failed reloads are
// logged and retried; the last good material keeps serving. It returns nil
// when ctx ends.
func (s *Source) Run(ctx context.Context, interval time.Duration, log *slog.Logger) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			changed, err := s.Reload()
			switch {
			case err != nil:
				log.WarnContext(ctx, "TLS reload failed; keeping the current certificates", "error", err)
			case changed:
				log.InfoContext(ctx, "TLS certificates reloaded", "cert_file", s.files.CertFile, "ca_file", s.files.CAFile)
			}
		}
	}
}

// Certificate returns the current certificate, or nil when none is configured.
func (s *Source) Certificate() *tls.Certificate { return s.current.Load().cert }

// ServerConfig returns a server configuration presenting the current
// certificate. With requireClientCert, clients must present a certificate
// signed by a CA of the current CA bundle (mTLS).
func (s *Source) ServerConfig(requireClientCert bool) *tls.Config {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			if c := s.current.Load().cert; c != nil {
				return c, nil
			}
			return nil, errors.New("tlsreload: no server certificate configured")
		},
	}
	if requireClientCert {
		cfg.ClientAuth = tls.RequireAnyClientCert
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			return s.verify(cs.PeerCertificates, "", x509.ExtKeyUsageClientAuth)
		}
	}
	return cfg
}

// ServerConfigFor returns a server configuration presenting the current
// certificate to clients that must present a certificate signed by a CA
// of clients' current bundle (a Source with only a CA file, reloaded
// separately), and pass accept when it is set.
func (s *Source) ServerConfigFor(clients *Source, accept func(*x509.Certificate) error) *tls.Config {
	cfg := s.ServerConfig(false)
	cfg.ClientAuth = tls.RequireAnyClientCert
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if err := clients.verify(cs.PeerCertificates, "", x509.ExtKeyUsageClientAuth); err != nil {
			return err
		}
		if accept != nil {
			return accept(cs.PeerCertificates[0])
		}
		return nil
	}
	return cfg
}

// ClientConfig returns a client configuration that verifies the server
// against the current CA bundle for serverName (a DNS name or an IP address)
// and presents the current certificate when one is configured.
func (s *Source) ClientConfig(serverName string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: serverName,
		// Verification happens in VerifyConnection against the pool that is
		// current at handshake time; the static RootCAs field would freeze it.
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			return s.verify(cs.PeerCertificates, serverName, x509.ExtKeyUsageServerAuth)
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if c := s.current.Load().cert; c != nil {
				return c, nil
			}
			return &tls.Certificate{}, nil
		},
	}
}

func (s *Source) verify(chain []*x509.Certificate, name string, usage x509.ExtKeyUsage) error {
	if len(chain) == 0 {
		return errors.New("tlsreload: peer presented no certificate")
	}
	pool := s.current.Load().pool
	if pool == nil {
		return errors.New("tlsreload: no CA bundle configured to verify the peer")
	}
	opts := x509.VerifyOptions{
		Roots:         pool,
		Intermediates: x509.NewCertPool(),
		DNSName:       name,
		KeyUsages:     []x509.ExtKeyUsage{usage},
	}
	for _, c := range chain[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := chain[0].Verify(opts); err != nil {
		return fmt.Errorf("tlsreload: verify peer certificate: %w", err)
	}
	return nil
}

func read(files Files) (*material, error) {
	h := sha256.New()
	m := &material{}
	if files.CertFile != "" {
		certPEM, err := os.ReadFile(files.CertFile)
		if err != nil {
			return nil, fmt.Errorf("tls: read certificate file: %w", err)
		}
		keyPEM, err := os.ReadFile(files.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls: read key file: %w", err)
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("tls: load key pair %s and %s: %w", files.CertFile, files.KeyFile, err)
		}
		m.cert = &cert
		h.Write(certPEM)
		h.Write(keyPEM)
	}
	if files.CAFile != "" {
		caPEM, err := os.ReadFile(files.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls: read CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, fmt.Errorf("tls: CA file %s holds no PEM certificate", files.CAFile)
		}
		m.pool = pool
		h.Write([]byte{0})
		h.Write(bytes.TrimSpace(caPEM))
	}
	copy(m.digest[:], h.Sum(nil))
	return m, nil
}
