package durable_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/internal/testdb"
)

// workerWaitLimit bounds every wait for the worker to do something.
const workerWaitLimit = 15 * time.Second

// workerEnv is a migrated database of the test's own with one queue.
type workerEnv struct {
	t     *testing.T
	ctx   context.Context
	pool  *pgxpool.Pool
	c     *durable.Client
	queue string
	logs  *workerLogs
}

func newWorkerEnv(t *testing.T, queue string) *workerEnv {
	t.Helper()
	pool := testdb.ClonePool(t, 20)
	logs := &workerLogs{}
	c, err := durable.New(pool, &durable.Config{Logger: slog.New(&workerLogHandler{c: logs})})
	require.NoError(t, err)
	env := &workerEnv{t: t, ctx: context.Background(), pool: pool, c: c, queue: queue, logs: logs}
	require.NoError(t, c.CreateQueue(env.ctx, queue))
	t.Cleanup(func() {
		if t.Failed() {
			for _, r := range logs.all() {
				fmt.Fprintf(os.Stderr, "%s: %s %s %v\n", t.Name(), r.level, r.msg, r.attrs)
			}
		}
	})
	return env
}

// newWorker returns a worker on the env's queue with quick test timings
// where cfg leaves them zero.
func (env *workerEnv) newWorker(cfg durable.WorkerConfig) *durable.Worker {
	env.t.Helper()
	cfg.Queue = env.queue
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 50 * time.Millisecond
	}
	if cfg.ClaimTimeout == 0 {
		cfg.ClaimTimeout = 2 * time.Second
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = 2 * time.Second
	}
	w, err := env.c.NewWorker(cfg)
	require.NoError(env.t, err)
	return w
}

// run starts w.Run and returns a function that stops it and returns Run's
// error. The worker is stopped at cleanup if the test has not stopped it.
func (env *workerEnv) run(w *durable.Worker) (stop func() error) {
	ctx, cancel := context.WithCancel(env.ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(workerWaitLimit):
				runErr = errors.New("Run did not return")
			}
		})
		return runErr
	}
	env.t.Cleanup(func() { _ = stop() })
	return stop
}

func (env *workerEnv) spawn(name string, params any, opts *durable.SpawnOptions) durable.UUID {
	env.t.Helper()
	r, err := env.c.Spawn(env.ctx, env.queue, name, params, opts)
	require.NoError(env.t, err)
	return r.TaskID
}

// waitState polls the task until it is in state and returns its outcome.
func (env *workerEnv) waitState(id durable.UUID, state durable.TaskState) *durable.TaskResult {
	env.t.Helper()
	var last *durable.TaskResult
	require.Eventually(env.t, func() bool {
		r, err := env.c.GetTaskResult(env.ctx, env.queue, id)
		if err != nil {
			return false
		}
		last = r
		return r.State == state
	}, workerWaitLimit, 10*time.Millisecond, "task %s never reached %s", id, state)
	return last
}

// workerRunRow is one run of a task as the queue's run table holds it.
type workerRunRow struct {
	Attempt       int
	State         string
	ClaimedBy     *string
	FailureReason json.RawMessage
}

// runs returns the task's runs by attempt.
func (env *workerEnv) runs(id durable.UUID) []workerRunRow {
	env.t.Helper()
	table := pgx.Identifier{"durable", "r_" + env.queue}.Sanitize()
	rows, err := env.pool.Query(env.ctx,
		"select attempt, state, claimed_by, failure_reason from "+table+" where task_id = $1 order by attempt", id)
	require.NoError(env.t, err)
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (workerRunRow, error) {
		var r workerRunRow
		err := row.Scan(&r.Attempt, &r.State, &r.ClaimedBy, &r.FailureReason)
		return r, err
	})
	require.NoError(env.t, err)
	return out
}

// recvWithin returns the next value of ch, failing the test after limit.
func recvWithin[T any](t *testing.T, ch <-chan T, limit time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(limit):
		t.Fatalf("timed out after %s waiting for %s", limit, what)
		panic("unreachable")
	}
}

// workerLogs keeps the records a worker logs.
type workerLogs struct {
	mu   sync.Mutex
	recs []workerLogRecord
}

type workerLogRecord struct {
	level slog.Level
	msg   string
	attrs map[string]any
}

func (c *workerLogs) all() []workerLogRecord {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]workerLogRecord(nil), c.recs...)
}

// atLeast returns the records at level or above.
func (c *workerLogs) atLeast(level slog.Level) []workerLogRecord {
	var out []workerLogRecord
	for _, r := range c.all() {
		if r.level >= level {
			out = append(out, r)
		}
	}
	return out
}

type workerLogHandler struct {
	c     *workerLogs
	attrs []slog.Attr
}

func (h *workerLogHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *workerLogHandler) Handle(_ context.Context, r slog.Record) error {
	rec := workerLogRecord{level: r.Level, msg: r.Message, attrs: map[string]any{}}
	for _, a := range h.attrs {
		rec.attrs[a.Key] = a.Value.Any()
	}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value.Any()
		return true
	})
	h.c.mu.Lock()
	h.c.recs = append(h.c.recs, rec)
	h.c.mu.Unlock()
	return nil
}

func (h *workerLogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &workerLogHandler{c: h.c, attrs: append(append([]slog.Attr(nil), h.attrs...), attrs...)}
}

func (h *workerLogHandler) WithGroup(string) slog.Handler { return h }

var workerRetryNow = &durable.RetryStrategy{Kind: durable.RetryNone}

func TestWorkerConfigValidation(t *testing.T) {
	t.Parallel()
	c, err := durable.New(testdb.Tx(t), nil)
	require.NoError(t, err)
	for _, tc := range []struct {
		name string
		cfg  durable.WorkerConfig
		want error
	}{
		{"queue missing", durable.WorkerConfig{}, durable.ErrInvalidQueueName},
		{"negative concurrency", durable.WorkerConfig{Queue: "q", Concurrency: -1}, durable.ErrInvalidArgument},
		{"negative claim timeout", durable.WorkerConfig{Queue: "q", ClaimTimeout: -time.Second}, durable.ErrInvalidArgument},
		{"negative heartbeat", durable.WorkerConfig{Queue: "q", HeartbeatInterval: -time.Second}, durable.ErrInvalidArgument},
		{"negative poll interval", durable.WorkerConfig{Queue: "q", PollInterval: -time.Millisecond}, durable.ErrInvalidArgument},
		{"negative drain timeout", durable.WorkerConfig{Queue: "q", DrainTimeout: -time.Second}, durable.ErrInvalidArgument},
		{"heartbeat not shorter than lease", durable.WorkerConfig{Queue: "q", ClaimTimeout: 2 * time.Second, HeartbeatInterval: 2 * time.Second}, durable.ErrInvalidArgument},
		{"defaults", durable.WorkerConfig{Queue: "q"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := c.NewWorker(tc.cfg)
			if tc.want == nil {
				require.NoError(t, err)
				require.NotNil(t, w)
				return
			}
			require.ErrorIs(t, err, tc.want)
			require.Nil(t, w)
		})
	}
}

func TestWorkerDefaultIDNamesHostAndPid(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "ids")
	w := env.newWorker(durable.WorkerConfig{})
	w.Register("job", func(context.Context, *durable.Task) (any, error) { return nil, nil })
	id := env.spawn("job", nil, nil)
	env.run(w)
	env.waitState(id, durable.StateCompleted)

	runs := env.runs(id)
	require.Len(t, runs, 1)
	require.NotNil(t, runs[0].ClaimedBy)
	host, err := os.Hostname()
	require.NoError(t, err)
	require.Regexp(t, "^"+regexp.QuoteMeta(fmt.Sprintf("%s:%d:", host, os.Getpid()))+"[0-9a-f]{8}$", *runs[0].ClaimedBy)
}

func TestWorkerRunTwiceAndLateRegister(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "misuse")
	w := env.newWorker(durable.WorkerConfig{})
	ran := make(chan struct{}, 1)
	w.Register("job", func(context.Context, *durable.Task) (any, error) {
		ran <- struct{}{}
		return nil, nil
	})
	stop := env.run(w)
	// Once the first Run has claimed, it is surely running.
	id := env.spawn("job", nil, nil)
	recvWithin(t, ran, workerWaitLimit, "the first Run to run a task")

	err := w.Run(env.ctx)
	require.Error(t, err)
	require.Contains(t, err.Error(), "already running")
	require.Panics(t, func() {
		w.Register("late", func(context.Context, *durable.Task) (any, error) { return nil, nil })
	})

	env.waitState(id, durable.StateCompleted)
	require.NoError(t, stop())
}

func TestWorkerConcurrencyLimit(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "conc")
	w := env.newWorker(durable.WorkerConfig{Concurrency: 3})
	var running, peak atomic.Int32
	w.Register("slow", func(ctx context.Context, task *durable.Task) (any, error) {
		n := running.Add(1)
		defer running.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		time.Sleep(100 * time.Millisecond)
		return task.Attempt, nil
	})
	ids := make([]durable.UUID, 12)
	for i := range ids {
		ids[i] = env.spawn("slow", map[string]int{"i": i}, nil)
	}
	env.run(w)

	for _, id := range ids {
		r := env.waitState(id, durable.StateCompleted)
		require.JSONEq(t, `1`, string(r.Result))
	}
	require.Equal(t, int32(3), peak.Load(), "12 tasks, Concurrency 3: exactly 3 handlers at the peak")
}

func TestWorkerHeartbeatKeepsLeaseAlive(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "heartbeat")
	// ClaimTimeout 1s: the heartbeat runs every 333ms; the handler takes 3s.
	w1 := env.newWorker(durable.WorkerConfig{WorkerID: "w1", ClaimTimeout: time.Second})
	started := make(chan struct{}, 1)
	w1.Register("long", func(ctx context.Context, task *durable.Task) (any, error) {
		started <- struct{}{}
		select {
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-time.After(3 * time.Second):
			return "done", nil
		}
	})
	w2 := env.newWorker(durable.WorkerConfig{WorkerID: "w2", ClaimTimeout: time.Second})
	var w2Calls atomic.Int32
	w2.Register("long", func(context.Context, *durable.Task) (any, error) {
		w2Calls.Add(1)
		return "stolen", nil
	})

	id := env.spawn("long", nil, &durable.SpawnOptions{RetryStrategy: workerRetryNow})
	env.run(w1)
	recvWithin(t, started, workerWaitLimit, "w1 to start the task")
	env.run(w2) // sweeps expired leases every 50ms from now on

	r := env.waitState(id, durable.StateCompleted)
	require.JSONEq(t, `"done"`, string(r.Result))
	runs := env.runs(id)
	require.Len(t, runs, 1, "one run: the lease never expired")
	require.Equal(t, "w1", *runs[0].ClaimedBy)
	require.Zero(t, w2Calls.Load())
}

func TestWorkerCancelReachesHandler(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "cancel")
	// Heartbeats every 667ms.
	w := env.newWorker(durable.WorkerConfig{ClaimTimeout: 2 * time.Second})
	started := make(chan struct{}, 1)
	causes := make(chan error, 1)
	w.Register("wait", func(ctx context.Context, task *durable.Task) (any, error) {
		started <- struct{}{}
		<-ctx.Done()
		causes <- context.Cause(ctx)
		// Claim success: the worker must drop it, not try to complete the run.
		return "finished anyway", nil
	})
	id := env.spawn("wait", nil, nil)
	stop := env.run(w)
	recvWithin(t, started, workerWaitLimit, "the handler to start")

	state, err := env.c.CancelTask(env.ctx, env.queue, id)
	require.NoError(t, err)
	require.Equal(t, durable.StateCancelled, state)
	// Within two heartbeats, and some slack for a loaded test machine.
	cause := recvWithin(t, causes, 2*time.Second, "the handler's context to end")
	require.ErrorIs(t, cause, durable.ErrTaskCancelled)

	require.NoError(t, stop())
	r, err := env.c.GetTaskResult(env.ctx, env.queue, id)
	require.NoError(t, err)
	require.Equal(t, durable.StateCancelled, r.State)
	require.Nil(t, r.Result)
	for _, r := range env.logs.all() {
		require.NotContains(t, r.attrs, "action", "no attempt to complete or fail the cancelled run: %s", r.msg)
	}
}

func TestWorkerLeaseLostCancelsHandler(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "lease")
	w := env.newWorker(durable.WorkerConfig{ClaimTimeout: time.Second})
	started := make(chan durable.UUID, 1)
	causes := make(chan error, 1)
	w.Register("job", func(ctx context.Context, task *durable.Task) (any, error) {
		if task.Attempt > 1 {
			return "second attempt", nil
		}
		started <- task.RunID
		<-ctx.Done()
		causes <- context.Cause(ctx)
		return nil, ctx.Err()
	})
	id := env.spawn("job", nil, &durable.SpawnOptions{RetryStrategy: workerRetryNow})
	env.run(w)
	runID := recvWithin(t, started, workerWaitLimit, "the handler to start")

	// Expire the lease behind the worker's back.
	table := pgx.Identifier{"durable", "r_" + env.queue}.Sanitize()
	tag, err := env.pool.Exec(env.ctx,
		"update "+table+" set claim_expires_at = now() - interval '1 minute' where run_id = $1 and state = 'running'", runID)
	require.NoError(t, err)
	require.EqualValues(t, 1, tag.RowsAffected())

	cause := recvWithin(t, causes, 2*time.Second, "the handler's context to end")
	require.ErrorIs(t, cause, durable.ErrLeaseLost)
	// The expired lease is recovered and the task retried.
	r := env.waitState(id, durable.StateCompleted)
	require.JSONEq(t, `"second attempt"`, string(r.Result))
	runs := env.runs(id)
	require.Equal(t, "failed", runs[0].State)
	require.Contains(t, string(runs[0].FailureReason), `"claim_timeout"`)
}

func TestWorkerPanicFailsRunAndRetries(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "panics")
	w := env.newWorker(durable.WorkerConfig{})
	w.Register("fragile", func(ctx context.Context, task *durable.Task) (any, error) {
		if task.Attempt == 1 {
			panic(fmt.Sprintf("boom %d", 42))
		}
		return "recovered", nil
	})
	id := env.spawn("fragile", nil, &durable.SpawnOptions{RetryStrategy: workerRetryNow})
	env.run(w)

	r := env.waitState(id, durable.StateCompleted)
	require.JSONEq(t, `"recovered"`, string(r.Result))
	runs := env.runs(id)
	require.Len(t, runs, 2)
	var reason struct{ Name, Message, Stack string }
	require.NoError(t, json.Unmarshal(runs[0].FailureReason, &reason))
	require.Equal(t, "panic", reason.Name)
	require.Equal(t, "boom 42", reason.Message)
	require.Contains(t, reason.Stack, "worker_test.go", "the stack shows where the handler panicked")
}

func TestWorkerNonRetryableFailsAtOnce(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "nonretry")
	w := env.newWorker(durable.WorkerConfig{})
	var calls atomic.Int32
	w.Register("strict", func(context.Context, *durable.Task) (any, error) {
		calls.Add(1)
		return nil, durable.NonRetryable(errors.New("bad input"))
	})
	id := env.spawn("strict", nil, &durable.SpawnOptions{MaxAttempts: 5, RetryStrategy: workerRetryNow})
	env.run(w)

	r := env.waitState(id, durable.StateFailed)
	require.JSONEq(t, `{"name": "error", "message": "bad input", "retryable": false}`, string(r.FailureReason))
	require.Len(t, env.runs(id), 1)
	require.EqualValues(t, 1, calls.Load())
}

func TestWorkerErrorIsRetried(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "retry")
	w := env.newWorker(durable.WorkerConfig{})
	w.Register("flaky", func(ctx context.Context, task *durable.Task) (any, error) {
		if task.Attempt == 1 {
			return nil, errors.New("flaky")
		}
		return task.Attempt, nil
	})
	id := env.spawn("flaky", nil, &durable.SpawnOptions{RetryStrategy: workerRetryNow})
	env.run(w)

	r := env.waitState(id, durable.StateCompleted)
	require.JSONEq(t, `2`, string(r.Result))
	runs := env.runs(id)
	require.Len(t, runs, 2)
	require.JSONEq(t, `{"name": "error", "message": "flaky"}`, string(runs[0].FailureReason))
}

func TestWorkerUnknownTaskIsRetryableElsewhere(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "unknown")
	a := env.newWorker(durable.WorkerConfig{WorkerID: "a"})
	a.Register("known", func(context.Context, *durable.Task) (any, error) { return nil, nil })
	id := env.spawn("mystery", nil, &durable.SpawnOptions{
		MaxAttempts:   2,
		RetryStrategy: &durable.RetryStrategy{Kind: durable.RetryFixed, Base: time.Second},
	})
	stopA := env.run(a)
	r := env.waitState(id, durable.StateSleeping)
	require.NoError(t, stopA())

	var reason map[string]any
	require.NoError(t, json.Unmarshal(r.FailureReason, &reason))
	require.Equal(t, "unknown_task", reason["name"])
	require.Equal(t, `no handler registered for task "mystery" on this worker`, reason["message"])
	require.NotContains(t, reason, "retryable")

	b := env.newWorker(durable.WorkerConfig{WorkerID: "b"})
	b.Register("mystery", func(context.Context, *durable.Task) (any, error) { return "solved", nil })
	env.run(b)
	r = env.waitState(id, durable.StateCompleted)
	require.JSONEq(t, `"solved"`, string(r.Result))
	require.Equal(t, "b", *env.runs(id)[1].ClaimedBy)
}

func TestWorkerShutdownDrainsThenRetriesCutOffRuns(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "drain")
	w1 := env.newWorker(durable.WorkerConfig{WorkerID: "w1", DrainTimeout: 500 * time.Millisecond})
	started := make(chan string, 2)
	shuttingDown := make(chan struct{})
	quickCtxErr := make(chan error, 1)
	stubbornCause := make(chan error, 1)
	w1.Register("quick", func(ctx context.Context, task *durable.Task) (any, error) {
		started <- "quick"
		<-shuttingDown
		time.Sleep(100 * time.Millisecond) // finishes well within DrainTimeout
		quickCtxErr <- ctx.Err()
		return "quick done", nil
	})
	w1.Register("stubborn", func(ctx context.Context, task *durable.Task) (any, error) {
		started <- "stubborn"
		<-ctx.Done()
		stubbornCause <- context.Cause(ctx)
		return nil, context.Cause(ctx)
	})
	quick := env.spawn("quick", nil, nil)
	// The default retry strategy would wait 1s; a shutdown retries at once.
	stubborn := env.spawn("stubborn", nil, nil)
	stop1 := env.run(w1)
	recvWithin(t, started, workerWaitLimit, "a handler to start")
	recvWithin(t, started, workerWaitLimit, "the other handler to start")

	close(shuttingDown)
	require.NoError(t, stop1())
	require.NoError(t, recvWithin(t, quickCtxErr, time.Second, "the quick handler"), "quick's context stays live during the drain")
	require.ErrorIs(t, recvWithin(t, stubbornCause, time.Second, "the stubborn handler"), durable.ErrWorkerShutdown)

	r, err := env.c.GetTaskResult(env.ctx, env.queue, quick)
	require.NoError(t, err)
	require.Equal(t, durable.StateCompleted, r.State)
	require.JSONEq(t, `"quick done"`, string(r.Result))

	r, err = env.c.GetTaskResult(env.ctx, env.queue, stubborn)
	require.NoError(t, err)
	require.Equal(t, durable.StatePending, r.State, "retry_at now: ready at once, not sleeping")
	var reason map[string]any
	require.NoError(t, json.Unmarshal(r.FailureReason, &reason))
	require.Equal(t, "worker_shutdown", reason["name"])

	w2 := env.newWorker(durable.WorkerConfig{WorkerID: "w2"})
	w2.Register("stubborn", func(context.Context, *durable.Task) (any, error) { return "second worker", nil })
	env.run(w2)
	r = env.waitState(stubborn, durable.StateCompleted)
	require.JSONEq(t, `"second worker"`, string(r.Result))
	runs := env.runs(stubborn)
	require.Len(t, runs, 2)
	require.Equal(t, "w2", *runs[1].ClaimedBy)
}

func TestWorkerShutdownAbandonsHandlerIgnoringCancellation(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "abandon")
	w := env.newWorker(durable.WorkerConfig{DrainTimeout: 100 * time.Millisecond})
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	returned := make(chan struct{})
	w.Register("deaf", func(ctx context.Context, task *durable.Task) (any, error) {
		defer close(returned)
		started <- struct{}{}
		<-release // ignores ctx
		return "too late", nil
	})
	id := env.spawn("deaf", nil, nil)
	stop := env.run(w)
	recvWithin(t, started, workerWaitLimit, "the handler to start")

	require.NoError(t, stop())
	r, err := env.c.GetTaskResult(env.ctx, env.queue, id)
	require.NoError(t, err)
	require.Equal(t, durable.StatePending, r.State)
	require.Contains(t, string(r.FailureReason), `"worker_shutdown"`)

	// The abandoned handler's late success is dropped.
	close(release)
	<-returned
	require.Never(t, func() bool {
		r, err := env.c.GetTaskResult(env.ctx, env.queue, id)
		return err != nil || r.State != durable.StatePending
	}, 200*time.Millisecond, 20*time.Millisecond)
}

type sumParams struct {
	A, B int
}

type sumResult struct {
	Sum int
}

func TestWorkerHandleTaskRoundTrip(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "typed")
	add := durable.DefineTask[sumParams, sumResult]("add")
	w := env.newWorker(durable.WorkerConfig{})
	durable.HandleTask(w, add, func(ctx context.Context, task *durable.Task, p sumParams) (sumResult, error) {
		return sumResult{Sum: p.A + p.B}, nil
	})
	env.run(w)

	ctx, cancel := context.WithTimeout(env.ctx, workerWaitLimit)
	defer cancel()
	s, err := add.Spawn(ctx, env.c, env.queue, sumParams{A: 2, B: 3}, nil)
	require.NoError(t, err)
	got, err := add.WaitForResult(ctx, env.c, env.queue, s.TaskID)
	require.NoError(t, err)
	require.Equal(t, sumResult{Sum: 5}, got)

	// Params that do not decode into sumParams fail at once.
	bad := env.spawn("add", json.RawMessage(`"two and three"`), &durable.SpawnOptions{MaxAttempts: 5})
	_, err = add.WaitForResult(ctx, env.c, env.queue, bad)
	require.ErrorIs(t, err, durable.ErrTaskFailed)
	r, err := env.c.GetTaskResult(ctx, env.queue, bad)
	require.NoError(t, err)
	var reason map[string]any
	require.NoError(t, json.Unmarshal(r.FailureReason, &reason))
	require.Equal(t, "invalid_params", reason["name"])
	require.Equal(t, false, reason["retryable"])
	require.Contains(t, reason["message"], `"add"`)
	require.Len(t, env.runs(bad), 1)
}

func TestWorkerRunsOnlyCommittedSpawns(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "spawntx")
	w := env.newWorker(durable.WorkerConfig{})
	var mu sync.Mutex
	var seen []durable.UUID
	w.Register("job", func(ctx context.Context, task *durable.Task) (any, error) {
		mu.Lock()
		seen = append(seen, task.TaskID)
		mu.Unlock()
		return "ran", nil
	})
	ran := func() []durable.UUID {
		mu.Lock()
		defer mu.Unlock()
		return append([]durable.UUID(nil), seen...)
	}
	env.run(w)

	rolledBack, err := env.pool.Begin(env.ctx)
	require.NoError(t, err)
	gone, err := env.c.SpawnTx(env.ctx, rolledBack, env.queue, "job", nil, nil)
	require.NoError(t, err)
	require.NoError(t, rolledBack.Rollback(env.ctx))

	tx, err := env.pool.Begin(env.ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(env.ctx) }()
	kept, err := env.c.SpawnTx(env.ctx, tx, env.queue, "job", nil, nil)
	require.NoError(t, err)
	require.Never(t, func() bool { return len(ran()) > 0 }, 300*time.Millisecond, 20*time.Millisecond,
		"no task runs before its transaction commits")
	require.NoError(t, tx.Commit(env.ctx))

	r := env.waitState(kept.TaskID, durable.StateCompleted)
	require.JSONEq(t, `"ran"`, string(r.Result))
	require.Equal(t, []durable.UUID{kept.TaskID}, ran())
	_, err = env.c.GetTaskResult(env.ctx, env.queue, gone.TaskID)
	require.ErrorIs(t, err, durable.ErrTaskNotFound)
}

func TestWorkerClaimErrorsAreRetried(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "present")
	env.queue = "later" // not created yet: every claim fails
	w := env.newWorker(durable.WorkerConfig{})
	w.Register("job", func(context.Context, *durable.Task) (any, error) { return "ok", nil })
	env.run(w)

	require.Eventually(t, func() bool {
		for _, r := range env.logs.atLeast(slog.LevelError) {
			if err, ok := r.attrs["error"].(error); ok && errors.Is(err, durable.ErrQueueNotFound) {
				return true
			}
		}
		return false
	}, workerWaitLimit, 10*time.Millisecond, "the claim error is logged")

	require.NoError(t, env.c.CreateQueue(env.ctx, env.queue))
	id := env.spawn("job", nil, nil)
	r := env.waitState(id, durable.StateCompleted)
	require.JSONEq(t, `"ok"`, string(r.Result))
}

func TestWorkerLeaseEndsWithoutHeartbeat(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "silent")
	w := env.newWorker(durable.WorkerConfig{ClaimTimeout: time.Second})
	started := make(chan durable.UUID, 1)
	causes := make(chan error, 1)
	w.Register("job", func(ctx context.Context, task *durable.Task) (any, error) {
		if task.Attempt > 1 {
			return "second attempt", nil
		}
		started <- task.RunID
		<-ctx.Done()
		causes <- context.Cause(ctx)
		return nil, ctx.Err()
	})
	id := env.spawn("job", nil, &durable.SpawnOptions{RetryStrategy: workerRetryNow})
	env.run(w)
	runID := recvWithin(t, started, workerWaitLimit, "the handler to start")

	// Hold the run's row lock: every extend_claim now hangs, as on a stuck
	// connection, until the worker's own lease deadline cuts it off.
	tx, err := env.pool.Begin(env.ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(env.ctx) }()
	table := pgx.Identifier{"durable", "r_" + env.queue}.Sanitize()
	_, err = tx.Exec(env.ctx, "select 1 from "+table+" where run_id = $1 for update", runID)
	require.NoError(t, err)

	// The lease is 1s: the handler hears of it within about 1.4s.
	cause := recvWithin(t, causes, 3*time.Second, "the handler's context to end")
	require.ErrorIs(t, cause, durable.ErrLeaseLost)
	require.Contains(t, cause.Error(), "no successful heartbeat")
	require.NoError(t, tx.Rollback(env.ctx))

	// The expired lease is recovered and the task retried.
	r := env.waitState(id, durable.StateCompleted)
	require.JSONEq(t, `"second attempt"`, string(r.Result))
	runs := env.runs(id)
	require.Equal(t, "failed", runs[0].State)
	require.Contains(t, string(runs[0].FailureReason), `"claim_timeout"`)
}

func TestWorkerUnencodableResultFailsTask(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "badresult")
	w := env.newWorker(durable.WorkerConfig{})
	var calls atomic.Int32
	w.Register("chan", func(context.Context, *durable.Task) (any, error) {
		calls.Add(1)
		return make(chan int), nil
	})
	id := env.spawn("chan", nil, &durable.SpawnOptions{MaxAttempts: 5, RetryStrategy: workerRetryNow})
	env.run(w)

	r := env.waitState(id, durable.StateFailed)
	var reason map[string]any
	require.NoError(t, json.Unmarshal(r.FailureReason, &reason))
	require.Equal(t, "invalid_result", reason["name"])
	require.Equal(t, false, reason["retryable"])
	require.EqualValues(t, 1, calls.Load())
}
