package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/piggysec/piggy/libs/buildinfo"
	"github.com/piggysec/piggy/libs/podidentity"
	"github.com/piggysec/piggy/services/piggy-env/internal/broker"
	"github.com/piggysec/piggy/services/piggy-env/internal/config"
	"github.com/piggysec/piggy/services/piggy-env/internal/dial"
	"github.com/piggysec/piggy/services/piggy-env/internal/install"
	"github.com/piggysec/piggy/services/piggy-env/internal/jsonlog"
	"github.com/piggysec/piggy/services/piggy-env/internal/launch"
	"github.com/piggysec/piggy/services/piggy-env/internal/refs"
	"github.com/piggysec/piggy/services/piggy-env/internal/retry"
	"github.com/piggysec/piggy/services/piggy-env/internal/standalone"
)

// run is piggy-env. It returns only on failure or after --help: on success
// the process has become the command.
func run(ctx context.Context, args, environ []string) error {
	return (&app{stdout: os.Stdout, stderr: os.Stderr, exec: syscall.Exec, executable: os.Executable}).run(ctx, args, environ)
}

// app holds what run takes from the process, so tests can run it in-process
// without replacing the test binary.
type app struct {
	stdout, stderr io.Writer
	exec           launch.ExecFunc
	executable     func() (string, error)
}

const usage = `Usage:
  piggy-env [flags] -- command [args...]
  piggy-env install <dir>
  piggy-env --version

piggy-env replaces every environment variable whose value is exactly
"piggy:KEY" with the value of KEY, removes all PIGGY_* variables, and execs
the command in its own place (same PID; signals and exit code belong to the
command). The command is looked up in the PATH of the command's environment.
Without any piggy:KEY reference the command is started at once, with no
network call.

"install <dir>" copies this executable to <dir>/piggy-env (mode 0555) and,
when PIGGY_CA_BUNDLE is set, writes that PEM bundle to <dir>/ca.crt (0444).

Flags:
  --debug            same as PIGGY_DEBUG=true
  --ignore-no-env    same as PIGGY_IGNORE_NO_ENV=true
  -h, --help         show this help

Environment (set by the Piggy admission webhook):
  PIGGY_ADDRESS                 secret broker base URL (proxy mode)
  PIGGY_UID                     container UID sent to the broker
  PIGGY_TOKEN_FILE              service-account token, read on every attempt
                                (default /var/run/secrets/piggysec.com/serviceaccount/token)
  PIGGY_CA_FILE                 PEM CA that verifies the broker when the file exists,
                                else the system roots (default /piggy/ca.crt)
  PIGGY_SKIP_VERIFY_TLS         do not verify the broker's certificate (default false)
  PIGGY_STANDALONE              call AWS directly with the pod's role (default false)
  PIGGY_AWS_SECRET_NAME         standalone: Secrets Manager secret id
  PIGGY_AWS_SSM_PARAMETER_PATH  standalone: read SSM parameters under this path instead
                                (key = last path element)
  PIGGY_AWS_REGION              standalone: region (default AWS_REGION, AWS_DEFAULT_REGION)
  PIGGY_AWS_SECRET_VERSION      standalone: version stage or version id (default AWSCURRENT)
  PIGGY_IGNORE_NO_ENV           start the command even when values could not be fetched;
                                unresolved variables are left out of its environment
  PIGGY_DEBUG                   debug logs (never secret values)
  PIGGY_DNS_RESOLVER            resolve names with the Go resolver over this network
                                (tcp, udp, tcp4, ...)
  PIGGY_INITIAL_DELAY           wait before the first request, e.g. 2s (default 0)
  PIGGY_RETRIES                 retries after the first attempt (default 0); an overloaded
                                broker's 429 with Retry-After is retried after that wait
                                (at most 10s each) within PIGGY_TIMEOUT in any case
  PIGGY_NUMBER_OF_RETRY         the original Piggy's setting, with its meaning: attempts,
                                the first included (3 means 2 retries; 0 and 1 mean none);
                                PIGGY_RETRIES wins when both are set
  PIGGY_REQUEST_TIMEOUT         timeout of each attempt (default 10s)
  PIGGY_TIMEOUT                 overall timeout of all attempts and the waits between
                                them, counted after the initial delay (default 60s)
  PIGGY_CA_BUNDLE               install only: PEM CA bundle to write to <dir>/ca.crt
  PIGGY_TERMINATION_MESSAGE_PATH  where the final error is written for kubectl
                                describe pod (default /dev/termination-log, when the
                                kubelet has mounted it)
Standalone mode also reads AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE,
AWS_ROLE_SESSION_NAME, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_CA_BUNDLE and AWS_ENDPOINT_URL[_STS|_SECRETS_MANAGER|_SSM].
Durations are Go durations (500ms, 2s, 1m); booleans are true or false.
Values that do not parse are errors.
`

// usageError is a command line mistake; its message ends with a hint.
type usageError struct{ msg string }

// Error implements error.
func (e *usageError) Error() string { return e.msg + " (see piggy-env --help)" }

// ExitCode is 2, the usual exit code for command line mistakes.
func (e *usageError) ExitCode() int { return 2 }

func (a *app) run(ctx context.Context, args, environ []string) error {
	if buildinfo.Requested(args) {
		_, err := fmt.Fprintln(a.stdout, "piggy-env", buildinfo.Read(version))
		return err
	}
	if len(args) > 0 && args[0] == "install" {
		return a.install(args[1:], environ)
	}
	fs := flag.NewFlagSet("piggy-env", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	debug := fs.Bool("debug", false, "")
	ignoreNoEnv := fs.Bool("ignore-no-env", false, "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			_, err := io.WriteString(a.stdout, usage)
			return err
		}
		return &usageError{msg: err.Error()}
	}
	command := fs.Args()
	if len(command) == 0 {
		return &usageError{msg: "no command given: use piggy-env [flags] -- command [args...]"}
	}

	cfg, err := config.Load(config.Lookup(environ))
	if err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}
	cfg.Debug = cfg.Debug || *debug
	cfg.IgnoreNoEnv = cfg.IgnoreNoEnv || *ignoreNoEnv
	log := jsonlog.New(a.stderr, cfg.Debug)

	references := refs.Find(environ)
	var (
		values map[string]string
		source string
	)
	if len(references) == 0 {
		log.DebugContext(ctx, "No piggy: references; starting the command", "command", command[0])
	} else if keys := refs.Keys(references); len(keys) > 0 {
		values, source, err = a.fetch(ctx, log, cfg, command, keys)
		if err != nil {
			if !cfg.IgnoreNoEnv || ctx.Err() != nil {
				return err
			}
			log.WarnContext(ctx, err.Error()+" (ignored: ignore-no-env is set)")
		}
	}

	res := refs.Resolve(environ, values)
	if len(res.Unresolved) > 0 {
		msg := "no value for " + describe(res.Unresolved)
		if source != "" {
			msg += " in " + source
		}
		if !cfg.IgnoreNoEnv {
			return errors.New(msg)
		}
		log.WarnContext(ctx, msg+"; starting the command without these variables (ignore-no-env is set)")
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("interrupted before starting the command: %w", context.Cause(ctx))
	}
	return launch.Exec(command, res.Env, a.exec)
}

// describe names unresolved references: DB_PASSWORD (key "db-password").
func describe(unresolved []refs.Ref) string {
	parts := make([]string, len(unresolved))
	reserved := false
	for i, r := range unresolved {
		parts[i] = fmt.Sprintf("%s (key %q)", r.Name, r.Key)
		reserved = reserved || strings.HasPrefix(r.Key, refs.Reserved)
	}
	s := strings.Join(parts, ", ")
	if reserved {
		s += " [" + refs.Reserved + "* keys are never given to applications]"
	}
	return s
}

// fetch gets the values of keys from the broker or AWS, with the initial
// delay, retries and timeouts of cfg.
// It also returns a description of the source for messages.
func (a *app) fetch(ctx context.Context, log *slog.Logger, cfg config.Config, command, keys []string) (_ map[string]string, source string, _ error) {
	if err := cfg.Validate(); err != nil {
		return nil, source, fmt.Errorf("cannot request secrets: %w", err)
	}
	dialer := dial.NewDialer(cfg.RequestTimeout, cfg.DNSResolver)

	var (
		attempt   func(ctx context.Context) error
		retryable func(error) bool
		values    map[string]string
	)
	if cfg.Standalone {
		f, err := standalone.New(cfg.AWS, dialer, cfg.RequestTimeout)
		if err != nil {
			return nil, source, fmt.Errorf("standalone mode: %w", err)
		}
		src := standalone.Source{SecretName: cfg.AWS.SecretName, SSMParameterPath: cfg.AWS.SSMParameterPath}
		source = fmt.Sprintf("AWS %s in %s", src, cfg.AWS.Region)
		retryable = standalone.Retryable
		attempt = func(ctx context.Context) (err error) {
			values, err = f.Fetch(ctx, keys)
			return err
		}
		log.DebugContext(ctx, "Requesting secrets", "mode", "standalone", "aws", cfg.AWS, "keys", keys)
	} else {
		p := cfg.Proxy
		source = p.Address.String()
		httpClient, usedCA, err := broker.NewHTTPClient(dialer, broker.TLSOptions{CAFile: p.CAFile, CAFileVar: caFileVar(p), SkipVerify: p.SkipVerifyTLS}, cfg.RequestTimeout)
		if err != nil {
			return nil, source, fmt.Errorf("cannot request secrets from %s: %w", source, err)
		}
		client, err := broker.New(broker.Options{Address: p.Address, TokenFile: p.TokenFile, HTTPClient: httpClient})
		if err != nil {
			return nil, source, fmt.Errorf("cannot request secrets from %s: %w", source, err)
		}
		if p.Address.Scheme != "https" {
			log.WarnContext(ctx, "The broker address is not https: the service-account token is sent in clear text", "address", source)
		}
		// One fetch id for every attempt of this process's request.
		req := broker.Request{ContainerUID: p.UID, Signature: podidentity.Signature(command), Keys: keys, FetchID: newFetchID()}
		retryable = broker.Retryable
		attempt = func(ctx context.Context) error {
			resp, err := client.GetSecrets(ctx, req)
			values = resp.Values
			if err == nil && resp.SourceName != "" {
				source = fmt.Sprintf("%s (%s)", source, resp.SourceName)
			}
			return err
		}
		log.DebugContext(ctx, "Requesting secrets", "mode", "proxy", "address", source, "uid_set", p.UID != "",
			"ca_file_used", usedCA, "skip_verify_tls", p.SkipVerifyTLS, "keys", keys)
	}

	if cfg.InitialDelay > 0 {
		log.DebugContext(ctx, "Waiting before the first request", "initial_delay", cfg.InitialDelay.String())
		t := time.NewTimer(cfg.InitialDelay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, source, fmt.Errorf("interrupted during the initial delay: %w", context.Cause(ctx))
		case <-t.C:
		}
	}

	fctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	policy := retry.Policy{
		Retries:        cfg.Retries,
		AttemptTimeout: cfg.RequestTimeout,
		Backoff:        retry.Backoff{Base: retry.DefaultBase, Cap: retry.DefaultCap},
		Retryable:      retryable,
		OnRetry: func(n int, err error, wait time.Duration) {
			log.DebugContext(ctx, "Request failed; retrying", "attempt", n, "error", err.Error(), "wait", wait.String())
		},
	}
	attempts, err := policy.Do(fctx, attempt)
	switch {
	case err == nil:
		log.InfoContext(ctx, "Request secrets was successful", "source", source, "keys", len(keys), "attempts", attempts)
		if values == nil {
			values = map[string]string{}
		}
		return values, source, nil
	case ctx.Err() != nil:
		return nil, source, fmt.Errorf("interrupted while requesting secrets from %s after %s: %w", source, plural(attempts, "attempt"), err)
	case fctx.Err() != nil:
		return nil, source, fmt.Errorf("request secrets from %s: gave up after %s when the overall timeout of %s (%s) passed: %w",
			source, plural(attempts, "attempt"), cfg.Timeout, config.EnvTimeout, err)
	case retryable(err) && attempts > 1:
		return nil, source, fmt.Errorf("request secrets from %s failed after %s (%s): %w",
			source, plural(attempts, "attempt"), cfg.RetrySetting(), err)
	default:
		return nil, source, fmt.Errorf("request secrets from %s: %w", source, err)
	}
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

func (a *app) install(args, environ []string) error {
	if len(args) == 1 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
		_, err := io.WriteString(a.stdout, usage)
		return err
	}
	if len(args) != 1 || args[0] == "" {
		return &usageError{msg: "install needs exactly one argument, the target directory"}
	}
	self, err := a.executable()
	if err != nil {
		return fmt.Errorf("install: find own executable: %w", err)
	}
	caBundle, _ := config.Lookup(environ)(config.EnvCABundle)
	if err := install.Install(args[0], self, caBundle); err != nil {
		return fmt.Errorf("install into %s: %w", args[0], err)
	}
	jsonlog.New(a.stderr, false).Info("Installed piggy-env", "dir", args[0], "ca_bundle", caBundle != "")
	return nil
}

// caFileVar is the variable that named the CA file, when one did.
func caFileVar(p config.Proxy) string {
	if p.CAFileNamed {
		return config.EnvCAFile
	}
	return ""
}

// newFetchID is a random 128-bit id in lowercase hex.
func newFetchID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}
