package main

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable/internal/testdb"
)

// cleanupFixture creates queue q in the database at url with finished
// finished tasks, live live ones and events events, all in the past.
func cleanupFixture(t *testing.T, url, q string, finished, live, events int) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	steps := []struct {
		sql  string
		args []any
	}{
		{"select durable.create_queue($1)", []any{q}},
		{"select count(*) from durable.spawn_tasks($1, (select jsonb_agg(jsonb_build_object('task_name', 't')) from generate_series(1, $2::int)))", []any{q, finished}},
		{`select count(*) from durable.complete_runs($1,
		    (select jsonb_agg(jsonb_build_object('run_id', c.run_id)) from durable.claim_task($1, 'w', 60, $2::int) c))`, []any{q, finished}},
		{"select count(*) from durable.spawn_tasks($1, (select coalesce(jsonb_agg(jsonb_build_object('task_name', 'live')), '[]') from generate_series(1, $2::int)))", []any{q, live}},
		{"select count(*) from (select durable.emit_event($1, 'e' || i) from generate_series(1, $2::int) i) x", []any{q, events}},
	}
	for _, s := range steps {
		_, err := conn.Exec(ctx, s.sql, s.args...)
		require.NoError(t, err, s.sql)
	}
}

func countIn(t *testing.T, url, sql string, args ...any) int {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var n int
	require.NoError(t, conn.QueryRow(ctx, sql, args...).Scan(&n))
	return n
}

// TestCleanupCommand: one queue in batches until done (--json), every
// queue's policy (text), and the usage and database errors with their exit
// statuses.
func TestCleanupCommand(t *testing.T) {
	t.Parallel()
	url := testdb.URL(testdb.Clone(t))
	cleanupFixture(t, url, "jobs", 7, 2, 3)
	cleanupFixture(t, url, "mail", 4, 1, 2)
	cleanupFixture(t, url, "kept", 3, 0, 1)

	r := runCmd(t, url, "cleanup", "--queue", "jobs", "--task-ttl", "0s", "--limit", "3", "--until-done", "--json")
	require.Equal(t, exitOK, r.code, r.stderr)
	var out struct {
		Queues []struct {
			Queue           string `json:"queue"`
			TaskTTLSeconds  *int   `json:"task_ttl_seconds"`
			EventTTLSeconds *int   `json:"event_ttl_seconds"`
			TasksDeleted    int    `json:"tasks_deleted"`
			EventsDeleted   int    `json:"events_deleted"`
		} `json:"queues"`
		TasksDeleted  int `json:"tasks_deleted"`
		EventsDeleted int `json:"events_deleted"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &out))
	require.Len(t, out.Queues, 1)
	require.Equal(t, "jobs", out.Queues[0].Queue)
	require.Equal(t, 0, *out.Queues[0].TaskTTLSeconds)
	require.Nil(t, out.Queues[0].EventTTLSeconds)
	require.Equal(t, 7, out.TasksDeleted, "3 + 3 + 1, all finished tasks")
	require.Equal(t, 0, out.EventsDeleted)
	require.Equal(t, 2, countIn(t, url, "select count(*) from durable.t_jobs"), "the live tasks stay")
	require.Equal(t, 3, countIn(t, url, "select count(*) from durable.e_jobs"))

	// Without --queue: each queue's policy; "kept" has none.
	r = runCmd(t, url, "cleanup")
	require.Equal(t, exitOK, r.code)
	require.Contains(t, r.stdout, "no queue has a retention policy")
	for _, q := range []string{"jobs", "mail"} {
		require.Equal(t, 1, countIn(t, url, "select count(*) from (select durable.set_queue_retention($1, 1, 1)) x", q))
	}
	time.Sleep(1100 * time.Millisecond) // everything is older than the ttl of 1s
	r = runCmd(t, url, "cleanup", "--limit", "2")
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Regexp(t, `(?m)^\s*jobs\s+1s\s+1s\s+0\s+2\s*$`, r.stdout)
	require.Regexp(t, `(?m)^\s*mail\s+1s\s+1s\s+2\s+2\s*$`, r.stdout)
	require.Contains(t, r.stdout, "deleted 2 tasks and 4 events")
	r = runCmd(t, url, "cleanup", "--limit", "2", "--until-done")
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Contains(t, r.stdout, "deleted 2 tasks and 1 events")
	require.Equal(t, 1, countIn(t, url, "select count(*) from durable.t_mail"))
	require.Equal(t, 3, countIn(t, url, "select count(*) from durable.t_kept"))

	for _, tc := range []struct {
		name string
		url  string
		args []string
		code int
		msg  string
	}{
		{"no database", "", []string{"cleanup"}, exitUsage, "no database"},
		{"queue without ttl", url, []string{"cleanup", "--queue", "jobs"}, exitUsage, "--queue needs"},
		{"ttl without queue", url, []string{"cleanup", "--task-ttl", "1h"}, exitUsage, "need --queue"},
		{"negative ttl", url, []string{"cleanup", "--queue", "jobs", "--event-ttl", "-1s"}, exitUsage, "negative"},
		{"limit 0", url, []string{"cleanup", "--limit", "0"}, exitUsage, "--limit"},
		{"bad duration", url, []string{"cleanup", "--queue", "jobs", "--task-ttl", "7d"}, exitUsage, "invalid value"},
		{"unknown queue", url, []string{"cleanup", "--queue", "nope", "--task-ttl", "1h"}, exitError, "queue 'nope' does not exist"},
		{"unreachable database", "postgres://postgres@127.0.0.1:1/x?sslmode=disable&connect_timeout=2", []string{"cleanup"}, exitError, "connect"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runCmd(t, tc.url, tc.args...)
			require.Equal(t, tc.code, r.code)
			require.Contains(t, r.stderr, tc.msg)
		})
	}

	r = runCmd(t, "", "cleanup", "--help")
	require.Equal(t, exitOK, r.code)
	require.Contains(t, r.stdout, "Usage: durable cleanup")
	require.Contains(t, r.stdout, "Example:")
	require.Contains(t, r.stdout, "--until-done")
	r = runCmd(t, "", "help")
	require.Contains(t, r.stdout, fmt.Sprintf("  %s", "cleanup"))
}
