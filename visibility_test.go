package durable_test

// The visibility functions: queue_stats, list_tasks and get_task, through
// the Client, under the fake clock.

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/internal/testdb"
)

// visibilityQueue fills a queue with one task in each situation, at t0:
//
//	ready1    pending, available since t0-2m, key "r1"
//	ready2    pending, available since t0-1m
//	later     pending, available at t0+1h (scheduled)
//	running   claimed by "w", key "run"
//	retrying  failed once, sleeping until t0+1h
//	done      completed
//	broken    failed (non-retryable)
//	dropped   cancelled, key "x" (no longer held)
type visibilityQueue struct {
	q                                                               string
	ready1, ready2, later, running, retrying, done, broken, dropped spawned
}

func fillVisibilityQueue(t *testing.T, db dbtx) visibilityQueue {
	t.Helper()
	setNow(t, db, t0)
	v := visibilityQueue{q: newQueue(t, db)}
	at := func(d time.Duration) string { return availableAtOption(t0.Add(d).Format(time.RFC3339Nano)) }
	// The ones that end up running or finished are available first, an hour
	// apart, so that claims take them in this order.
	v.running = spawn(t, db, spawnCall{queue: v.q, task: "work", params: str(`{}`), key: str("run"), options: at(-4 * time.Hour)})
	v.retrying = spawn(t, db, spawnCall{queue: v.q, task: "work", params: str(`{}`),
		options: `{"available_at": "` + t0.Add(-3*time.Hour).Format(time.RFC3339Nano) + `", "retry_strategy": {"kind": "fixed", "base_seconds": 3600}}`})
	v.done = spawn(t, db, spawnCall{queue: v.q, task: "work", params: str(`{}`), options: at(-2 * time.Hour)})
	v.broken = spawn(t, db, spawnCall{queue: v.q, task: "work", params: str(`{}`), options: at(-time.Hour)})
	runs := claim(t, db, v.q, "w", 30, 4)
	require.Len(t, runs, 4)
	failRun(t, db, v.q, runs[1].RunID, `{"name": "error", "message": "try later"}`)
	completeRun(t, db, v.q, runs[2].RunID, `{"ok": true}`)
	failRun(t, db, v.q, runs[3].RunID, `{"name": "error", "message": "bad", "retryable": false}`)
	v.dropped = spawn(t, db, spawnCall{queue: v.q, task: "other", params: str(`{}`), key: str("x")})
	require.Equal(t, "cancelled", cancelTask(t, db, v.q, v.dropped.TaskID))
	v.ready1 = spawn(t, db, spawnCall{queue: v.q, task: "work", params: str(`{"n": 1}`), key: str("r1"), options: at(-2 * time.Minute)})
	v.ready2 = spawn(t, db, spawnCall{queue: v.q, task: "other", params: str(`{"n": 2}`), options: at(-time.Minute)})
	v.later = spawn(t, db, spawnCall{queue: v.q, task: "work", params: str(`{}`), options: at(time.Hour)})
	return v
}

// inRolledBackSavepoint runs f with a client on a savepoint of tx that is rolled back
// afterwards, so that an error does not abort tx.
func inRolledBackSavepoint(t *testing.T, tx pgx.Tx, f func(c *durable.Client)) {
	t.Helper()
	sp, err := tx.Begin(context.Background())
	require.NoError(t, err)
	c, err := durable.New(sp, nil)
	require.NoError(t, err)
	f(c)
	require.NoError(t, sp.Rollback(context.Background()))
}

func TestQueueStats(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	ctx := context.Background()
	v := fillVisibilityQueue(t, tx)
	c, err := durable.New(tx, nil)
	require.NoError(t, err)

	s, err := c.QueueStats(ctx, v.q)
	require.NoError(t, err)
	one := func(n int64) *int64 { return &n }
	require.Equal(t, &durable.QueueStats{
		Queue: v.q, Pending: 3, Running: 1, Sleeping: 1,
		Completed: one(1), Failed: one(1), Cancelled: one(1), Finished: 3,
		ReadyNow: 2, Scheduled: 2, OldestReadyAge: 2 * time.Minute, KeysHeld: 2,
		TerminalCounts: "exact", MeasuredAt: s.MeasuredAt,
	}, s)
	requireTime(t, t0, s.MeasuredAt)

	// The clock moves past the retry: it becomes ready, and the oldest age
	// grows with the clock.
	setNow(t, tx, t0.Add(2*time.Hour))
	s, err = c.QueueStats(ctx, v.q)
	require.NoError(t, err)
	require.EqualValues(t, 4, s.ReadyNow, "ready1, ready2, later, retrying")
	require.EqualValues(t, 0, s.Scheduled)
	require.Equal(t, 2*time.Hour+2*time.Minute, s.OldestReadyAge)

	// An empty queue: zeros, no age.
	empty := newQueue(t, tx)
	s, err = c.QueueStats(ctx, empty)
	require.NoError(t, err)
	require.Zero(t, s.Pending+s.Running+s.Sleeping+s.Finished+s.ReadyNow+s.KeysHeld)
	require.Zero(t, s.OldestReadyAge)

	inRolledBackSavepoint(t, tx, func(c *durable.Client) {
		_, err = c.QueueStats(ctx, "no_such_queue")
		require.ErrorIs(t, err, durable.ErrQueueNotFound)
	})
	inRolledBackSavepoint(t, tx, func(c *durable.Client) {
		_, err = c.QueueStats(ctx, "bad name")
		require.ErrorIs(t, err, durable.ErrInvalidQueueName)
	})
}

func TestListTasks(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	ctx := context.Background()
	v := fillVisibilityQueue(t, tx)
	c, err := durable.New(tx, nil)
	require.NoError(t, err)

	ids := func(opts *durable.ListTasksOptions) []durable.UUID {
		t.Helper()
		tasks, err := c.ListTasks(ctx, v.q, opts)
		require.NoError(t, err)
		out := []durable.UUID{}
		for _, task := range tasks {
			out = append(out, task.TaskID)
		}
		return out
	}
	// Live states come in the order workers take them.
	require.Equal(t, []durable.UUID{v.ready1.TaskID, v.ready2.TaskID, v.later.TaskID},
		ids(&durable.ListTasksOptions{State: durable.StatePending}))
	require.Equal(t, []durable.UUID{v.ready1.TaskID}, ids(&durable.ListTasksOptions{State: durable.StatePending, Limit: 1}))
	require.Equal(t, []durable.UUID{v.ready2.TaskID}, ids(&durable.ListTasksOptions{State: durable.StatePending, TaskName: "other"}))
	require.Equal(t, []durable.UUID{v.running.TaskID}, ids(&durable.ListTasksOptions{State: durable.StateRunning}))
	require.Equal(t, []durable.UUID{v.retrying.TaskID}, ids(&durable.ListTasksOptions{State: durable.StateSleeping}))
	require.Equal(t, []durable.UUID{v.done.TaskID}, ids(&durable.ListTasksOptions{State: durable.StateCompleted}))
	require.Equal(t, []durable.UUID{v.broken.TaskID}, ids(&durable.ListTasksOptions{State: durable.StateFailed}))
	require.Equal(t, []durable.UUID{v.dropped.TaskID}, ids(&durable.ListTasksOptions{State: durable.StateCancelled}))
	require.Len(t, ids(nil), 8)
	require.Len(t, ids(&durable.ListTasksOptions{Limit: 3}), 3)
	require.ElementsMatch(t, []durable.UUID{v.ready2.TaskID, v.dropped.TaskID}, ids(&durable.ListTasksOptions{TaskName: "other"}))
	// Keys: explicit keys, held or not.
	require.Equal(t, []durable.UUID{v.dropped.TaskID}, ids(&durable.ListTasksOptions{IdempotencyKey: "x"}))
	require.Equal(t, []durable.UUID{v.running.TaskID}, ids(&durable.ListTasksOptions{IdempotencyKey: "run", State: durable.StateRunning}))
	require.Empty(t, ids(&durable.ListTasksOptions{IdempotencyKey: "run", State: durable.StatePending}))
	require.Empty(t, ids(&durable.ListTasksOptions{IdempotencyKey: "r1", TaskName: "other"}))

	tasks, err := c.ListTasks(ctx, v.q, &durable.ListTasksOptions{State: durable.StateSleeping})
	require.NoError(t, err)
	require.Len(t, tasks, 1)
	got := tasks[0]
	require.Equal(t, "work", got.TaskName)
	require.Equal(t, 2, got.Attempts)
	require.Equal(t, 5, got.MaxAttempts)
	require.Nil(t, got.IdempotencyKey)
	require.NotNil(t, got.AvailableAt)
	requireTime(t, t0.Add(time.Hour), *got.AvailableAt)
	require.NotNil(t, got.FirstStartedAt)
	require.Nil(t, got.FinishedAt)

	for _, tc := range []struct {
		opts *durable.ListTasksOptions
		err  error
	}{
		{&durable.ListTasksOptions{State: "done"}, durable.ErrInvalidArgument},
		{&durable.ListTasksOptions{Limit: 1001}, durable.ErrInvalidArgument},
		{&durable.ListTasksOptions{Limit: -1}, durable.ErrInvalidArgument},
	} {
		inRolledBackSavepoint(t, tx, func(c *durable.Client) {
			_, err := c.ListTasks(ctx, v.q, tc.opts)
			require.ErrorIs(t, err, tc.err, "%+v", tc.opts)
		})
	}
	inRolledBackSavepoint(t, tx, func(c *durable.Client) {
		_, err = c.ListTasks(ctx, "no_such_queue", nil)
		require.ErrorIs(t, err, durable.ErrQueueNotFound)
	})
}

func TestGetTask(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	ctx := context.Background()
	v := fillVisibilityQueue(t, tx)
	c, err := durable.New(tx, nil)
	require.NoError(t, err)

	// The sleeping task: one failed run, one sleeping, and a checkpoint.
	d, err := c.GetTask(ctx, v.q, v.retrying.TaskID)
	require.NoError(t, err)
	require.Equal(t, v.retrying.TaskID, d.TaskID)
	require.Equal(t, durable.StateSleeping, d.State)
	require.Equal(t, 2, d.Attempts)
	require.JSONEq(t, `{"name": "error", "message": "try later"}`, string(d.FailureReason))
	require.Len(t, d.Runs, 2)
	require.Equal(t, v.retrying.RunID, d.Runs[0].RunID)
	require.Equal(t, durable.StateFailed, d.Runs[0].State)
	require.Equal(t, "w", *d.Runs[0].ClaimedBy)
	require.JSONEq(t, `{"name": "error", "message": "try later"}`, string(d.Runs[0].FailureReason))
	require.Equal(t, 2, d.Runs[1].Attempt)
	require.Equal(t, durable.StateSleeping, d.Runs[1].State)
	requireTime(t, t0.Add(time.Hour), d.Runs[1].AvailableAt)
	require.Empty(t, d.Checkpoints)

	// A running task with checkpoints, in the order written.
	d, err = c.GetTask(ctx, v.q, v.running.TaskID)
	require.NoError(t, err)
	require.Len(t, d.Runs, 1)
	for i, step := range []string{"second", "first"} {
		setNow(t, tx, t0.Add(time.Duration(i+1)*time.Second))
		mustExec(t, tx, "select durable.set_task_checkpoint_state($1, $2, $3, $4::text::jsonb, $5)",
			v.q, v.running.TaskID, step, fmt.Sprintf(`{"i": %d}`, i), d.Runs[0].RunID)
	}
	d, err = c.GetTask(ctx, v.q, v.running.TaskID)
	require.NoError(t, err)
	require.Equal(t, "run", *d.IdempotencyKey)
	require.True(t, d.KeyHeld)
	require.Len(t, d.Checkpoints, 2)
	require.Equal(t, []string{"second", "first"}, []string{d.Checkpoints[0].StepName, d.Checkpoints[1].StepName})
	require.JSONEq(t, `{"i": 1}`, string(d.Checkpoints[1].State))
	require.Equal(t, 1, d.Checkpoints[0].Attempt)
	require.Equal(t, d.Runs[0].RunID, d.Checkpoints[0].RunID)

	d, err = c.GetTask(ctx, v.q, v.done.TaskID)
	require.NoError(t, err)
	require.JSONEq(t, `{"ok": true}`, string(d.Result))
	require.NotNil(t, d.FinishedAt)

	inRolledBackSavepoint(t, tx, func(c *durable.Client) {
		_, err = c.GetTask(ctx, v.q, durable.UUID{1})
		require.ErrorIs(t, err, durable.ErrTaskNotFound)
	})
	inRolledBackSavepoint(t, tx, func(c *durable.Client) {
		_, err = c.GetTask(ctx, "no_such_queue", v.done.TaskID)
		require.ErrorIs(t, err, durable.ErrQueueNotFound)
	})
}

// TestQueueStatsEstimatesLargeQueues: when the planner estimates more than
// 20,000 finished tasks (holding no key) in a queue, its final states are the
// planner's estimates from the statistics of durable.tasks (the extended
// statistics tasks_queue_state on queue_name and state), and labelled so;
// its live states stay exact. A small queue of the same table keeps exact
// counts.
func TestQueueStatsEstimatesLargeQueues(t *testing.T) {
	t.Parallel()
	pool := testdb.ClonePool(t, 2) // its own statistics: ANALYZE of durable.tasks
	ctx := context.Background()
	c, err := durable.New(pool, nil)
	require.NoError(t, err)
	big, small := "big", "small"
	require.NoError(t, c.CreateQueue(ctx, big))
	require.NoError(t, c.CreateQueue(ctx, small))

	// The big queue: 25,000 finished tasks written directly (21,000
	// completed, 3,000 failed, 1,000 cancelled, one run each), in one
	// statement, then 1,000 live ones through the API, 200 of them claimed.
	_, err = pool.Exec(ctx, `
		with t as (
		  insert into durable.tasks (queue_name, task_id, task_name, params, retry_strategy, max_attempts,
		                             state, attempts, last_attempt_run, result, failure_reason,
		                             enqueued_at, first_started_at, finished_at)
		  select $1, gen_random_uuid(), 'job', jsonb_build_object('i', i), '{"kind": "none"}', 1,
		         s.state, 1, gen_random_uuid(),
		         case when s.state = 'completed' then '1'::jsonb end,
		         case when s.state <> 'completed' then '{"message": "x"}'::jsonb end,
		         $2::timestamptz, $2::timestamptz, $2::timestamptz + interval '1 second'
		    from generate_series(1, 25000) i,
		         lateral (select case when i <= 21000 then 'completed'
		                              when i <= 24000 then 'failed'
		                              else 'cancelled' end as state) s
		  returning queue_name, task_id, last_attempt_run, state, result, failure_reason,
		            first_started_at, finished_at)
		insert into durable.runs (queue_name, run_id, task_id, attempt, state, available_at, claimed_by,
		                          started_at, finished_at, result, failure_reason, created_at)
		select queue_name, last_attempt_run, task_id, 1, state, first_started_at, 'w',
		       first_started_at, finished_at, result, failure_reason, first_started_at
		  from t`, big, t0)
	require.NoError(t, err)
	reqs := make([]durable.SpawnRequest, 1000)
	for i := range reqs {
		reqs[i] = durable.SpawnRequest{TaskName: "job", Params: map[string]any{"i": i}}
	}
	_, err = c.SpawnMany(ctx, big, reqs)
	require.NoError(t, err)
	runs, err := c.ClaimTasks(ctx, big, "w", time.Minute, 200)
	require.NoError(t, err)
	require.Len(t, runs, 200)

	// The small queue: 2 completed, 1 failed, 1 cancelled, 1 pending.
	for range 2 {
		s := exStart(t, pool, small, "")
		completeRun(t, pool, small, s.run, `null`)
	}
	s := exStart(t, pool, small, `{"max_attempts": 1}`)
	failRun(t, pool, small, s.run, `{"message": "boom"}`)
	dropped := spawn(t, pool, spawnCall{queue: small, task: "t", params: str(`{}`)})
	require.Equal(t, "cancelled", cancelTask(t, pool, small, dropped.TaskID))
	spawn(t, pool, spawnCall{queue: small, task: "t", params: str(`{}`)})

	_, err = pool.Exec(ctx, "analyze durable.tasks")
	require.NoError(t, err)
	stats, err := c.QueueStats(ctx, big)
	require.NoError(t, err)
	require.Equal(t, "estimated", stats.TerminalCounts)
	require.EqualValues(t, 800, stats.Pending, "live states are exact")
	require.EqualValues(t, 200, stats.Running)
	require.EqualValues(t, 0, stats.Sleeping)
	require.EqualValues(t, 800, stats.ReadyNow)
	require.NotNil(t, stats.Completed)
	require.NotNil(t, stats.Failed)
	require.NotNil(t, stats.Cancelled)
	// ANALYZE samples 30,000 rows (the default statistics target): here the
	// whole table, so the estimates are close to exact.
	require.InEpsilon(t, 21000, *stats.Completed, 0.05, "completed")
	require.InEpsilon(t, 3000, *stats.Failed, 0.05, "failed")
	require.InEpsilon(t, 1000, *stats.Cancelled, 0.05, "cancelled")
	require.Equal(t, *stats.Completed+*stats.Failed+*stats.Cancelled, stats.Finished)

	one := func(n int64) *int64 { return &n }
	stats, err = c.QueueStats(ctx, small)
	require.NoError(t, err)
	require.Equal(t, &durable.QueueStats{
		Queue: small, Pending: 1, Completed: one(2), Failed: one(1), Cancelled: one(1), Finished: 4,
		ReadyNow: 1, OldestReadyAge: stats.OldestReadyAge, TerminalCounts: "exact", MeasuredAt: stats.MeasuredAt,
	}, stats, "the real clock runs: any age of the ready task will do")
}

func claimedRunIDs(runs []durable.ClaimedRun) []durable.UUID {
	out := make([]durable.UUID, len(runs))
	for i, r := range runs {
		out[i] = r.RunID
	}
	return out
}
