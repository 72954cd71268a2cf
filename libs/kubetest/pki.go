package kubetest

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"time"

	"github.com/piggysec/piggy/libs/testca"
)

// pki is the key material of one cluster, PEM encoded.
type pki struct {
	caCert      []byte // CA that signed servingCert
	servingCert []byte // kube-apiserver serving certificate
	servingKey  []byte
	saKey       []byte // RSA key signing service account tokens
	saPub       []byte // its public key, verifying them
}

// newPKI generates a CA, a serving certificate for 127.0.0.1, ::1, localhost
// and the in-cluster names of the kubernetes Service, and an RSA service
// account signing key.
func newPKI() (*pki, error) {
	ca, err := testca.New("kubetest-ca")
	if err != nil {
		return nil, err
	}
	serving, err := ca.Issue(testca.Request{
		CommonName: "kube-apiserver",
		Hosts: []string{
			"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local", "127.0.0.1", "::1", "10.96.0.1",
		},
		Usage:    testca.Server,
		Validity: 7 * 24 * time.Hour,
	})
	if err != nil {
		return nil, err
	}

	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("generate service account key: %w", err)
	}
	saPubDER, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	return &pki{
		caCert:      ca.CertPEM,
		servingCert: serving.CertPEM,
		servingKey:  serving.KeyPEM,
		saKey:       pemBlock("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey)),
		saPub:       pemBlock("PUBLIC KEY", saPubDER),
	}, nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
