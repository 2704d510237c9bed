package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/internal/testdb"
)

// opsDB is a migrated database of the test's own: its URL, and a client on
// it for arranging what the commands should find.
func opsDB(t *testing.T) (string, *durable.Client, *pgxpool.Pool) {
	t.Helper()
	name := testdb.Clone(t)
	pool := testdb.Pool(t, name, 4)
	c, err := durable.New(pool, nil)
	require.NoError(t, err)
	return testdb.URL(name), c, pool
}

// decode parses a command's JSON output into v.
func decode(t *testing.T, r result, v any) {
	t.Helper()
	require.Equal(t, exitOK, r.code, r.stderr)
	require.NoError(t, json.Unmarshal([]byte(r.stdout), v), r.stdout)
}

// requireFailure checks a run that failed with code, printing want on
// stderr and nothing on stdout.
func requireFailure(t *testing.T, r result, code int, want ...string) {
	t.Helper()
	require.Equal(t, code, r.code, "stderr: %s", r.stderr)
	for _, w := range want {
		require.Contains(t, r.stderr, w)
	}
	require.Empty(t, r.stdout)
}

func TestQueueCommands(t *testing.T) {
	t.Parallel()
	url, _, _ := opsDB(t)

	r := runCmd(t, url, "queue", "create", "emails")
	require.Equal(t, exitOK, r.code)
	require.Equal(t, "queue emails is ready\n", r.stdout)
	r = runCmd(t, url, "queue", "create", "--json", "sms")
	var created map[string]string
	decode(t, r, &created)
	require.Equal(t, map[string]string{"queue_name": "sms"}, created)

	r = runCmd(t, url, "queue", "list")
	require.Equal(t, exitOK, r.code)
	require.Equal(t, "QUEUE\nemails\nsms\n", r.stdout)
	var names []string
	decode(t, runCmd(t, url, "queue", "list", "--json"), &names)
	require.Equal(t, []string{"emails", "sms"}, names)

	// stats: the table for every queue, an object for one.
	r = runCmd(t, url, "spawn", "emails", "send", "--key", "a")
	require.Equal(t, exitOK, r.code)
	r = runCmd(t, url, "queue", "stats")
	require.Equal(t, exitOK, r.code)
	require.Regexp(t, `(?m)^QUEUE\s+PENDING\s+RUNNING\s+SLEEPING\s+COMPLETED\s+FAILED\s+CANCELLED\s+READY\s+SCHEDULED\s+OLDEST READY\s+KEYS HELD$`, r.stdout)
	require.Regexp(t, `(?m)^emails\s+1\s+0\s+0\s+0\s+0\s+0\s+1\s+0\s+\S+\s+1$`, r.stdout)
	require.Regexp(t, `(?m)^sms\s+0\s+0\s+0\s+0\s+0\s+0\s+0\s+0\s+0s\s+0$`, r.stdout)
	var one map[string]any
	decode(t, runCmd(t, url, "queue", "stats", "emails", "--json"), &one)
	for _, k := range []string{"queue_name", "pending", "running", "sleeping", "completed", "failed", "cancelled",
		"finished", "ready_now", "scheduled", "oldest_ready_age_seconds", "keys_held", "terminal_counts", "measured_at"} {
		require.Contains(t, one, k)
	}
	require.Len(t, one, 14)
	require.Equal(t, "emails", one["queue_name"])
	require.EqualValues(t, 1, one["pending"])
	require.EqualValues(t, 1, one["keys_held"])
	require.Equal(t, "exact", one["terminal_counts"])
	var all []map[string]any
	decode(t, runCmd(t, url, "queue", "stats", "--json"), &all)
	require.Len(t, all, 2)
	require.Equal(t, "sms", all[1]["queue_name"])

	requireFailure(t, runCmd(t, url, "queue", "drop", "sms"), exitUsage, `dropping queue "sms" deletes all its tasks: add --yes to confirm`)
	r = runCmd(t, url, "queue", "drop", "sms", "--yes")
	require.Equal(t, exitOK, r.code)
	require.Equal(t, "queue sms dropped\n", r.stdout)
	requireFailure(t, runCmd(t, url, "queue", "drop", "--yes", "sms"), exitError,
		"durable queue drop: queue 'sms' does not exist (QD002)\nhint: ")
	requireFailure(t, runCmd(t, url, "queue", "stats", "sms"), exitError, "queue 'sms' does not exist (QD002)")
	requireFailure(t, runCmd(t, url, "queue", "create", "9bad"), exitError, "(QD001)")
}

func TestSpawnCommand(t *testing.T) {
	t.Parallel()
	url, c, _ := opsDB(t)
	ctx := context.Background()
	require.NoError(t, c.CreateQueue(ctx, "emails"))

	r := runCmd(t, url, "spawn", "emails", "send-receipt", "--params", `{"order": 42}`, "--key", "order-42")
	require.Equal(t, exitOK, r.code)
	require.Regexp(t, `^created task [0-9a-f-]{36}\n\s+run\s+[0-9a-f-]{36}\n\s+attempt\s+1\n\s+state\s+pending\n$`, r.stdout)
	r = runCmd(t, url, "spawn", "--key", "order-42", "emails", "send-receipt", "--params", `{"order": 43}`)
	require.Equal(t, exitOK, r.code)
	require.Regexp(t, `^deduplicated: task [0-9a-f-]{36} already holds the key\n`, r.stdout)

	var first, dup map[string]any
	decode(t, runCmd(t, url, "spawn", "emails", "digest", "--params", `{"user": 7}`, "--once", "--json"), &first)
	decode(t, runCmd(t, url, "spawn", "emails", "digest", "--params", `{ "user":7 }`, "--once", "--json"), &dup)
	require.Len(t, first, 5)
	require.Equal(t, true, first["created"])
	require.Equal(t, false, dup["created"])
	require.Equal(t, first["task_id"], dup["task_id"])
	require.Equal(t, first["run_id"], dup["run_id"])
	require.EqualValues(t, 1, dup["attempt"])
	require.Equal(t, "pending", dup["state"])

	var later map[string]any
	decode(t, runCmd(t, url, "spawn", "emails", "reminder", "--delay", "1h", "--max-attempts", "3", "--headers", `{"trace": "t1"}`, "--json"), &later)
	id, err := durable.ParseUUID(later["task_id"].(string))
	require.NoError(t, err)
	d, err := c.GetTask(ctx, "emails", id)
	require.NoError(t, err)
	require.Equal(t, 3, d.MaxAttempts)
	require.JSONEq(t, `{"trace": "t1"}`, string(d.Headers))
	require.JSONEq(t, `{}`, string(d.Params), "--params defaults to {}")
	s, err := c.QueueStats(ctx, "emails")
	require.NoError(t, err)
	require.EqualValues(t, 1, s.Scheduled, "--delay makes the task wait")

	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"spawn", "emails", "x", "--params", `{bad`}, exitUsage, "--params is not valid JSON: invalid character 'b'"},
		{[]string{"spawn", "emails", "x", "--key", "k", "--once"}, exitUsage, "--key and --once exclude each other"},
		{[]string{"spawn", "emails", "x", "--max-attempts", "-1"}, exitUsage, "--max-attempts must be at least 1, got -1"},
		{[]string{"spawn", "emails", "x", "--delay", "soon"}, exitUsage, `invalid value "soon" for flag -delay`},
		{[]string{"spawn", "emails", "x", "--headers", `[1]`}, exitUsage, "--headers must be a JSON object"},
		{[]string{"spawn", "emails"}, exitUsage, "missing TASK"},
		{[]string{"spawn"}, exitUsage, "missing QUEUE and TASK"},
		{[]string{"spawn", "emails", "x", "y"}, exitUsage, `unexpected argument "y"`},
		{[]string{"spawn", "nosuch", "x"}, exitError, "durable spawn: queue 'nosuch' does not exist (QD002)\nhint: Create it first"},
		{[]string{"spawn", "emails", "x", "--params", `{"a": "\u0000"}`}, exitError, "(QD006)"},
	} {
		requireFailure(t, runCmd(t, url, tc.args...), tc.code, tc.want)
	}
}

func TestTaskCommands(t *testing.T) {
	t.Parallel()
	url, c, pool := opsDB(t)
	ctx := context.Background()
	require.NoError(t, c.CreateQueue(ctx, "shop"))

	// A task that failed once (with a checkpoint) and waits to retry, one
	// pending with a key, one pending of another name.
	flaky, err := c.Spawn(ctx, "shop", "charge", map[string]int{"order": 1}, &durable.SpawnOptions{
		RetryStrategy: &durable.RetryStrategy{Kind: durable.RetryFixed, Base: time.Hour},
	})
	require.NoError(t, err)
	runs, err := c.ClaimTasks(ctx, "shop", "worker-7", 30*time.Second, 1)
	require.NoError(t, err)
	require.Len(t, runs, 1)
	_, err = pool.Exec(ctx, "select durable.set_task_checkpoint_state('shop', $1, 'reserve', '{\"sku\": 9}', $2)", flaky.TaskID, runs[0].RunID)
	require.NoError(t, err)
	require.NoError(t, c.FailRun(ctx, "shop", runs[0].RunID, map[string]string{"name": "error", "message": "card declined"}, time.Time{}))
	keyed, err := c.Spawn(ctx, "shop", "charge", nil, &durable.SpawnOptions{IdempotencyKey: "order-2"})
	require.NoError(t, err)
	mail, err := c.Spawn(ctx, "shop", "mail", nil, nil)
	require.NoError(t, err)

	var list []map[string]any
	decode(t, runCmd(t, url, "task", "list", "shop", "--json"), &list)
	require.Len(t, list, 3)
	require.Len(t, list[0], 12)
	ids := func(rows []map[string]any) []string {
		var out []string
		for _, r := range rows {
			out = append(out, r["task_id"].(string))
		}
		return out
	}
	decode(t, runCmd(t, url, "task", "list", "shop", "--state", "pending", "--json"), &list)
	require.ElementsMatch(t, []string{keyed.TaskID.String(), mail.TaskID.String()}, ids(list))
	decode(t, runCmd(t, url, "task", "list", "shop", "--state", "sleeping", "--json"), &list)
	require.Equal(t, []string{flaky.TaskID.String()}, ids(list))
	require.EqualValues(t, 2, list[0]["attempts"])
	decode(t, runCmd(t, url, "task", "list", "shop", "--name", "charge", "--key", "order-2", "--json"), &list)
	require.Equal(t, []string{keyed.TaskID.String()}, ids(list))
	decode(t, runCmd(t, url, "task", "list", "shop", "--name", "mail", "--limit", "1", "--json"), &list)
	require.Equal(t, []string{mail.TaskID.String()}, ids(list))
	decode(t, runCmd(t, url, "task", "list", "shop", "--state", "failed", "--json"), &list)
	require.Empty(t, list)
	require.Equal(t, "[]\n", runCmd(t, url, "task", "list", "shop", "--state", "failed", "--json").stdout)

	r := runCmd(t, url, "task", "list", "shop", "--state", "pending")
	require.Equal(t, exitOK, r.code)
	require.Regexp(t, `(?m)^TASK ID\s+NAME\s+STATE\s+ATTEMPTS\s+KEY\s+ENQUEUED\s+AVAILABLE/FINISHED$`, r.stdout)
	require.Regexp(t, `(?m)^`+keyed.TaskID.String()+`\s+charge\s+pending\s+1/5\s+order-2\s+\d{4}-`, r.stdout)

	// show: the task, its runs with the failure reason, its checkpoints.
	r = runCmd(t, url, "task", "show", "shop", flaky.TaskID.String())
	require.Equal(t, exitOK, r.code)
	for _, want := range []string{
		"task           " + flaky.TaskID.String(),
		"state          sleeping",
		"attempts       2 of 5",
		`params         {"order": 1}`,
		"runs (2):",
		"card declined",
		"worker-7",
		"checkpoints (1):",
	} {
		require.Contains(t, r.stdout, want)
	}
	require.Regexp(t, `(?m)^\s+1\s+`+runs[0].RunID.String()+`\s+failed\s+worker-7\s+.*error: card declined$`, r.stdout)
	require.Regexp(t, `(?m)^\s+reserve\s+1\s+\S+ \S+\s+\{"sku": 9\}$`, r.stdout)
	var shown durable.TaskDetail
	decode(t, runCmd(t, url, "task", "show", "shop", flaky.TaskID.String(), "--json"), &shown)
	require.Equal(t, flaky.TaskID, shown.TaskID)
	require.Len(t, shown.Runs, 2)
	require.JSONEq(t, `{"name": "error", "message": "card declined"}`, string(shown.Runs[0].FailureReason))
	require.Equal(t, durable.StateSleeping, shown.Runs[1].State)
	require.Len(t, shown.Checkpoints, 1)
	require.Equal(t, "reserve", shown.Checkpoints[0].StepName)

	// cancel, then retry in place and as a new task.
	r = runCmd(t, url, "task", "cancel", "shop", flaky.TaskID.String())
	require.Equal(t, exitOK, r.code)
	require.Equal(t, "task "+flaky.TaskID.String()+" is cancelled\n", r.stdout)
	var cancelled map[string]any
	decode(t, runCmd(t, url, "task", "cancel", "shop", flaky.TaskID.String(), "--json"), &cancelled)
	require.Equal(t, map[string]any{"task_id": flaky.TaskID.String(), "state": "cancelled"}, cancelled)
	r = runCmd(t, url, "task", "retry", "shop", flaky.TaskID.String())
	require.Equal(t, exitOK, r.code)
	require.Regexp(t, `^task `+flaky.TaskID.String()+` retried in place\n\s+run\s+\S+\n\s+attempt\s+3\n\s+state\s+pending\n$`, r.stdout)
	requireFailure(t, runCmd(t, url, "task", "retry", "shop", flaky.TaskID.String()), exitError, "(QD015)")
	_, err = c.CancelTask(ctx, "shop", mail.TaskID)
	require.NoError(t, err)
	var again map[string]any
	decode(t, runCmd(t, url, "task", "retry", "shop", mail.TaskID.String(), "--spawn-new", "--json"), &again)
	require.Equal(t, true, again["created"])
	require.NotEqual(t, mail.TaskID.String(), again["task_id"])
	require.NoError(t, c.CreateQueue(ctx, "other"))
	done, err := c.Spawn(ctx, "other", "quick", nil, nil)
	require.NoError(t, err)
	runs, err = c.ClaimTasks(ctx, "other", "worker-8", 30*time.Second, 1)
	require.NoError(t, err)
	require.NoError(t, c.CompleteRun(ctx, "other", runs[0].RunID, 1))
	r = runCmd(t, url, "task", "cancel", "other", done.TaskID.String())
	require.Equal(t, exitOK, r.code)
	require.Equal(t, "task "+done.TaskID.String()+" had already finished: completed\n", r.stdout)
	decode(t, runCmd(t, url, "task", "list", "shop", "--state", "cancelled", "--json"), &list)
	require.Equal(t, []string{mail.TaskID.String()}, ids(list))

	missing := "00000000-0000-4000-8000-000000000000"
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"task", "show", "shop", missing}, exitError, "durable task show: task " + missing + " not found in queue 'shop' (QD020)"},
		{[]string{"task", "cancel", "shop", missing}, exitError, "(QD020)"},
		{[]string{"task", "retry", "shop", missing}, exitError, "(QD020)"},
		{[]string{"task", "show", "shop", "42"}, exitUsage, `TASK_ID "42" is not a UUID`},
		{[]string{"task", "show", "nosuch", missing}, exitError, "queue 'nosuch' does not exist (QD002)"},
		{[]string{"task", "list", "nosuch"}, exitError, "queue 'nosuch' does not exist (QD002)"},
		{[]string{"task", "list", "shop", "--state", "done"}, exitUsage, `unknown --state "done"`},
		{[]string{"task", "list", "shop", "--limit", "0"}, exitUsage, "--limit must be between 1 and 1000, got 0"},
		{[]string{"task", "list"}, exitUsage, "missing QUEUE"},
		{[]string{"task", "retry", "shop", missing, "--max-attempts", "-2"}, exitUsage, "--max-attempts must be at least 1"},
		{[]string{"task", "frob"}, exitUsage, `durable task: unknown subcommand "frob"`},
		{[]string{"task"}, exitUsage, "durable task: missing subcommand"},
	} {
		requireFailure(t, runCmd(t, url, tc.args...), tc.code, tc.want)
	}
}

func TestEventEmitCommand(t *testing.T) {
	t.Parallel()
	url, c, _ := opsDB(t)
	require.NoError(t, c.CreateQueue(context.Background(), "shop"))
	r := runCmd(t, url, "event", "emit", "shop", "packed:42", "--payload", `{"boxes": 2}`)
	require.Equal(t, exitOK, r.code)
	require.Equal(t, "event packed:42 emitted; tasks waiting for it are woken\n", r.stdout)
	var out map[string]any
	decode(t, runCmd(t, url, "event", "emit", "shop", "packed:42", "--json"), &out)
	require.Equal(t, map[string]any{"event_name": "packed:42", "emitted": false}, out)
	requireFailure(t, runCmd(t, url, "event", "emit", "shop", "x", "--payload", "{"), exitUsage, "--payload is not valid JSON")
	requireFailure(t, runCmd(t, url, "event", "emit", "shop", "$x"), exitError, "(QD007)")
	requireFailure(t, runCmd(t, url, "event", "emit", "nosuch", "x"), exitError, "(QD002)")
}

func TestMigrateStatusAndUnmigrated(t *testing.T) {
	t.Parallel()
	url := testdb.URL(testdb.NewDatabase(t))
	latest := len(durable.MigrationNames())

	var st struct {
		Installed, Latest int
		Pending           []string
	}
	decode(t, runCmd(t, url, "migrate", "status", "--json"), &st)
	require.Equal(t, 0, st.Installed)
	require.Equal(t, latest, st.Latest)
	require.Equal(t, durable.MigrationNames(), st.Pending)

	requireFailure(t, runCmd(t, url, "queue", "list"), exitError, "run 'durable migrate'")
	requireFailure(t, runCmd(t, url, "task", "list", "q"), exitError, "run 'durable migrate'")

	require.Equal(t, exitOK, runCmd(t, url, "migrate", "--to", "2").code)
	r := runCmd(t, url, "migrate", "status")
	require.Equal(t, exitOK, r.code)
	require.Regexp(t, `(?m)^installed version\s+2$`, r.stdout)
	require.Regexp(t, `(?m)^pending\s+`+strings.Join(durable.MigrationNames()[2:], ", ")+`$`, r.stdout)
	require.Equal(t, exitOK, runCmd(t, url, "migrate").code)
	r = runCmd(t, url, "migrate", "status")
	require.Regexp(t, `(?m)^pending\s+none: up to date$`, r.stdout)
}

// TestNoDatabase: every command that needs a database says how to give one
// and exits 2; an unreachable one exits 1.
func TestNoDatabase(t *testing.T) {
	t.Parallel()
	id := "00000000-0000-4000-8000-000000000000"
	for _, args := range [][]string{
		{"migrate", "status"}, {"queue", "create", "q"}, {"queue", "list"}, {"queue", "drop", "q", "--yes"},
		{"queue", "stats"}, {"spawn", "q", "t"}, {"task", "list", "q"}, {"task", "show", "q", id},
		{"task", "cancel", "q", id}, {"task", "retry", "q", id}, {"event", "emit", "q", "e"},
	} {
		requireFailure(t, runCmd(t, "", args...), exitUsage, "no database: pass --database-url or set DATABASE_URL")
	}
	requireFailure(t, runCmd(t, "postgres://nobody@127.0.0.1:1/none?sslmode=disable&connect_timeout=2", "queue", "list"),
		exitError, "durable queue list: cannot connect to the database")
}

// TestHelpEverywhere: every command and subcommand prints its usage and an
// example on --help, to stdout, with status 0.
func TestHelpEverywhere(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"migrate", "status"}, {"queue", "create"}, {"queue", "list"}, {"queue", "drop"}, {"queue", "stats"},
		{"spawn"}, {"task", "list"}, {"task", "show"}, {"task", "cancel"}, {"task", "retry"}, {"event", "emit"},
	} {
		r := runCmd(t, "", append(args, "--help")...)
		require.Equal(t, exitOK, r.code, "%q", args)
		require.Contains(t, r.stdout, "Usage: durable "+strings.Join(args, " "), "%q", args)
		require.Contains(t, r.stdout, "-database-url", "%q", args)
		require.Contains(t, r.stdout, "Example:\n  durable "+strings.Join(args, " "), "%q", args)
		require.Empty(t, r.stderr)
	}
	for _, group := range []string{"queue", "task", "event"} {
		r := runCmd(t, "", group, "--help")
		require.Equal(t, exitOK, r.code)
		require.Contains(t, r.stdout, "Usage: durable "+group+" <subcommand>")
	}
}
