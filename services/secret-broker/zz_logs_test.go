package main

import (
	"os"
	"strings"
	"testing"
)

// TestNoSecretValueInAnyLog greps every log line the suite produced (the
// brokers' stderr at debug level, the awslocal servers' request logs and the
// kube-apiserver's log) for every value seeded into AWS, and finds none. It
// lives in the last file so that it runs after the other tests; TestMain
// repeats the check after all tests for runs with -shuffle.
func TestNoSecretValueInAnyLog(t *testing.T) {
	if _, values := allLogs.count(); values == 0 {
		t.Skip("no test seeded any secret value in this run")
	}
	if data, err := os.ReadFile(kube.Cluster(t).APIServerLog()); err == nil {
		allLogs.add("kube-apiserver", strings.Split(string(data), "\n")...)
	}
	lines, values := allLogs.count()
	if leaks := allLogs.leaks(); len(leaks) > 0 {
		t.Errorf("%d of %d log lines hold one of %d secret values:\n%s", len(leaks), lines, values, strings.Join(leaks, "\n"))
	}
	if lines < 100 {
		t.Errorf("only %d log lines were collected; the check would prove little", lines)
	}
	t.Logf("checked %d log lines for %d secret values", lines, values)
}
