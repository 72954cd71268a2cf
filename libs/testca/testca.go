// Package testca is a small certificate authority for tests and the local
// development stack. It issues ECDSA P-256 server and client certificates
// and writes them as PEM files. It is not meant for production PKI.
package testca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/piggysec/piggy/libs/tlsreload"
)

// CA is a self-signed certificate authority held in memory.
type CA struct {
	// Cert is the CA certificate.
	Cert *x509.Certificate
	// CertPEM is Cert in PEM form.
	CertPEM []byte
	key     *ecdsa.PrivateKey
}

// Pair is an issued certificate and its private key in PEM form.
type Pair struct {
	// CertPEM is the leaf certificate.
	CertPEM []byte
	// KeyPEM is the PKCS #8 private key.
	KeyPEM []byte
}

// Usage selects the extended key usages of an issued certificate.
type Usage int

// Usages of issued certificates.
const (
	// Server certificates authenticate a TLS server.
	Server Usage = 1 << iota
	// Client certificates authenticate a TLS client (mTLS).
	Client
)

// Request describes a certificate to issue.
type Request struct {
	// CommonName of the subject.
	CommonName string
	// Hosts are DNS names or IP addresses put in the subject alternative
	// names. Server certificates for loopback should list "localhost",
	// "127.0.0.1" and "::1".
	Hosts []string
	// Usage is Server, Client or both.
	Usage Usage
	// Validity defaults to 24 hours; NotBefore is one minute in the past.
	Validity time.Duration
}

// New creates a CA valid for ten years named commonName.
func New(commonName string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"Piggy test CA"}},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	return &CA{Cert: cert, CertPEM: encode("CERTIFICATE", der), key: key}, nil
}

// Issue signs a new certificate.
func (ca *CA) Issue(req Request) (*Pair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	validity := req.Validity
	if validity == 0 {
		validity = 24 * time.Hour
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: req.CommonName},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	if req.Usage&Server != 0 {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if req.Usage&Client != 0 {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	for _, h := range req.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("create certificate for %q: %w", req.CommonName, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal key: %w", err)
	}
	return &Pair{CertPEM: encode("CERTIFICATE", der), KeyPEM: encode("PRIVATE KEY", keyDER)}, nil
}

// WriteFiles issues a certificate for req and writes <name>.crt, <name>.key
// and ca.crt into dir (created if needed). It returns the file names.
func (ca *CA) WriteFiles(dir, name string, req Request) (tlsreload.Files, error) {
	pair, err := ca.Issue(req)
	if err != nil {
		return tlsreload.Files{}, err
	}
	files := tlsreload.Files{
		CertFile: filepath.Join(dir, name+".crt"),
		KeyFile:  filepath.Join(dir, name+".key"),
		CAFile:   filepath.Join(dir, "ca.crt"),
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return tlsreload.Files{}, err
	}
	for path, data := range map[string][]byte{
		files.CertFile: pair.CertPEM,
		files.KeyFile:  pair.KeyPEM,
		files.CAFile:   ca.CertPEM,
	} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return tlsreload.Files{}, err
		}
	}
	return files, nil
}

// LoopbackHosts are the subject alternative names of a server on loopback.
var LoopbackHosts = []string{"localhost", "127.0.0.1", "::1"}

// serial returns a random 127-bit serial number. crypto/rand.Reader does not
// fail on supported platforms (Go 1.24+ crashes instead), so the error of
// rand.Int is impossible here.
func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

func encode(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
