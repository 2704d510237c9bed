package durable_test

// Wake-ups by LISTEN/NOTIFY: which SQL calls notify durable_<queue>, and the
// worker that listens (or, with DisableNotify, only polls). Also the worker's
// batched completions.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/internal/testdb"
)

// ntListen returns a connection of pool listening on the queue's channel and
// registered as a waiter.
func ntListen(t *testing.T, pool *pgxpool.Pool, q string) *pgxpool.Conn {
	t.Helper()
	conn := acquireConns(t, pool, 1)[0]
	mustExec(t, conn, "listen "+pgx.Identifier{"durable_" + q}.Sanitize())
	require.True(t, ntRegister(t, conn, q))
	return conn
}

// ntRegister calls register_waiter on conn.
func ntRegister(t *testing.T, conn *pgxpool.Conn, q string) bool {
	t.Helper()
	var ok bool
	require.NoError(t, conn.QueryRow(context.Background(), "select durable.register_waiter($1)", q).Scan(&ok))
	return ok
}

// ntExpect asserts that conn receives a notification on the queue's channel
// (within 5s) when want is true, and none within 300ms when it is false.
func ntExpect(t *testing.T, conn *pgxpool.Conn, q string, want bool, what string) {
	t.Helper()
	limit := 300 * time.Millisecond
	if want {
		limit = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	n, err := conn.Conn().WaitForNotification(ctx)
	if !want {
		require.Error(t, err, "%s: unexpected notification %+v", what, n)
		require.False(t, conn.Conn().IsClosed())
		return
	}
	require.NoError(t, err, "%s: no notification", what)
	require.Equal(t, "durable_"+q, n.Channel, what)
	require.Equal(t, "", n.Payload, what)
}

// TestNotifyWhenRunClaimable: every call that makes a run claimable now
// notifies durable_<queue> when it commits; calls that do not, do not.
func TestNotifyWhenRunClaimable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.ClonePool(t, 5)
	q := newQueue(t, pool)
	listener := ntListen(t, pool, q)
	expect := func(want bool, what string) {
		t.Helper()
		ntExpect(t, listener, q, want, what)
	}

	s := spawn(t, pool, spawnCall{queue: q, task: "t", params: str(`{}`), key: str("k")})
	expect(true, "spawn")
	spawn(t, pool, spawnCall{queue: q, task: "t", params: str(`{}`), key: str("k")})
	expect(false, "spawn returning the key's holder")
	spawn(t, pool, spawnCall{queue: q, task: "t", params: str(`{}`), options: availableAtOption("2100-01-01T00:00:00Z")})
	expect(false, "spawn available later")

	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`)})
	expect(false, "spawn not yet committed")
	require.NoError(t, tx.Commit(ctx))
	expect(true, "spawn committed")

	// Retries: one due at once notifies, a delayed one does not.
	runs := claim(t, pool, q, "w", 30, 10)
	require.Len(t, runs, 2)
	mustExec(t, pool, "select durable.fail_run($1, $2, '{}', '2100-01-01T00:00:00Z')", q, runs[0].RunID)
	expect(false, "fail_run retrying later")
	mustExec(t, pool, "select durable.fail_run($1, $2, '{}', '2000-01-01T00:00:00Z')", q, runs[1].RunID)
	expect(true, "fail_run retrying at once")
	r := claimOne(t, pool, q)
	failRun(t, pool, q, r.RunID, `{"retryable": false}`)
	expect(false, "fail_run failing the task")
	mustExec(t, pool, "select * from durable.retry_task($1, $2)", q, r.TaskID)
	expect(true, "retry_task")

	// Wake-ups: a task end or an event that wakes a sleeping run notifies.
	p := claimOne(t, pool, q)
	parent := exStarted{task: p.TaskID, run: p.RunID}
	child := exStart(t, pool, q, "")
	expect(true, "spawn of the child")
	require.Equal(t, "suspended", exAwaitTask(t, pool, q, parent, "child", child.task).Status)
	other := exStart(t, pool, q, "")
	expect(true, "spawn of another")
	completeRun(t, pool, q, other.run, `1`)
	expect(false, "complete_run waking nobody")
	completeRun(t, pool, q, child.run, `1`)
	expect(true, "complete_run waking the parent")
	require.Equal(t, parent.run, claimOne(t, pool, q).RunID)
	require.Equal(t, "suspended", exAwaitEvent(t, pool, q, parent, "ev", "go", nil).Status)
	exEmit(t, pool, q, "nobody-waits", `1`)
	expect(false, "emit_event waking nobody")
	exEmit(t, pool, q, "go", `1`)
	expect(true, "emit_event waking the parent")
	require.Equal(t, parent.run, claimOne(t, pool, q).RunID)
	require.Equal(t, "received", exAwaitEvent(t, pool, q, parent, "ev", "go", nil).Status)

	child = exStart(t, pool, q, "")
	expect(true, "spawn of a second child")
	require.Equal(t, "suspended", exAwaitTask(t, pool, q, parent, "child2", child.task).Status)
	other = exStart(t, pool, q, "")
	expect(true, "spawn of another")
	completeRuns(t, pool, q, crBatch([]durable.UUID{other.run}))
	expect(false, "complete_runs waking nobody")
	completeRuns(t, pool, q, crBatch([]durable.UUID{child.run, s.RunID}))
	expect(true, "complete_runs waking the parent")
}

// TestNotifyOnlyRegisteredWaiters: a transaction that makes a run claimable
// notifies only when some session is registered as a waiter; a registration
// refused while a spawn that notified nobody is uncommitted, and granted after
// its commit, is followed by a claim that sees that spawn's run.
func TestNotifyOnlyRegisteredWaiters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.ClonePool(t, 5)
	q := newQueue(t, pool)
	conns := acquireConns(t, pool, 2)
	unregistered, waiter := conns[0], conns[1]
	for _, c := range conns {
		mustExec(t, c, "listen "+pgx.Identifier{"durable_" + q}.Sanitize())
	}
	registrations := func() int {
		var n int
		require.NoError(t, pool.QueryRow(ctx,
			`select count(*) from pg_locks where locktype = 'advisory' and classid = 1685418594 and pid = $1`,
			waiter.Conn().PgConn().PID()).Scan(&n))
		return n
	}

	spawn(t, pool, spawnCall{queue: q, task: "t", params: str(`{}`)})
	ntExpect(t, waiter, q, false, "spawn with no waiter registered")

	require.True(t, ntRegister(t, waiter, q))
	require.True(t, ntRegister(t, waiter, q), "registering twice")
	require.Equal(t, 1, registrations())
	spawn(t, pool, spawnCall{queue: q, task: "t", params: str(`{}`)})
	ntExpect(t, waiter, q, true, "spawn with a waiter registered")
	ntExpect(t, unregistered, q, true, "the channel's other listener hears it too")

	mustExec(t, waiter, "select durable.unregister_waiter($1)", q)
	require.Equal(t, 0, registrations())
	mustExec(t, waiter, "select durable.unregister_waiter($1)", q) // not registered: nothing to do
	spawn(t, pool, spawnCall{queue: q, task: "t", params: str(`{}`)})
	ntExpect(t, waiter, q, false, "spawn after unregistering")

	// A spawn deciding not to notify holds the queue's gate until it ends.
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	inflight := spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`)})
	require.False(t, ntRegister(t, waiter, q), "registering while a spawn that notified nobody is uncommitted")
	require.Equal(t, 0, registrations())
	require.NoError(t, tx.Commit(ctx))
	require.True(t, ntRegister(t, waiter, q))
	var ids []durable.UUID
	for _, r := range claim(t, pool, q, "w", 30, 10) {
		ids = append(ids, r.TaskID)
	}
	require.Contains(t, ids, inflight.TaskID, "the claim after registering sees the spawn that notified nobody")
	ntExpect(t, waiter, q, false, "nothing spawned since")

	// A rolled-back spawn releases the gate too.
	require.NoError(t, waiter.Conn().Close(ctx))
	tx, err = pool.Begin(ctx)
	require.NoError(t, err)
	spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`)})
	require.NoError(t, tx.Rollback(ctx))
	var ok bool
	require.NoError(t, pool.QueryRow(ctx, "select durable.register_waiter($1)", q).Scan(&ok))
	require.True(t, ok)

}

// TestWorkerNoLostWakeUps: with polling practically off (one hour), 8
// spawners racing one idle-going worker get all 400 tasks started: every
// wake-up the worker needs reaches it.
func TestWorkerNoLostWakeUps(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "notify_no_loss")
	w := env.newWorker(durable.WorkerConfig{PollInterval: time.Hour, Concurrency: 2})
	const spawners, each = 8, 50
	started := make(chan durable.UUID, spawners*each)
	w.Register("t", func(ctx context.Context, task *durable.Task) (any, error) {
		started <- task.TaskID
		return nil, nil
	})
	env.run(w)
	env.ntListening(t, 0)

	errs := make(chan error, spawners)
	for i := 0; i < spawners; i++ {
		go func(seed int) {
			for j := 0; j < each; j++ {
				if _, err := env.c.Spawn(env.ctx, env.queue, "t", nil, nil); err != nil {
					errs <- err
					return
				}
				time.Sleep(time.Duration((seed*7+j*13)%4) * time.Millisecond)
			}
			errs <- nil
		}(i)
	}
	for i := 0; i < spawners; i++ {
		require.NoError(t, <-errs)
	}
	seen := map[durable.UUID]bool{}
	for len(seen) < spawners*each {
		seen[recvWithin(t, started, 20*time.Second, fmt.Sprintf("start %d of %d", len(seen)+1, spawners*each))] = true
	}
}

// ntListening waits until a backend of the worker's database runs LISTEN on
// the queue's channel and returns its pid.
func (env *workerEnv) ntListening(t *testing.T, notPID int) int {
	t.Helper()
	query := "listen " + pgx.Identifier{"durable_" + env.queue}.Sanitize()
	var pid int
	require.Eventually(t, func() bool {
		err := env.pool.QueryRow(env.ctx,
			`select pid from pg_stat_activity
			  where datname = current_database() and pid <> $2
			    and (query = $1 or query like 'select durable.%register_waiter($1)')`, query, notPID).Scan(&pid)
		return err == nil
	}, workerWaitLimit, 10*time.Millisecond, "no backend listens on the queue's channel")
	return pid
}

// ntStarted registers a handler for "t" that reports each start.
func ntStarted(w *durable.Worker) <-chan durable.UUID {
	started := make(chan durable.UUID, 10)
	w.Register("t", func(ctx context.Context, task *durable.Task) (any, error) {
		started <- task.TaskID
		return "ok", nil
	})
	return started
}

// TestWorkerNotifyWakesIdleWorker: a worker polling every 10s starts a task
// spawned while it is idle within 5s (half its poll), thanks to the notification.
func TestWorkerNotifyWakesIdleWorker(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "notify_wakes")
	w := env.newWorker(durable.WorkerConfig{PollInterval: 10 * time.Second})
	started := ntStarted(w)
	env.run(w)
	env.ntListening(t, 0)
	time.Sleep(100 * time.Millisecond) // let the claim loop go idle
	for i := 0; i < 3; i++ {
		id := env.spawn("t", nil, nil)
		require.Equal(t, id, recvWithin(t, started, 5*time.Second, "the start of a task spawned while the worker was idle"))
		env.waitState(id, durable.StateCompleted)
	}
}

// TestWorkerPollsWithNotifyDisabled: with DisableNotify the worker keeps no
// listening connection and finds work by polling.
func TestWorkerPollsWithNotifyDisabled(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "notify_off")
	w := env.newWorker(durable.WorkerConfig{PollInterval: 100 * time.Millisecond, DisableNotify: true})
	started := ntStarted(w)
	env.run(w)
	for i := 0; i < 3; i++ {
		id := env.spawn("t", nil, nil)
		require.Equal(t, id, recvWithin(t, started, workerWaitLimit, "the start of a task"))
		env.waitState(id, durable.StateCompleted)
	}
	var listeners int
	require.NoError(t, env.pool.QueryRow(env.ctx,
		"select count(*) from pg_stat_activity where datname = current_database() and query like 'listen %'").Scan(&listeners))
	require.Zero(t, listeners)
}

// TestWorkerListensAgainAfterConnectionLoss: when its listening connection is
// terminated, the worker logs it, listens again on a new connection, and
// notifications wake it again.
func TestWorkerListensAgainAfterConnectionLoss(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "notify_again")
	w := env.newWorker(durable.WorkerConfig{PollInterval: 10 * time.Second})
	started := ntStarted(w)
	env.run(w)
	pid := env.ntListening(t, 0)
	mustExec(t, env.pool, "select pg_terminate_backend($1)", pid)
	env.ntListening(t, pid)
	time.Sleep(100 * time.Millisecond)
	id := env.spawn("t", nil, nil)
	require.Equal(t, id, recvWithin(t, started, 5*time.Second, "the start of a task after listening again"))
	var warned bool
	for _, r := range env.logs.atLeast(slog.LevelWarn) {
		warned = warned || r.msg == "durable: not listening for notifications; polling until listening again"
	}
	require.True(t, warned, "the loss of the listening connection was not logged")
}

// TestWorkerCompletesInBatches: 300 no-op tasks on a worker of concurrency 100
// all complete with their results, through complete_runs: complete_run is
// never called, and complete_runs fewer times than there are tasks.
func TestWorkerCompletesInBatches(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	name := testdb.Clone(t)
	admin := testdb.Pool(t, name, 2)
	mustExec(t, admin, fmt.Sprintf("alter database %s set track_functions = 'pl'", pgx.Identifier{name}.Sanitize()))
	admin.Close()
	pool := testdb.Pool(t, name, 20)
	c, err := durable.New(pool, &durable.Config{Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	const queue, tasks = "batches", 300
	require.NoError(t, c.CreateQueue(ctx, queue))
	ids := make([]durable.UUID, tasks)
	for i := range ids {
		r, err := c.Spawn(ctx, queue, "t", i, nil)
		require.NoError(t, err)
		ids[i] = r.TaskID
	}
	w, err := c.NewWorker(durable.WorkerConfig{Queue: queue, Concurrency: 100, PollInterval: 50 * time.Millisecond})
	require.NoError(t, err)
	w.Register("t", func(ctx context.Context, task *durable.Task) (any, error) {
		return map[string]json.RawMessage{"echo": task.Params}, nil
	})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()
	require.Eventually(t, func() bool {
		var left int
		require.NoError(t, pool.QueryRow(ctx, "select count(*) from durable.t_batches where state <> 'completed'").Scan(&left))
		return left == 0
	}, workerWaitLimit, 20*time.Millisecond)
	stop()
	require.NoError(t, <-done)
	for i, id := range ids {
		r, err := c.GetTaskResult(ctx, queue, id)
		require.NoError(t, err)
		require.JSONEq(t, fmt.Sprintf(`{"echo": %d}`, i), string(r.Result))
	}

	// Function call counts reach the statistics when the backends exit.
	pool.Close()
	check := testdb.Pool(t, name, 1)
	var batchCalls, singleCalls int64
	require.Eventually(t, func() bool {
		require.NoError(t, check.QueryRow(ctx, `
			select coalesce(sum(calls) filter (where funcname = 'complete_runs'), 0),
			       coalesce(sum(calls) filter (where funcname = 'complete_run'), 0)
			  from pg_stat_user_functions where schemaname = 'durable'`).Scan(&batchCalls, &singleCalls))
		return batchCalls > 0
	}, workerWaitLimit, 50*time.Millisecond)
	t.Logf("%d tasks completed by %d complete_runs calls", tasks, batchCalls)
	require.Zero(t, singleCalls)
	require.Less(t, batchCalls, int64(tasks))
}

// TestWorkerBatchReportsCancelledRun: a handler whose task is cancelled just
// before it returns (too soon for a heartbeat to notice) has its result
// refused by complete_runs, which the worker logs as it logs a refused
// complete_run; the task stays cancelled.
func TestWorkerBatchReportsCancelledRun(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "batch_cancelled")
	w := env.newWorker(durable.WorkerConfig{})
	w.Register("t", func(ctx context.Context, task *durable.Task) (any, error) {
		if _, err := env.c.CancelTask(ctx, task.Queue, task.TaskID); err != nil {
			return nil, err
		}
		return "too late", nil
	})
	env.run(w)
	id := env.spawn("t", nil, nil)
	r := env.waitState(id, durable.StateCancelled)
	require.Nil(t, r.Result)
	require.Eventually(t, func() bool {
		for _, rec := range env.logs.atLeast(slog.LevelWarn) {
			err, _ := rec.attrs["error"].(error)
			if rec.msg == "durable: run is no longer this worker's; outcome dropped" &&
				rec.attrs["action"] == "complete" && rec.attrs["task_id"] == id &&
				errors.Is(err, durable.ErrTaskCancelled) && errors.Is(err, durable.ErrRunNotRunning) {
				return true
			}
		}
		return false
	}, workerWaitLimit, 10*time.Millisecond, "the refused completion was not logged")
}
