package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"regexp"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/internal/testdb"
)

// asCommand, set in the environment, makes the test binary run main() with
// the arguments after "--", so that tests can check real exit statuses.
const asCommand = "DURABLE_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(asCommand) == "1" {
		for i, a := range os.Args {
			if a == "--" {
				os.Args = append([]string{"durable"}, os.Args[i+1:]...)
				break
			}
		}
		main()
		return
	}
	testdb.Main(m, func(ctx context.Context, conn *pgx.Conn) error {
		return durable.Migrate(ctx, conn, nil)
	})
}

// result is what one command run printed and returned.
type result struct {
	code           int
	stdout, stderr string
}

// runCmd runs the command in process with args; getenv gives DATABASE_URL
// (and nothing else).
func runCmd(t *testing.T, databaseURL string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	e := &env{stdout: &stdout, stderr: &stderr, getenv: func(k string) string {
		if k == "DATABASE_URL" {
			return databaseURL
		}
		return ""
	}}
	code := run(ctx, e, args)
	t.Logf("durable %q: exit %d\nstdout:\n%s\nstderr:\n%s", args, code, stdout.String(), stderr.String())
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// requireCount checks that out has the counter line "label   n".
func requireCount(t *testing.T, out, label string, n string) {
	t.Helper()
	re := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(label) + `\s+` + n + `$`)
	require.Regexp(t, re, out)
}

func TestDemo(t *testing.T) {
	t.Parallel()
	url := testdb.URL(testdb.Clone(t))
	r := runCmd(t, "", "demo", "--database-url", url, "--instances", "3", "--events", "100")
	require.Equal(t, exitOK, r.code)
	requireCount(t, r.stdout, "spawn calls", "300")
	requireCount(t, r.stdout, "tasks created", "100")
	requireCount(t, r.stdout, "duplicates returned (created=false)", "200")
	requireCount(t, r.stdout, "executions", "100")
	requireCount(t, r.stdout, "events executed exactly once", "100")
	requireCount(t, r.stdout, "events executed more than once", "0")
	requireCount(t, r.stdout, "events never executed", "0")
	require.Regexp(t, `creates won per instance: #1:\d+ #2:\d+ #3:\d+\n`, r.stdout)
	require.Regexp(t, `throughput: \d+ spawns/s`, r.stdout)
	require.Contains(t, r.stdout, "OK: 300 spawns from 3 instances ran each of the 100 events exactly once.")
	require.Empty(t, r.stderr, "no warnings")
}

// TestDemoFromEnvironment: DATABASE_URL stands in for --database-url, and
// --only-once deduplicates as keys do.
func TestDemoFromEnvironment(t *testing.T) {
	t.Parallel()
	url := testdb.URL(testdb.Clone(t))
	r := runCmd(t, url, "demo", "--instances", "2", "--events", "50", "--only-once", "--workers", "3", "--concurrency", "4")
	require.Equal(t, exitOK, r.code)
	requireCount(t, r.stdout, "tasks created", "50")
	requireCount(t, r.stdout, "events executed exactly once", "50")
	require.Contains(t, r.stdout, "only-once key")
}

func TestDemoNoKeys(t *testing.T) {
	t.Parallel()
	url := testdb.URL(testdb.Clone(t))
	r := runCmd(t, "", "demo", "--database-url", url, "--instances", "3", "--events", "100", "--no-keys")
	require.Equal(t, exitOK, r.code, "the duplication is what --no-keys shows")
	requireCount(t, r.stdout, "spawn calls", "300")
	requireCount(t, r.stdout, "tasks created", "300")
	requireCount(t, r.stdout, "executions", "300")
	requireCount(t, r.stdout, "events executed more than once", "100")
	require.Contains(t, r.stdout, "DUPLICATION (expected without keys): 3 instances turned 100 events into 300 tasks and 300 executions; every event ran 3 times.")
}

// TestDemoThrowawayServer: with no database given, the demo starts, migrates
// and removes a server of its own.
func TestDemoThrowawayServer(t *testing.T) {
	t.Parallel()
	r := runCmd(t, "", "demo", "--instances", "2", "--events", "20")
	require.Equal(t, exitOK, r.code)
	requireCount(t, r.stdout, "events executed exactly once", "20")
	require.Contains(t, r.stderr, "starting a throwaway PostgreSQL")
}

func TestMigrate(t *testing.T) {
	t.Parallel()
	url := testdb.URL(testdb.NewDatabase(t))

	r := runCmd(t, "", "demo", "--database-url", url, "--events", "1")
	require.Equal(t, exitError, r.code, "an unmigrated database is refused")
	require.Contains(t, r.stderr, "run 'durable migrate' first")

	r = runCmd(t, url, "migrate")
	require.Equal(t, exitOK, r.code)
	require.Regexp(t, `durable schema migrated from version 0 to (\d+) \(latest \d+\)`, r.stdout)
	r = runCmd(t, url, "migrate")
	require.Equal(t, exitOK, r.code)
	require.Contains(t, r.stdout, "nothing to do")

	r = runCmd(t, "", "demo", "--database-url", url, "--instances", "2", "--events", "10")
	require.Equal(t, exitOK, r.code)
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args   []string
		stderr string
	}{
		{nil, "Usage: durable <command>"},
		{[]string{"nosuch"}, `unknown command "nosuch"`},
		{[]string{"help", "nosuch"}, `unknown command "nosuch"`},
		{[]string{"demo", "--instances", "x"}, `invalid value "x" for flag -instances`},
		{[]string{"demo", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"demo", "--instances", "0"}, "--instances must be at least 1, got 0"},
		{[]string{"demo", "--events", "-5"}, "--events must be at least 1, got -5"},
		{[]string{"demo", "--workers", "-1"}, "--workers must be at least 0, got -1"},
		{[]string{"demo", "--only-once", "--no-keys"}, "--only-once and --no-keys exclude each other"},
		{[]string{"demo", "--timeout", "0s"}, "--timeout must be positive"},
		{[]string{"demo", "extra"}, `unexpected argument "extra"`},
		{[]string{"migrate"}, "no database: pass --database-url or set DATABASE_URL"},
		{[]string{"version", "--short"}, "flag provided but not defined: -short"},
	} {
		r := runCmd(t, "", tc.args...)
		require.Equal(t, exitUsage, r.code, "%q", tc.args)
		require.Contains(t, r.stderr, tc.stderr, "%q", tc.args)
		require.Empty(t, r.stdout, "%q", tc.args)
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	r := runCmd(t, "", "help")
	require.Equal(t, exitOK, r.code)
	for _, c := range commands() {
		require.Contains(t, r.stdout, c.name)
	}
	for _, args := range [][]string{{"demo", "--help"}, {"demo", "-h"}, {"help", "demo"}} {
		r := runCmd(t, "", args...)
		require.Equal(t, exitOK, r.code)
		require.Contains(t, r.stdout, "Usage: durable demo [flags]")
		require.Contains(t, r.stdout, "-no-keys")
		require.Contains(t, r.stdout, "exits 0")
		require.Contains(t, r.stdout, "Example:\n  durable demo")
	}
	r = runCmd(t, "", "migrate", "--help")
	require.Equal(t, exitOK, r.code)
	require.Contains(t, r.stdout, "Example:\n")
}

func TestVersion(t *testing.T) {
	t.Parallel()
	r := runCmd(t, "", "version")
	require.Equal(t, exitOK, r.code)
	require.Regexp(t, `^durable \S+ \(go[^)]*\)\n$`, r.stdout)
}

// TestExitStatus runs the real main, in a child process, for its exit
// statuses.
func TestExitStatus(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"version"}, exitOK},
		{[]string{"demo", "--instances", "x"}, exitUsage},
		{[]string{}, exitUsage},
		{[]string{"queue", "list", "--database-url", "postgres://nobody@127.0.0.1:1/none?sslmode=disable&connect_timeout=2"}, exitError},
		{[]string{"queue", "list", "--database-url", ""}, exitUsage},
	} {
		cmd := exec.Command(os.Args[0], append([]string{"-test.run=^$", "--"}, tc.args...)...)
		cmd.Env = append(os.Environ(), asCommand+"=1")
		out, err := cmd.CombinedOutput()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else {
			require.NoError(t, err)
		}
		require.Equal(t, tc.code, code, "%q: %s", tc.args, out)
	}
}
