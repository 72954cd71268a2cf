package tlsreload_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/piggysec/piggy/libs/testca"
	"github.com/piggysec/piggy/libs/tlsreload"
)

// pki writes a CA, a server pair and a client pair into a temp dir.
func pki(t *testing.T, dir string) (server, client tlsreload.Files) {
	t.Helper()
	ca, err := testca.New("test CA")
	if err != nil {
		t.Fatal(err)
	}
	server, err = ca.WriteFiles(dir, "server", testca.Request{CommonName: "server", Hosts: testca.LoopbackHosts, Usage: testca.Server})
	if err != nil {
		t.Fatal(err)
	}
	client, err = ca.WriteFiles(dir, "client", testca.Request{CommonName: "client", Usage: testca.Client})
	if err != nil {
		t.Fatal(err)
	}
	return server, client
}

func load(t *testing.T, f tlsreload.Files) *tlsreload.Source {
	t.Helper()
	s, err := tlsreload.Load(f)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// handshake runs one TLS handshake over a real loopback connection and
// returns the client's and the server's errors.
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config) (clientErr, serverErr error) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", serverCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		err = c.(*tls.Conn).Handshake()
		if err == nil {
			// Read until the client closes so TLS 1.3 client-cert
			// failures surface on the client too.
			_, _ = io.Copy(io.Discard, c)
		}
		done <- err
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), clientCfg)
	if err == nil {
		// With TLS 1.3 the server's verdict on the client certificate
		// arrives after the client handshake completes.
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		_, rerr := c.Read(make([]byte, 1))
		if rerr != nil && !errors.Is(rerr, io.EOF) && !isTimeout(rerr) {
			err = rerr
		}
		c.Close()
	}
	return err, <-done
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	serverFiles, clientFiles := pki(t, dir)
	otherServer, otherClient := pki(t, filepath.Join(dir, "other"))
	server := load(t, serverFiles)
	client := load(t, clientFiles)

	tests := []struct {
		name       string
		serverCfg  *tls.Config
		clientCfg  *tls.Config
		wantClient string
		wantServer string
	}{
		{name: "mTLS ok", serverCfg: server.ServerConfig(true), clientCfg: client.ClientConfig("127.0.0.1")},
		{name: "server TLS only, client without cert", serverCfg: server.ServerConfig(false), clientCfg: load(t, tlsreload.Files{CAFile: clientFiles.CAFile}).ClientConfig("localhost")},
		{
			name:       "client without certificate refused",
			serverCfg:  server.ServerConfig(true),
			clientCfg:  load(t, tlsreload.Files{CAFile: clientFiles.CAFile}).ClientConfig("127.0.0.1"),
			wantServer: "certificate",
			wantClient: "certificate required",
		},
		{
			name:       "client certificate from another CA refused",
			serverCfg:  server.ServerConfig(true),
			clientCfg:  load(t, tlsreload.Files{CertFile: otherClient.CertFile, KeyFile: otherClient.KeyFile, CAFile: clientFiles.CAFile}).ClientConfig("127.0.0.1"),
			wantServer: "unknown authority",
			wantClient: "bad certificate",
		},
		{
			name:       "server from another CA refused",
			serverCfg:  load(t, otherServer).ServerConfig(false),
			clientCfg:  client.ClientConfig("127.0.0.1"),
			wantClient: "unknown authority",
			wantServer: "bad certificate",
		},
		{
			name:       "wrong server name refused",
			serverCfg:  server.ServerConfig(false),
			clientCfg:  client.ClientConfig("broker.example"),
			wantClient: "broker.example",
			wantServer: "bad certificate",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cerr, serr := handshake(t, tt.serverCfg, tt.clientCfg)
			check(t, "client", cerr, tt.wantClient)
			check(t, "server", serr, tt.wantServer)
		})
	}
}

func check(t *testing.T, side string, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Errorf("%s: unexpected error: %v", side, err)
	case want != "" && err == nil:
		t.Errorf("%s: no error, want one containing %q", side, want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Errorf("%s: error %q does not contain %q", side, err, want)
	}
}

func TestReloadPicksUpRotation(t *testing.T) {
	dir := t.TempDir()
	serverFiles, clientFiles := pki(t, dir)
	server := load(t, serverFiles)
	before := server.Certificate().Leaf

	// Rotate everything: a new CA, server and client certificate.
	pki(t, dir)
	changed, err := server.Reload()
	if err != nil || !changed {
		t.Fatalf("Reload() = %v, %v; want true, nil", changed, err)
	}
	if server.Certificate().Leaf.SerialNumber.Cmp(before.SerialNumber) == 0 {
		t.Fatal("certificate did not change after rotation")
	}
	if changed, err := server.Reload(); err != nil || changed {
		t.Fatalf("second Reload() = %v, %v; want false, nil", changed, err)
	}
	// The new client (signed by the new CA) is accepted by the running config.
	cerr, serr := handshake(t, server.ServerConfig(true), load(t, clientFiles).ClientConfig("localhost"))
	check(t, "client", cerr, "")
	check(t, "server", serr, "")
}

func TestRunKeepsOldMaterialOnBrokenFiles(t *testing.T) {
	dir := t.TempDir()
	serverFiles, _ := pki(t, dir)
	server := load(t, serverFiles)
	serial := server.Certificate().Leaf.SerialNumber

	if err := os.WriteFile(serverFiles.KeyFile, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := server.Run(ctx, 10*time.Millisecond, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("Run() = %v", err)
	}
	if server.Certificate().Leaf.SerialNumber.Cmp(serial) != 0 {
		t.Error("broken files replaced the working certificate")
	}
}

func TestLoadErrorsNameTheFile(t *testing.T) {
	dir := t.TempDir()
	serverFiles, _ := pki(t, dir)
	missing := filepath.Join(dir, "missing.crt")
	tests := []struct {
		name  string
		files tlsreload.Files
		want  string
	}{
		{"missing cert", tlsreload.Files{CertFile: missing, KeyFile: serverFiles.KeyFile}, missing},
		{"cert without key", tlsreload.Files{CertFile: serverFiles.CertFile}, "set together"},
		{"nothing", tlsreload.Files{}, "no certificate"},
		{"CA not PEM", tlsreload.Files{CAFile: serverFiles.KeyFile}, serverFiles.KeyFile},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tlsreload.Load(tt.files)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Load() error = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}
