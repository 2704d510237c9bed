package durable_test

// Retention and cleanup: cleanup_tasks, cleanup_events, set_queue_retention
// and cleanup_all, through SQL and Go, under the fake clock; what they never
// delete, their batches, their plans, and cleanup racing spawns of the same
// keys.

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/internal/testdb"
)

func cleanupTasks(t testing.TB, db dbtx, q string, ttl, limit int) int {
	t.Helper()
	var n int
	require.NoError(t, db.QueryRow(context.Background(), "select durable.cleanup_tasks($1, $2, $3)", q, ttl, limit).Scan(&n))
	return n
}

func cleanupEvents(t testing.TB, db dbtx, q string, ttl, limit int) int {
	t.Helper()
	var n int
	require.NoError(t, db.QueryRow(context.Background(), "select durable.cleanup_events($1, $2, $3)", q, ttl, limit).Scan(&n))
	return n
}

// rowsOfTasks counts the rows of durable.<prefix><queue> that belong to tasks.
func rowsOfTasks(t testing.TB, db dbtx, prefix, q string, tasks ...durable.UUID) int {
	t.Helper()
	return countRows(t, db, prefix, q, "task_id = any ($1)", tasks)
}

// TestCleanupTasksDeletesOnlyWhatItMay: at T = t0 + 2h, cleanup_tasks with a
// ttl of 1h deletes exactly the completed, failed and cancelled tasks that
// ended before T - 1h and hold no key (with their runs, checkpoints and
// waits), and the one whose key retention expired; it keeps the live tasks
// (pending, running, sleeping) and their keys, the recently finished task,
// the one whose retention runs on, and a finished task a live task still
// waits for, until that task has read it.
func TestCleanupTasksDeletesOnlyWhatItMay(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)

	a := exStart(t, tx, q, "")
	exSetCheckpoint(t, tx, q, a.task, a.run, "step", `{"done": 1}`)
	completeRun(t, tx, q, a.run, `"a"`)
	// A leftover wait row of a finished task goes with it too.
	mustExec(t, tx, `insert into durable.waits (queue_name, task_id, step_name, run_id, event_name, timeout_at, created_at)
		values ($1, $2, 'w', $3, 'some-event', 'infinity', $4)`, q, a.task, a.run, t0)

	b := exStart(t, tx, q, `{"max_attempts": 2, "retry_strategy": {"kind": "none"}}`)
	failRun(t, tx, q, b.run, `{"message": "1"}`)
	failRun(t, tx, q, claimOne(t, tx, q).RunID, `{"message": "2"}`)
	require.Equal(t, "failed", taskResult(t, tx, q, b.task).state)
	c := spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`), key: str("c")})
	require.Equal(t, "cancelled", cancelTask(t, tx, q, c.TaskID))

	retainedLong := spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`), key: str("long"),
		options: `{"key_retention_seconds": 10800}`})
	completeRun(t, tx, q, claimOne(t, tx, q).RunID, `1`)
	retainedShort := spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`), key: str("short"),
		options: `{"key_retention_seconds": 1800}`})
	completeRun(t, tx, q, claimOne(t, tx, q).RunID, `2`)

	running := spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`), key: str("run")})
	require.Equal(t, running.TaskID, claimOne(t, tx, q).TaskID)
	sleeping := exStart(t, tx, q, `{"retry_strategy": {"kind": "fixed", "base_seconds": 36000}}`)
	failRun(t, tx, q, sleeping.run, `{"message": "later"}`)
	pending := spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`), key: str("live"),
		options: availableAtOption(t0.Add(10 * time.Hour).Format(time.RFC3339))})
	// Finishes at t0 + 90m: claimed now with a long lease.
	recent := spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`)})
	recentRun := claim(t, tx, q, "w", 36000, 1)
	require.Len(t, recentRun, 1)
	require.Equal(t, recent.TaskID, recentRun[0].TaskID)

	parent := exStart(t, tx, q, "")
	child := exStart(t, tx, q, "")
	require.Equal(t, "suspended", exAwaitTask(t, tx, q, parent, "child", child.task).Status)
	completeRun(t, tx, q, child.run, `"child"`) // wakes the parent, which has not read it yet

	setNow(t, tx, t0.Add(90*time.Minute))
	completeRun(t, tx, q, recentRun[0].RunID, `"recent"`)

	setNow(t, tx, t0.Add(2*time.Hour))
	deleted := []durable.UUID{a.task, b.task, c.TaskID, retainedShort.TaskID}
	kept := []durable.UUID{retainedLong.TaskID, running.TaskID, sleeping.task, pending.TaskID, parent.task, child.task, recent.TaskID}
	require.Equal(t, len(deleted), cleanupTasks(t, tx, q, 3600, 1000))
	require.Equal(t, 0, rowsOfTasks(t, tx, "t_", q, deleted...))
	require.Equal(t, 0, rowsOfTasks(t, tx, "r_", q, deleted...))
	require.Equal(t, 0, rowsOfTasks(t, tx, "c_", q, deleted...))
	require.Equal(t, 0, rowsOfTasks(t, tx, "w_", q, deleted...))
	require.Equal(t, len(kept), rowsOfTasks(t, tx, "t_", q, kept...))
	require.Equal(t, len(kept), countTasks(t, tx, q))
	require.Equal(t, 0, cleanupTasks(t, tx, q, 3600, 1000), "nothing else may go")

	// Live keys and the retained one are still held.
	require.Equal(t, pending.TaskID, spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`), key: str("live")}).TaskID)
	require.Equal(t, 3, countRows(t, tx, "t_", q, "key_held"))
	// The deleted tasks' keys are free.
	require.True(t, spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`), key: str("c")}).Created)
	require.True(t, spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`), key: str("short")}).Created)

	// Once the parent has read its child's outcome, the child may go.
	require.Equal(t, parent.run, claimOne(t, tx, q).RunID)
	require.Equal(t, "received", exAwaitTask(t, tx, q, parent, "child", child.task).Status)
	require.Equal(t, 1, cleanupTasks(t, tx, q, 3600, 1000))
	require.Equal(t, 0, rowsOfTasks(t, tx, "t_", q, child.task))

	// ttl 0 takes the recently finished task too, never a live one.
	require.Equal(t, 1, cleanupTasks(t, tx, q, 0, 1000))
	require.Equal(t, 0, rowsOfTasks(t, tx, "t_", q, recent.TaskID))
	require.Equal(t, 1, rowsOfTasks(t, tx, "t_", q, retainedLong.TaskID), "its key is retained until t0 + 3h")
	setNow(t, tx, t0.Add(3*time.Hour))
	require.Equal(t, 1, cleanupTasks(t, tx, q, 0, 1000))
	require.Equal(t, 0, rowsOfTasks(t, tx, "t_", q, retainedLong.TaskID))
}

// TestCleanupTasksBatches: 25 old finished tasks and 5 live ones; limit 10
// deletes 10, 10, 5, then 0, oldest first, and the live tasks stay.
func TestCleanupTasksBatches(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	q := newQueue(t, tx)
	var order []durable.UUID
	for i := range 25 {
		setNow(t, tx, t0.Add(time.Duration(i)*time.Second))
		s := exStart(t, tx, q, "")
		completeRun(t, tx, q, s.run, `null`)
		order = append(order, s.task)
	}
	mustExec(t, tx, "select durable.spawn_task($1, 'live') from generate_series(1, 5)", q)
	setNow(t, tx, t0.Add(time.Hour))
	for i, want := range []int{10, 10, 5, 0} {
		require.Equal(t, want, cleanupTasks(t, tx, q, 60, 10), "call %d", i+1)
		done := min(25, 10*(i+1))
		require.Equal(t, 0, rowsOfTasks(t, tx, "t_", q, order[:done]...), "the oldest go first")
		require.Equal(t, 25-done, rowsOfTasks(t, tx, "t_", q, order[done:]...))
	}
	require.Equal(t, 5, countTasks(t, tx, q))
	require.Equal(t, 5, countRuns(t, tx, q))
}

// TestCleanupBadArguments: QD006 for a ttl that is NULL or negative and a
// limit outside 1 to 10000; QD002 for an unknown queue; nothing written.
func TestCleanupBadArguments(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	q := newQueue(t, tx)
	for _, fn := range []string{"cleanup_tasks", "cleanup_events"} {
		for _, args := range [][]any{{q, -1, 10}, {q, nil, 10}, {q, 0, 0}, {q, 0, 10001}, {q, 0, nil}} {
			requireFails(t, tx, "QD006", fmt.Sprintf("select durable.%s($1, $2, $3)", fn), args...)
		}
		requireFails(t, tx, "QD002", fmt.Sprintf("select durable.%s('nope', 0, 10)", fn))
		requireFails(t, tx, "QD001", fmt.Sprintf("select durable.%s('no pe', 0, 10)", fn))
	}
	requireFails(t, tx, "QD006", "select durable.set_queue_retention($1, 0, null)", q)
	requireFails(t, tx, "QD006", "select durable.set_queue_retention($1, null, -5)", q)
	requireFails(t, tx, "QD002", "select durable.set_queue_retention('nope', 1, 1)")
	requireFails(t, tx, "QD006", "select * from durable.cleanup_all(0)")
	requireFails(t, tx, "QD006", "select * from durable.cleanup_all(null)")
}

// TestCleanupEvents: events emitted before now - ttl go, in batches, oldest
// first; a newer one stays, and so does one a woken task has not read yet;
// a deleted event can be emitted again.
func TestCleanupEvents(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	waiter := exStart(t, tx, q, "")
	require.Equal(t, "suspended", exAwaitEvent(t, tx, q, waiter, "s", "awaited", nil).Status)
	for i := range 5 {
		require.True(t, exEmit(t, tx, q, fmt.Sprintf("old-%d", i), `1`))
	}
	require.True(t, exEmit(t, tx, q, "awaited", `"x"`)) // wakes the waiter, which has not read it
	setNow(t, tx, t0.Add(time.Hour))
	require.True(t, exEmit(t, tx, q, "new", `2`))

	setNow(t, tx, t0.Add(2*time.Hour))
	require.Equal(t, 3, cleanupEvents(t, tx, q, 3600, 3))
	require.Equal(t, 2, cleanupEvents(t, tx, q, 3600, 3))
	require.Equal(t, 0, cleanupEvents(t, tx, q, 3600, 3))
	require.Equal(t, 2, countRows(t, tx, "e_", q, ""), "new and awaited stay")

	require.Equal(t, waiter.run, claimOne(t, tx, q).RunID)
	require.Equal(t, "received", exAwaitEvent(t, tx, q, waiter, "s", "awaited", nil).Status)
	require.Equal(t, 1, cleanupEvents(t, tx, q, 3600, 10))
	require.Equal(t, 1, cleanupEvents(t, tx, q, 0, 10))
	require.Equal(t, 0, countRows(t, tx, "e_", q, ""))
	require.True(t, exEmit(t, tx, q, "old-1", `3`), "a deleted event is as if never emitted")
}

// TestCleanupAllAppliesPolicies: cleanup_all runs each queue's policy once,
// in name order, skipping queues without one; set_queue_retention(q, null,
// null) turns a policy off. The Go calls do the same.
func TestCleanupAllAppliesPolicies(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.ClonePool(t, 4)
	conn, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	setNow(t, conn, t0)
	client, err := durable.New(conn, nil)
	require.NoError(t, err)
	qa, qb, qc := "a-tasks", "b-events", "c-none"
	for _, q := range []string{qa, qb, qc} {
		require.NoError(t, client.CreateQueue(ctx, q))
		for range 3 {
			s := exStart(t, conn, q, "")
			completeRun(t, conn, q, s.run, `null`)
		}
		exEmit(t, conn, q, "e", `1`)
	}
	require.NoError(t, client.SetQueueRetention(ctx, qa, &durable.RetentionPolicy{TaskTTL: time.Hour}))
	require.NoError(t, client.SetQueueRetention(ctx, qb, &durable.RetentionPolicy{EventTTL: 30 * time.Minute}))
	setNow(t, conn, t0.Add(2*time.Hour))

	got, err := client.CleanupAll(ctx, 2)
	require.NoError(t, err)
	require.Equal(t, []durable.CleanupResult{
		{Queue: qa, Policy: durable.RetentionPolicy{TaskTTL: time.Hour}, TasksDeleted: 2},
		{Queue: qb, Policy: durable.RetentionPolicy{EventTTL: 30 * time.Minute}, EventsDeleted: 1},
	}, got)
	got, err = client.CleanupAll(ctx, 0)
	require.NoError(t, err)
	require.Equal(t, 1, got[0].TasksDeleted)
	require.Equal(t, 0, got[1].EventsDeleted)
	require.Equal(t, 0, countTasks(t, conn, qa))
	require.Equal(t, 3, countTasks(t, conn, qb))
	require.Equal(t, 3, countTasks(t, conn, qc))
	require.Equal(t, 0, countRows(t, conn, "e_", qb, ""))
	require.Equal(t, 1, countRows(t, conn, "e_", qa, ""))

	require.NoError(t, client.SetQueueRetention(ctx, qa, nil))
	got, err = client.CleanupAll(ctx, 0)
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.Equal(t, qb, got[0].Queue)

	n, err := client.CleanupTasks(ctx, qc, 0, 0)
	require.NoError(t, err)
	require.Equal(t, 3, n)
	n, err = client.CleanupEvents(ctx, qc, time.Minute, 0)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	_, err = client.CleanupTasks(ctx, qc, -time.Second, 0)
	require.ErrorIs(t, err, durable.ErrInvalidArgument)
	_, err = client.CleanupEvents(ctx, "missing", 0, 0)
	require.ErrorIs(t, err, durable.ErrQueueNotFound)
}

// scanCounts is what this transaction has read from a table so far.
type scanCounts struct{ seqScans, idxScans, idxFetched int64 }

// sharedTables are the tables every queue's rows live in (migration 010).
var sharedTables = []string{"tasks", "runs", "checkpoints", "events", "waits"}

// tableScans is what this transaction has read from durable.<table>.
func tableScans(t testing.TB, db dbtx, table string) scanCounts {
	t.Helper()
	var s scanCounts
	require.NoError(t, db.QueryRow(context.Background(), `
		select coalesce(seq_scan, 0), coalesce(idx_scan, 0), coalesce(idx_tup_fetch, 0)
		  from pg_stat_xact_user_tables where relid = $1::regclass`,
		pgx.Identifier{"durable", table}.Sanitize()).Scan(&s.seqScans, &s.idxScans, &s.idxFetched))
	return s
}

// indexScans is how many scans of the index durable.<index> this transaction
// has started.
func indexScans(t testing.TB, db dbtx, index string) int64 {
	t.Helper()
	var n int64
	require.NoError(t, db.QueryRow(context.Background(), "select pg_stat_get_xact_numscans($1::regclass)",
		pgx.Identifier{"durable", index}.Sanitize()).Scan(&n))
	return n
}

// TestCleanupIsIndexDriven: on a queue of 2,500 live tasks, 2,500 recently
// finished ones, 2,500 retained ones and 300 old finished ones (with their
// events), beside a neighbour queue of 2,500 tasks and 2,500 events all older
// still, in the shared tables, a cleanup_tasks and a cleanup_events of 100
// read no shared table sequentially and fetch a bounded number of rows
// through indexes from each (never the live or recent tasks, never the
// neighbour's rows, which an index not led by the queue would reach first);
// a spawn that finds a retained task reads its key index only, one row; and
// a takeover of an expired key goes through the key index, never the
// queue's index of expiring keys.
func TestCleanupIsIndexDriven(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// A database of its own: ANALYZE of the shared tables inside the
	// transaction would otherwise hold their locks against the other tests,
	// and its row counts outlive the rollback.
	tx, err := testdb.ClonePool(t, 1).Begin(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	setNow(t, tx, t0)
	neighbour := newQueue(t, tx)
	q := newQueue(t, tx)
	spawnMany := func(queue string, n int, options string) {
		mustExec(t, tx, `select count(*) from durable.spawn_tasks($1, (select jsonb_agg(jsonb_build_object(
			'task_name', 't', 'idempotency_key', $2 || i, 'options', $3::text::jsonb)) from generate_series(1, $4) i))`,
			queue, fmt.Sprintf("k%d-", countTasks(t, tx, queue)), options, n)
	}
	finishAll := func(queue string) {
		mustExec(t, tx, `select count(*) from durable.complete_runs($1,
			(select jsonb_agg(jsonb_build_object('run_id', c.run_id)) from durable.claim_task($1, 'w', 60, 10000) c))`, queue)
	}
	setNow(t, tx, t0.Add(-time.Hour))
	spawnMany(neighbour, 2500, `{}`)
	finishAll(neighbour)
	mustExec(t, tx, "select durable.emit_event($1, 'old-' || i) from generate_series(1, 2500) i", neighbour)
	setNow(t, tx, t0)
	spawnMany(q, 300, `{}`)
	finishAll(q)
	mustExec(t, tx, "select durable.emit_event($1, 'old-' || i) from generate_series(1, 300) i", q)
	setNow(t, tx, t0.Add(2*time.Hour))
	spawnMany(q, 2500, `{"key_retention_seconds": "forever"}`)
	finishAll(q)
	spawnMany(q, 2500, `{}`)
	finishAll(q)
	mustExec(t, tx, "select durable.emit_event($1, 'new-' || i) from generate_series(1, 2500) i", q)
	spawnMany(q, 2500, `{}`) // live
	for _, table := range sharedTables {
		mustExec(t, tx, "analyze "+pgx.Identifier{"durable", table}.Sanitize())
	}

	before := map[string]scanCounts{}
	for _, table := range sharedTables {
		before[table] = tableScans(t, tx, table)
	}
	require.Equal(t, 100, cleanupTasks(t, tx, q, 3600, 100))
	require.Equal(t, 100, cleanupEvents(t, tx, q, 3600, 100))
	for _, table := range sharedTables {
		after := tableScans(t, tx, table)
		require.Equal(t, before[table].seqScans, after.seqScans, "cleanup read durable.%s sequentially", table)
		// 100 deleted rows (plus their runs) and the probes for waits: never
		// the 7,500 other tasks of the queue nor the neighbour's 2,500 tasks
		// and 2,500 events.
		require.LessOrEqual(t, after.idxFetched-before[table].idxFetched, int64(400), "durable.%s", table)
	}
	require.Equal(t, 2500, countTasks(t, tx, neighbour), "the neighbour's tasks are not the queue's")
	require.Equal(t, 2500, countRows(t, tx, "e_", neighbour, ""), "nor its events")

	// A spawn that gets a retained task back reads the key index only.
	tasksBefore, keyBefore := tableScans(t, tx, "tasks"), indexScans(t, tx, "tasks_key")
	again := spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`), key: str("k300-1")})
	require.False(t, again.Created)
	require.Equal(t, "completed", again.State)
	tasksAfter, keyAfter := tableScans(t, tx, "tasks"), indexScans(t, tx, "tasks_key")
	require.Equal(t, tasksBefore.seqScans, tasksAfter.seqScans)
	require.Equal(t, keyBefore+1, keyAfter, "one lookup in tasks_key")
	require.Equal(t, tasksBefore.idxScans+1, tasksAfter.idxScans, "and no other index of durable.tasks")
	require.Equal(t, tasksBefore.idxFetched+1, tasksAfter.idxFetched)

	// A takeover of an expired key: the lookup skips the expired holder, the
	// insert conflicts with it, and the release finds it through the key
	// index, as the generic plans of spawn_task (plan_cache_mode =
	// force_generic_plan) must, never through tasks_key_expiry, which holds
	// every retained key of the queue (2,500 here).
	expiring := spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`), key: str("expiring"),
		options: `{"key_retention_seconds": 1}`})
	require.Equal(t, "cancelled", cancelTask(t, tx, q, expiring.TaskID))
	setNow(t, tx, t0.Add(3*time.Hour))
	tasksBefore, keyBefore = tableScans(t, tx, "tasks"), indexScans(t, tx, "tasks_key")
	expiryBefore := indexScans(t, tx, "tasks_key_expiry")
	taken := spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`), key: str("expiring")})
	require.True(t, taken.Created)
	require.NotEqual(t, expiring.TaskID, taken.TaskID)
	tasksAfter, keyAfter = tableScans(t, tx, "tasks"), indexScans(t, tx, "tasks_key")
	require.Equal(t, tasksBefore.seqScans, tasksAfter.seqScans)
	require.Equal(t, expiryBefore, indexScans(t, tx, "tasks_key_expiry"), "the takeover read tasks_key_expiry")
	require.GreaterOrEqual(t, keyAfter-keyBefore, int64(2), "the lookups and the release read tasks_key")
	require.Equal(t, keyAfter-keyBefore, tasksAfter.idxScans-tasksBefore.idxScans, "and no other index of durable.tasks")
	require.LessOrEqual(t, tasksAfter.idxFetched-tasksBefore.idxFetched, int64(10))
}

// TestCleanupSkipsLockedTasks: a cleanup never waits for a task another
// transaction holds (here a retry_task in progress): it skips it, and
// settles it by what that transaction did: a committed retry made it live
// (kept), a rolled-back one left it failed (deleted by the next call).
func TestCleanupSkipsLockedTasks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.ClonePool(t, 4)
	conns := acquireConns(t, pool, 2)
	q := newQueue(t, pool)
	for _, commit := range []bool{true, false} {
		s := exStart(t, pool, q, `{"max_attempts": 1}`)
		failRun(t, pool, q, s.run, `{"message": "boom"}`)
		other := exStart(t, pool, q, "")
		completeRun(t, pool, q, other.run, `null`)

		tx, err := conns[0].Begin(ctx)
		require.NoError(t, err)
		mustExec(t, tx, "select * from durable.retry_task($1, $2)", q, s.task)
		mustExec(t, conns[1], "set statement_timeout = '5s'") // waiting would fail the call
		require.Equal(t, 1, cleanupTasks(t, conns[1], q, 0, 100), "the other task goes, the locked one is skipped")
		mustExec(t, conns[1], "reset statement_timeout")
		if commit {
			require.NoError(t, tx.Commit(ctx))
			require.Equal(t, 0, cleanupTasks(t, conns[1], q, 0, 100))
			require.Equal(t, 1, rowsOfTasks(t, pool, "t_", q, s.task), "retried: live")
			_, err = pool.Exec(ctx, "select durable.cancel_task($1, $2)", q, s.task)
			require.NoError(t, err)
		} else {
			require.NoError(t, tx.Rollback(ctx))
		}
		require.Equal(t, 1, cleanupTasks(t, conns[1], q, 0, 100))
		require.Equal(t, 0, rowsOfTasks(t, pool, "t_", q, s.task))
	}
}

// TestCleanupConcurrentWithSpawns: 16 goroutines spawn 8 keys over and over
// (4 of them with a key retention of 20ms), 2 workers finish what they
// claim, and 2 goroutines run cleanup_tasks with a ttl of 0, all at once for
// a bounded number of rounds: 0 errors; cleanup deleted tasks; every task
// that is gone was finished by a worker (never a live one); and afterwards
// each key has exactly one live task, which every spawner gets back.
func TestCleanupConcurrentWithSpawns(t *testing.T) {
	t.Parallel()
	const spawners, workers, cleaners, keys, rounds = 16, 2, 2, 8, 60
	ctx := context.Background()
	pool := testdb.ClonePool(t, spawners+workers+cleaners+2)
	q := newQueue(t, pool)
	call := func(k int) spawnCall {
		c := spawnCall{queue: q, task: "t", params: str(`{}`), key: str(fmt.Sprintf("key-%d", k))}
		if k%2 == 1 {
			c.options = `{"key_retention_seconds": 0.02}`
		}
		return c
	}

	var (
		mu        sync.Mutex
		spawnedID = map[durable.UUID]bool{}
		finished  = map[durable.UUID]bool{}
		deleted   atomic.Int64
		errs      = make([]error, spawners+workers+cleaners)
		stop      atomic.Bool
		running   sync.WaitGroup
	)
	for w := range workers + cleaners {
		running.Add(1)
		go func() {
			defer running.Done()
			for !stop.Load() {
				if w < workers {
					runs, err := tryClaim(ctx, pool, q, fmt.Sprintf("w%d", w), 60, 8)
					for _, r := range runs {
						if err == nil {
							_, err = pool.Exec(ctx, "select durable.complete_run($1, $2, 'null')", q, r.RunID)
						}
						if err == nil {
							mu.Lock()
							finished[r.TaskID] = true
							mu.Unlock()
						}
					}
					if err != nil {
						errs[spawners+w] = err
						return
					}
					continue
				}
				var n int
				if err := pool.QueryRow(ctx, "select durable.cleanup_tasks($1, 0, 5)", q).Scan(&n); err != nil {
					errs[spawners+w] = err
					return
				}
				deleted.Add(int64(n))
			}
		}()
	}
	together(spawners, func(i int) {
		for r := range rounds {
			s, err := trySpawn(ctx, pool, call((i+r)%keys))
			if err != nil {
				errs[i] = err
				return
			}
			mu.Lock()
			spawnedID[s.TaskID] = true
			mu.Unlock()
		}
	})
	stop.Store(true)
	running.Wait()
	for i, err := range errs {
		require.NoError(t, err, "goroutine %d", i)
	}
	require.Positive(t, deleted.Load(), "cleanup deleted nothing: the test proves nothing")
	rows, err := pool.Query(ctx, "select task_id from "+tableName("t_", q))
	require.NoError(t, err)
	present, err := pgx.CollectRows(rows, pgx.RowTo[durable.UUID])
	require.NoError(t, err)
	left := map[durable.UUID]bool{}
	for _, id := range present {
		left[id] = true
	}
	gone := 0
	for id := range spawnedID {
		if !left[id] {
			gone++
			require.True(t, finished[id], "task %s was deleted but never finished", id)
		}
	}
	require.Positive(t, gone)
	require.Equal(t, 0, countRows(t, pool, "r_", q, "task_id <> all ($1)", present), "runs without a task")

	// Afterwards: one spawn per key from each of 16 goroutines, exactly one
	// live task per key, every spawner of a key gets the same one.
	time.Sleep(30 * time.Millisecond) // let the retained keys expire
	results := make([][keys]spawned, spawners)
	together(spawners, func(i int) {
		for k := range keys {
			if results[i][k], errs[i] = trySpawn(ctx, pool, call(k)); errs[i] != nil {
				return
			}
		}
	})
	for k := range keys {
		for i := range spawners {
			require.NoError(t, errs[i])
			require.Equal(t, results[0][k].TaskID, results[i][k].TaskID, "key %d, goroutine %d", k, i)
		}
		require.Equal(t, 1, countRows(t, pool, "t_", q,
			"idempotency_key = $1 and state in ('pending', 'running', 'sleeping')", *call(k).key), "key %d", k)
	}
	require.Equal(t, keys, countRows(t, pool, "t_", q, "key_held"))
}

// TestOperationsMigrationUpgradesOldQueues: a queue made at version 4 (before
// migration 007 gave queues the key retention columns and the cleanup
// indexes, and before migration 010 moved every queue's rows into the shared
// tables) comes through the upgrade with its rows, now in durable.tasks,
// runs and events behind the views t_old, r_old and e_old; the shared tables
// carry the cleanup indexes; its finished tasks and events are cleaned and
// its keys can be retained.
func TestOperationsMigrationUpgradesOldQueues(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn := connect(t, testdb.NewDatabase(t))
	require.NoError(t, durable.Migrate(ctx, conn, &durable.MigrateOptions{TargetVersion: 4}))
	mustExec(t, conn, "select durable.create_queue('old')")
	setNow(t, conn, t0)
	old := spawn(t, conn, spawnCall{queue: "old", task: "t", params: str(`{}`), key: str("k")})
	oldRun := claimOne(t, conn, "old").RunID
	completeRun(t, conn, "old", oldRun, `1`)
	exEmit(t, conn, "old", "e", `1`)

	require.NoError(t, durable.Migrate(ctx, conn, nil))
	// The rows moved into the shared tables, keyed by the queue.
	require.Equal(t, 1, countIn(t, conn, `select count(*) from durable.tasks
		where queue_name = 'old' and task_id = $1 and state = 'completed' and result = '1'
		  and idempotency_key = 'k' and not key_held and finished_at is not null and key_expires_at is null`, old.TaskID))
	require.Equal(t, 1, countIn(t, conn, `select count(*) from durable.runs
		where queue_name = 'old' and run_id = $1 and task_id = $2 and state = 'completed'`, oldRun, old.TaskID))
	require.Equal(t, 1, countIn(t, conn, `select count(*) from durable.events
		where queue_name = 'old' and event_name = 'e' and payload = '1'`))
	require.Equal(t, 1, countIn(t, conn, "select count(*) from durable.tasks"))
	require.Equal(t, 1, countIn(t, conn, "select count(*) from durable.runs"))
	require.Equal(t, 1, countIn(t, conn, "select count(*) from durable.events"))
	// The queue's tables are gone: its names are views of its rows.
	for _, prefix := range []string{"t_", "r_", "c_", "e_", "w_"} {
		require.Equal(t, 1, countIn(t, conn, `select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace
			where n.nspname = 'durable' and c.relname = $1 and c.relkind = 'v'`, prefix+"old"), prefix+"old")
	}
	require.Equal(t, 0, countIn(t, conn, `select count(*) from pg_indexes where schemaname = 'durable'
		and (tablename like '%\_old' or indexname like '%\_old\_%')`), "indexes of the old tables are left")
	require.Equal(t, 1, rowsOfTasks(t, conn, "t_", "old", old.TaskID))
	require.Equal(t, 1, countRows(t, conn, "e_", "old", ""))
	// The cleanup indexes, led by the queue, on the shared tables.
	for _, index := range []struct{ table, name, columns string }{
		{"tasks", "tasks_finished", "(queue_name, finished_at) WHERE ((finished_at IS NOT NULL) AND (NOT key_held))"},
		{"tasks", "tasks_key_expiry", "(queue_name, key_expires_at) WHERE (key_expires_at IS NOT NULL)"},
		{"events", "events_emitted", "(queue_name, emitted_at)"},
	} {
		var def string
		require.NoError(t, conn.QueryRow(ctx, `select indexdef from pg_indexes
			where schemaname = 'durable' and tablename = $1 and indexname = $2`, index.table, index.name).Scan(&def), index.name)
		require.Contains(t, def, "USING btree "+index.columns, index.name)
	}

	setNow(t, conn, t0.Add(time.Hour))
	retained := spawn(t, conn, spawnCall{queue: "old", task: "t", params: str(`{}`), key: str("k"),
		options: `{"key_retention_seconds": 60}`})
	require.True(t, retained.Created)
	require.Equal(t, 1, cleanupTasks(t, conn, "old", 60, 10))
	require.Equal(t, 0, rowsOfTasks(t, conn, "t_", "old", old.TaskID))
	require.Equal(t, 0, countIn(t, conn, "select count(*) from durable.runs where run_id = $1", oldRun))
	require.Equal(t, 1, cleanupEvents(t, conn, "old", 60, 10))
	require.Equal(t, 0, countIn(t, conn, "select count(*) from durable.events where queue_name = 'old'"))
	require.Equal(t, "cancelled", cancelTask(t, conn, "old", retained.TaskID))
	again := spawn(t, conn, spawnCall{queue: "old", task: "t", params: str(`{}`), key: str("k")})
	require.Equal(t, retained.TaskID, again.TaskID)
	require.False(t, again.Created)
}

func countIn(t testing.TB, db dbtx, sql string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, db.QueryRow(context.Background(), sql, args...).Scan(&n))
	return n
}
