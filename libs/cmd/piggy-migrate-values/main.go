// Command piggy-migrate-values converts the values of the original Piggy's
// chart (KongZ/piggy, chart piggy-webhooks 0.7.x) into values of
// charts/piggy, for the migration guide (docs/migration.md):
//
//	piggy-migrate-values old-values.yaml > values.yaml
//	helm get values piggy-webhooks -n piggy-webhooks -o yaml | piggy-migrate-values - > values.yaml
//
// It prints the new values as YAML, preceded by comments naming every old
// value that has no equivalent (and why) or needs a look. By default it
// also adds the settings of the guide's cut-over: the webhook takes only
// namespaces labelled piggysec.com/webhook=piggy and the broker answers the
// original piggy-env's POST /secret (-cut-over=false leaves them out).
// -keep-old-address lets pods keep the original's piggy-address, for when
// the original is uninstalled and its Service name reaches the broker.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "piggy-migrate-values: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string, stdin io.Reader, stdout io.Writer) error {
	fs := flag.NewFlagSet("piggy-migrate-values", flag.ContinueOnError)
	var opts Options
	fs.StringVar(&opts.OldAddress, "old-address", "https://piggy-webhooks.piggy-webhooks.svc.cluster.local",
		"the original webhook's address, as its pods' piggy-address and PIGGY_ADDRESS name it (https://<release fullname>.<namespace>.svc.cluster.local)")
	fs.BoolVar(&opts.CutOver, "cut-over", true, "add the settings of the guide's namespace-by-namespace cut-over")
	fs.BoolVar(&opts.KeepOldAddress, "keep-old-address", false, "let pods keep -old-address as their piggy-address (allowlist and the broker's certificate); only once the original is uninstalled and that name reaches the broker")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: piggy-migrate-values [flags] <piggy-webhooks values.yaml | ->")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errors.New("name one values file, or - for standard input")
	}
	var (
		data []byte
		err  error
	)
	if fs.Arg(0) == "-" {
		data, err = io.ReadAll(stdin)
	} else {
		data, err = os.ReadFile(fs.Arg(0))
	}
	if err != nil {
		return err
	}
	out, err := Convert(data, opts)
	if err != nil {
		return err
	}
	_, err = io.WriteString(stdout, out)
	return err
}

// Options configure Convert.
type Options struct {
	// OldAddress is the original webhook's URL, which its pods name.
	OldAddress string
	// CutOver adds the settings of the namespace-by-namespace cut-over.
	CutOver bool
	// KeepOldAddress allows OldAddress as pods' piggy-address and puts its
	// host in the broker's certificate.
	KeepOldAddress bool
}

// CutOverLabel is the namespace label the guide moves, namespace by
// namespace, from "original" to "piggy".
const CutOverLabel = "piggysec.com/webhook"

// converter accumulates the new values and the notes about old ones.
type converter struct {
	out   map[string]any
	notes []string
}

// set puts value at the dotted path of the new values (keys with dots are
// written as one element: "global.podDefaults.aws-region").
func (c *converter) set(path []string, value any) {
	m := c.out
	for _, k := range path[:len(path)-1] {
		next, ok := m[k].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[k] = next
		}
		m = next
	}
	m[path[len(path)-1]] = value
}

func (c *converter) note(format string, args ...any) {
	c.notes = append(c.notes, fmt.Sprintf(format, args...))
}

// services are the subcharts whose pods replace the original's one
// Deployment.
var services = []string{"admission-gateway", "image-resolver", "secret-broker"}

// podDefaultKeys are the annotations (without prefix) charts/piggy takes
// cluster-wide defaults for in global.podDefaults.
var podDefaultKeys = map[string]bool{
	"aws-secret-name": true, "aws-ssm-parameter-path": true, "aws-region": true, "aws-secret-version": true,
	"piggy-address": true, "standalone": true, "piggy-env-image": true, "piggy-env-image-pull-policy": true,
	"piggy-env-resource-cpu-request": true, "piggy-env-resource-memory-request": true,
	"piggy-env-resource-cpu-limit": true, "piggy-env-resource-memory-limit": true,
	"piggy-psp-allow-privilege-escalation": true, "piggy-ignore-no-env": true, "piggy-enforce-integrity": true,
	"piggy-enforce-service-account": true, "image-pull-secret": true, "image-pull-secret-namespace": true,
	"image-skip-verify-registry": true, "piggy-default-secret-name-prefix": true, "piggy-default-secret-name-suffix": true,
	"piggy-dns-resolver": true, "piggy-initial-delay": true, "piggy-retries": true, "piggy-number-of-retry": true,
}

// Convert reads values of piggy-webhooks and returns values of
// charts/piggy with comments.
func Convert(old []byte, opts Options) (string, error) {
	var in map[string]any
	if err := yaml.Unmarshal(old, &in); err != nil {
		return "", fmt.Errorf("read the piggy-webhooks values: %w", err)
	}
	c := &converter{out: map[string]any{}}
	for _, k := range sortedKeys(in) {
		c.convert(k, in[k])
	}
	if opts.CutOver {
		c.set([]string{"webhook", "namespaceSelector"}, map[string]any{"matchLabels": map[string]any{CutOverLabel: "piggy"}})
		c.set([]string{"secret-broker", "legacySecretEndpoint"}, true)
	}
	if opts.KeepOldAddress {
		if opts.OldAddress == "" {
			return "", errors.New("-keep-old-address needs -old-address")
		}
		c.set([]string{"admission-gateway", "allowedPiggyAddresses"}, []any{opts.OldAddress})
		if host := hostOf(opts.OldAddress); host != "" {
			c.set([]string{"secret-broker", "tls", "extraDnsNames"}, []any{host})
		}
	}
	body, err := yaml.Marshal(c.out)
	if err != nil {
		return "", fmt.Errorf("write the values: %w", err)
	}
	var b strings.Builder
	b.WriteString("# Values for charts/piggy, converted from piggy-webhooks values by piggy-migrate-values.\n")
	if opts.CutOver {
		b.WriteString("# Cut-over settings (docs/migration.md): the webhook takes only namespaces labelled\n")
		fmt.Fprintf(&b, "# %s=piggy; the broker answers the original piggy-env (POST /secret) until the\n", CutOverLabel)
		b.WriteString("# old pods are recreated.\n")
	}
	if opts.KeepOldAddress {
		fmt.Fprintf(&b, "# Pods may keep piggy-address %s: its name must reach the broker\n", opts.OldAddress)
		b.WriteString("# (the ExternalName Service of the guide, once the original is uninstalled).\n")
	}
	if len(c.notes) > 0 {
		b.WriteString("#\n# Not converted, or to check:\n")
		for _, n := range c.notes {
			b.WriteString("#   - " + n + "\n")
		}
	}
	b.Write(body)
	return b.String(), nil
}

// convert maps one top-level value of piggy-webhooks.
func (c *converter) convert(key string, v any) {
	switch key {
	case "replicaCount":
		n, ok := toInt(v)
		if !ok {
			c.note("replicaCount %v is not a number; left out", v)
			return
		}
		if n < 2 {
			c.note("replicaCount %d: each service runs at least 2 replicas (failurePolicy Fail, PDB); set to 2", n)
			n = 2
		}
		for _, s := range services {
			c.set([]string{s, "replicaCount"}, n)
		}
	case "image":
		m := asMap(v)
		if p, ok := m["pullPolicy"]; ok {
			c.set([]string{"global", "image", "pullPolicy"}, p)
		}
		if _, ok := m["repository"]; ok {
			c.note("image.repository/tag: no equivalent; the original's piggy-webhooks image cannot run these services (global.image names Piggy's images)")
		}
	case "imagePullSecrets":
		var names []any
		for _, s := range asList(v) {
			if n, ok := asMap(s)["name"]; ok {
				names = append(names, n)
			} else if str, ok := s.(string); ok {
				names = append(names, str)
			}
		}
		if len(names) > 0 {
			c.set([]string{"global", "imagePullSecrets"}, names)
		}
	case "nameOverride":
		if v != nil && v != "" {
			c.note("nameOverride %q: no equivalent; objects are named <global.fullnameOverride or release>-<component>", v)
		}
	case "fullnameOverride":
		if v != nil && v != "" {
			c.set([]string{"global", "fullnameOverride"}, v)
			c.note("fullnameOverride %q became global.fullnameOverride, the prefix of <prefix>-<component> names: install under another prefix while the original runs", v)
		}
	case "port":
		if n, ok := toInt(v); ok && n != 8443 {
			c.note("port %d: no equivalent; the gateway's webhook listens on 8443", n)
		}
	case "service":
		if m := asMap(v); (m["type"] != nil && m["type"] != "ClusterIP") || (m["port"] != nil && fmt.Sprint(m["port"]) != "443") {
			c.note("service %v: no equivalent; the Services are ClusterIP, reached by the API server (webhook) and pods (broker) inside the cluster", v)
		}
	case "ingress":
		if asMap(v)["enabled"] == true {
			c.note("ingress: no equivalent; an Ingress in front of the broker would expose its token endpoint outside the cluster. Pods reach the broker's Service; add names to secret-broker.tls.extraDnsNames")
		}
	case "serviceAccount":
		m := asMap(v)
		for _, s := range services {
			if cr, ok := m["create"]; ok {
				c.set([]string{s, "serviceAccount", "create"}, cr)
			}
			if a := asMap(m["annotations"]); len(a) > 0 {
				c.set([]string{s, "serviceAccount", "annotations"}, a)
			}
		}
		if n, ok := m["name"]; ok && n != "" && n != nil {
			c.note("serviceAccount.name %q: each service has its own ServiceAccount (<svc>.serviceAccount.name); not reused, the original's needs far more RBAC", n)
		}
		if a := asMap(m["annotations"]); a["eks.amazonaws.com/role-arn"] != nil {
			c.note("serviceAccount.annotations eks.amazonaws.com/role-arn was copied to every service: only the secret-broker needs the role (secret-broker.aws.roleArn); remove it from the others")
		}
	case "podAnnotations", "nodeSelector", "tolerations", "affinity", "podSecurityContext", "securityContext", "resources":
		if isEmpty(v) {
			return
		}
		if key == "podSecurityContext" && isDefaultPodSecurityContext(v) {
			c.note("podSecurityContext runAsUser 10001: dropped; the services run as non-root 65532 with a RuntimeDefault seccomp profile")
			return
		}
		for _, s := range services {
			c.set([]string{s, key}, v)
		}
		if key == "resources" {
			c.note("resources were copied to every service; the original ran the webhook and the secret proxy in one pod: size the gateway and the broker separately")
		}
	case "volumes", "volumeMounts":
		if isEmpty(v) {
			return
		}
		newKey := "extraVolumes"
		if key == "volumeMounts" {
			newKey = "extraVolumeMounts"
		}
		for _, s := range services {
			c.set([]string{s, newKey}, v)
		}
	case "autoscaling":
		m := asMap(v)
		if m["enabled"] != true {
			return
		}
		for _, s := range services {
			as := map[string]any{"enabled": true}
			if n, ok := toInt(m["minReplicas"]); ok {
				as["minReplicas"] = max(n, 2)
			}
			for _, k := range []string{"maxReplicas", "targetCPUUtilizationPercentage", "targetMemoryUtilizationPercentage"} {
				if x, ok := m[k]; ok {
					as[k] = x
				}
			}
			c.set([]string{s, "autoscaling"}, as)
		}
	case "maxUnavailable":
		if isEmpty(v) {
			return
		}
		for _, s := range services {
			c.set([]string{s, "podDisruptionBudget", "maxUnavailable"}, v)
		}
	case "priorityClassName":
		if !isEmpty(v) {
			c.set([]string{"global", "priorityClassName"}, v)
		}
	case "rbac":
		if asMap(asMap(v)["psp"])["enabled"] == true {
			c.note("rbac.psp.enabled: no equivalent; PodSecurityPolicy is gone since Kubernetes 1.25 (this chart needs 1.30): the services satisfy the restricted Pod Security Standard")
		}
	case "aws":
		if arn := asMap(v)["roleArn"]; !isEmpty(arn) {
			c.set([]string{"secret-broker", "aws", "roleArn"}, arn)
		}
	case "env":
		c.convertEnv(asMap(v))
	case "mutate":
		c.convertMutate(asMap(v))
	case "debug":
		if b, ok := toBool(v); ok && b {
			c.set([]string{"global", "debug"}, true)
		}
	default:
		c.note("%s: not a value of piggy-webhooks 0.7.x; left out", key)
	}
}

// convertEnv maps the original's env (the webhook's environment, where
// annotation defaults live) to global.podDefaults.
func (c *converter) convertEnv(env map[string]any) {
	for _, name := range sortedKeys(env) {
		value := fmt.Sprint(env[name])
		if env[name] == nil {
			value = ""
		}
		upper := strings.ToUpper(name)
		annotation := strings.ReplaceAll(strings.ToLower(name), "_", "-")
		switch {
		case upper == "DEBUG":
			if b, err := strconv.ParseBool(value); err == nil && b {
				c.set([]string{"global", "debug"}, true)
			}
		case upper == "PIGGY_NUMBER_OF_RETRY":
			c.set([]string{"global", "podDefaults", "piggy-number-of-retry"}, value)
			c.note("env PIGGY_NUMBER_OF_RETRY=%s keeps its meaning (attempts, the first included) as global.podDefaults.piggy-number-of-retry", value)
		case upper == "PIGGY_ADDRESS":
			c.set([]string{"global", "podDefaults", "piggy-address"}, value)
			c.note("env PIGGY_ADDRESS=%s is now the default broker address of new pods: it must reach the secret-broker, or remove it to use the chart's broker (auto)", value)
		case upper == "PIGGY_SKIP_VERIFY_TLS":
			c.note("env PIGGY_SKIP_VERIFY_TLS: no equivalent; piggy-env verifies the broker with the chart's CA")
		case upper == "AWS_REGION":
			c.set([]string{"global", "podDefaults", "aws-region"}, value)
		case podDefaultKeys[annotation]:
			c.set([]string{"global", "podDefaults", annotation}, value)
			if annotation == "image-skip-verify-registry" || annotation == "piggy-env-image" {
				c.note("env %s: check docs/migration.md \"Settings whose behaviour differs\"", name)
			}
		case strings.HasPrefix(upper, "AWS_"):
			c.set([]string{"secret-broker", "extraEnv"}, append(asList(c.get("secret-broker", "extraEnv")), map[string]any{"name": upper, "value": value}))
			c.note("env %s: passed to the secret-broker (secret-broker.extraEnv); prefer secret-broker.aws.* where one exists", upper)
		default:
			c.note("env %s: not a setting of this Piggy; left out", name)
		}
	}
}

// convertMutate maps the original's mutate block (webhook and
// certificates).
func (c *converter) convertMutate(m map[string]any) {
	for _, k := range sortedKeys(m) {
		v := m[k]
		switch k {
		case "certificate":
			cert := asMap(v)
			days, hasDays := toInt(cert["certValidity"])
			switch {
			case asMap(cert["certManager"])["enabled"] == true || cert["useCertManager"] == true:
				c.set([]string{"global", "tls", "mode"}, "cert-manager")
				if hasDays {
					c.set([]string{"global", "tls", "certManager", "duration"}, strconv.Itoa(days*24)+"h")
				}
				if pk := asMap(asMap(cert["certManager"])["privateKey"]); len(pk) > 0 {
					c.note("mutate.certificate.certManager.privateKey: no equivalent; certificates are ECDSA P-256")
				}
			case cert["generate"] == false:
				c.note("mutate.certificate.tls/ca (generate: false, your own certificate): no equivalent yet; use global.tls.mode cert-manager with global.tls.certManager.issuerRef naming your issuer")
			default:
				c.set([]string{"global", "tls", "mode"}, "generated")
				if hasDays {
					c.set([]string{"global", "tls", "generated", "certValidityDays"}, days)
				}
			}
		case "timeoutSeconds":
			if n, ok := toInt(v); ok && n > 0 {
				c.set([]string{"webhook", "timeoutSeconds"}, n)
			}
		case "podsFailurePolicy":
			if v == "Ignore" {
				c.set([]string{"webhook", "failurePolicy"}, "Ignore")
				c.note("mutate.podsFailurePolicy Ignore kept as webhook.failurePolicy; Fail (this chart's default) is safer: with Ignore the admission policy still refuses pods left with piggy: placeholders")
			} else if v != nil {
				c.set([]string{"webhook", "failurePolicy"}, v)
			}
		case "reinvocationPolicy":
			c.set([]string{"webhook", "reinvocationPolicy"}, v)
		case "excludeNamespaces":
			if !isEmpty(v) {
				c.set([]string{"webhook", "excludeNamespaces"}, v)
			}
		case "objectSelector":
			if !isEmpty(v) {
				c.set([]string{"webhook", "objectSelector"}, v)
			}
		case "matchConditions":
			if !isEmpty(v) {
				c.note("mutate.matchConditions: no equivalent for custom CEL; webhook.annotatedPodsOnly (default true) sends only pods with a piggysec.com/ annotation")
			}
		case "image":
			img := asMap(v)
			if p, ok := img["pullPolicy"]; ok {
				c.set([]string{"global", "podDefaults", "piggy-env-image-pull-policy"}, p)
			}
			c.note("mutate.image (the original piggy-env %v:%v): no equivalent; new pods get this Piggy's piggy-env (global.piggyEnvImage). Pods the original mutated keep theirs until recreated", img["repository"], img["tag"])
		default:
			c.note("mutate.%s: not a value of piggy-webhooks 0.7.x; left out", k)
		}
	}
}

func (c *converter) get(path ...string) any {
	var cur any = c.out
	for _, k := range path {
		cur = asMap(cur)[k]
	}
	return cur
}

func hostOf(url string) string {
	rest, ok := strings.CutPrefix(url, "https://")
	if !ok {
		return ""
	}
	host, _, _ := strings.Cut(rest, "/")
	if h, _, ok := strings.Cut(host, ":"); ok {
		host = h
	}
	return host
}

func isDefaultPodSecurityContext(v any) bool {
	m := asMap(v)
	n, ok := toInt(m["runAsUser"])
	return len(m) == 1 && ok && n == 10001
}

func asMap(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

func asList(v any) []any {
	l, _ := v.([]any)
	return l
}

func isEmpty(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case string:
		return x == ""
	case map[string]any:
		return len(x) == 0
	case []any:
		return len(x) == 0
	}
	return false
}

func toInt(v any) (int, bool) {
	switch x := v.(type) {
	case float64:
		return int(x), x == float64(int(x))
	case string:
		n, err := strconv.Atoi(x)
		return n, err == nil
	}
	return 0, false
}

func toBool(v any) (bool, bool) {
	switch x := v.(type) {
	case bool:
		return x, true
	case string:
		b, err := strconv.ParseBool(x)
		return b, err == nil
	}
	return false, false
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
