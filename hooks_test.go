package durable_test

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/internal/testdb"
)

// hookLog records every hook call, in order.
type hookLog struct {
	mu     sync.Mutex
	spawns []durable.SpawnEvent
	claims []durable.RunEvent
	done   []durable.RunEvent
	fails  []durable.FailEvent
	lost   []durable.LeaseLostEvent
}

func (h *hookLog) hooks() *durable.Hooks {
	return &durable.Hooks{
		OnSpawn: func(_ context.Context, e durable.SpawnEvent) {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.spawns = append(h.spawns, e)
		},
		OnClaim: func(_ context.Context, e durable.RunEvent) {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.claims = append(h.claims, e)
		},
		OnComplete: func(_ context.Context, e durable.RunEvent) {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.done = append(h.done, e)
		},
		OnFail: func(_ context.Context, e durable.FailEvent) {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.fails = append(h.fails, e)
		},
		OnLeaseLost: func(_ context.Context, e durable.LeaseLostEvent) {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.lost = append(h.lost, e)
		},
	}
}

// snapshot returns copies of what was recorded.
func (h *hookLog) snapshot() hookLog {
	h.mu.Lock()
	defer h.mu.Unlock()
	return hookLog{
		spawns: append([]durable.SpawnEvent(nil), h.spawns...),
		claims: append([]durable.RunEvent(nil), h.claims...),
		done:   append([]durable.RunEvent(nil), h.done...),
		fails:  append([]durable.FailEvent(nil), h.fails...),
		lost:   append([]durable.LeaseLostEvent(nil), h.lost...),
	}
}

// newHookEnv is newWorkerEnv with a client whose Config carries hooks.
func newHookEnv(t *testing.T, queue string, hooks *durable.Hooks) *workerEnv {
	t.Helper()
	env := newWorkerEnv(t, queue)
	c, err := durable.New(env.pool, &durable.Config{Logger: slog.New(&workerLogHandler{c: env.logs}), Hooks: hooks})
	require.NoError(t, err)
	env.c = c
	return env
}

// TestHooksOnSpawn: Spawn, SpawnTx and SpawnMany call OnSpawn once per task,
// saying whether it was created or deduplicated; a failed spawn calls nothing.
func TestHooksOnSpawn(t *testing.T) {
	t.Parallel()
	var h hookLog
	tx := testdb.Tx(t)
	ctx := context.Background()
	c, err := durable.New(tx, &durable.Config{Hooks: h.hooks()})
	require.NoError(t, err)
	q := newQueue(t, tx)

	first, err := c.Spawn(ctx, q, "mail", map[string]int{"n": 1}, &durable.SpawnOptions{IdempotencyKey: "k"})
	require.NoError(t, err)
	dup, err := c.SpawnTx(ctx, tx, q, "mail", map[string]int{"n": 2}, &durable.SpawnOptions{IdempotencyKey: "k"})
	require.NoError(t, err)
	many, err := c.SpawnMany(ctx, q, []durable.SpawnRequest{
		{TaskName: "mail", Options: &durable.SpawnOptions{IdempotencyKey: "k"}},
		{TaskName: "other"},
	})
	require.NoError(t, err)
	_, err = c.Spawn(ctx, "no_such_queue", "mail", nil, nil)
	require.ErrorIs(t, err, durable.ErrQueueNotFound)

	got := h.snapshot().spawns
	require.Len(t, got, 4)
	want := []durable.SpawnEvent{
		{Queue: q, TaskName: "mail", TaskID: first.TaskID, RunID: first.RunID, Created: true, State: durable.StatePending},
		{Queue: q, TaskName: "mail", TaskID: first.TaskID, RunID: first.RunID, Created: false, State: durable.StatePending},
		{Queue: q, TaskName: "mail", TaskID: first.TaskID, RunID: first.RunID, Created: false, State: durable.StatePending},
		{Queue: q, TaskName: "other", TaskID: many[1].TaskID, RunID: many[1].RunID, Created: true, State: durable.StatePending},
	}
	require.Equal(t, want, got)
	require.Equal(t, first.TaskID, dup.TaskID)
}

// TestHooksWorker: a worker calls OnClaim for every run it claims, OnComplete
// once a completion is recorded and OnFail once a failure is, with the run's
// identity, the reason and whether it may be retried.
func TestHooksWorker(t *testing.T) {
	t.Parallel()
	var h hookLog
	env := newHookEnv(t, "hooks", h.hooks())
	w := env.newWorker(durable.WorkerConfig{WorkerID: "hook-worker"})
	w.Register("ok", func(ctx context.Context, task *durable.Task) (any, error) {
		time.Sleep(20 * time.Millisecond)
		return "fine", nil
	})
	w.Register("bad", func(ctx context.Context, task *durable.Task) (any, error) {
		return nil, durable.NonRetryable(errors.New("broken input"))
	})
	w.Register("flaky", func(ctx context.Context, task *durable.Task) (any, error) {
		if task.Attempt == 1 {
			panic("first attempt explodes")
		}
		return "second time lucky", nil
	})
	ok := env.spawn("ok", nil, nil)
	bad := env.spawn("bad", nil, nil)
	flaky := env.spawn("flaky", nil, &durable.SpawnOptions{RetryStrategy: workerRetryNow})
	env.run(w)
	env.waitState(ok, durable.StateCompleted)
	env.waitState(bad, durable.StateFailed)
	env.waitState(flaky, durable.StateCompleted)

	var got hookLog
	require.Eventually(t, func() bool {
		got = h.snapshot()
		return len(got.done) == 2 && len(got.fails) == 2
	}, workerWaitLimit, 10*time.Millisecond)
	require.Len(t, got.spawns, 3, "the client's OnSpawn fires for the env's spawns")
	require.Len(t, got.claims, 4, "ok, bad and two attempts of flaky")
	require.Empty(t, got.lost)

	byTask := func(evs []durable.RunEvent, id durable.UUID) []durable.RunEvent {
		var out []durable.RunEvent
		for _, e := range evs {
			if e.TaskID == id {
				out = append(out, e)
			}
		}
		return out
	}
	for _, e := range got.claims {
		require.Equal(t, env.queue, e.Queue)
		require.Equal(t, "hook-worker", e.WorkerID)
		require.Zero(t, e.Duration)
	}
	okClaims := byTask(got.claims, ok)
	require.Len(t, okClaims, 1)
	require.Equal(t, "ok", okClaims[0].TaskName)
	require.Equal(t, 1, okClaims[0].Attempt)
	okDone := byTask(got.done, ok)
	require.Len(t, okDone, 1)
	require.Equal(t, okClaims[0].RunID, okDone[0].RunID)
	require.GreaterOrEqual(t, okDone[0].Duration, 20*time.Millisecond, "from the claim to the recorded completion")

	flakyClaims := byTask(got.claims, flaky)
	require.Len(t, flakyClaims, 2)
	require.Equal(t, []int{1, 2}, []int{flakyClaims[0].Attempt, flakyClaims[1].Attempt})
	flakyDone := byTask(got.done, flaky)
	require.Len(t, flakyDone, 1)
	require.Equal(t, flakyClaims[1].RunID, flakyDone[0].RunID)

	fails := map[durable.UUID]durable.FailEvent{}
	for _, f := range got.fails {
		fails[f.TaskID] = f
	}
	require.Equal(t, "error", fails[bad].Reason)
	require.Equal(t, "broken input", fails[bad].Message)
	require.False(t, fails[bad].Retryable)
	require.Equal(t, "bad", fails[bad].TaskName)
	require.Equal(t, "panic", fails[flaky].Reason)
	require.Equal(t, "first attempt explodes", fails[flaky].Message)
	require.True(t, fails[flaky].Retryable)
	require.Equal(t, flakyClaims[0].RunID, fails[flaky].RunID)
	require.Equal(t, 1, fails[flaky].Attempt)
}

// TestHooksOnLeaseLost: a run whose lease expires behind the worker's back
// calls OnLeaseLost (once, with a cause matching ErrLeaseLost), never
// OnComplete or OnFail for that run; a WorkerConfig's hooks replace the
// client's.
func TestHooksOnLeaseLost(t *testing.T) {
	t.Parallel()
	var clientHooks, workerHooks hookLog
	env := newHookEnv(t, "hooklease", clientHooks.hooks())
	w := env.newWorker(durable.WorkerConfig{ClaimTimeout: time.Second, Hooks: workerHooks.hooks()})
	started := make(chan durable.UUID, 1)
	w.Register("job", func(ctx context.Context, task *durable.Task) (any, error) {
		if task.Attempt > 1 {
			return "second attempt", nil
		}
		started <- task.RunID
		<-ctx.Done()
		return nil, ctx.Err()
	})
	id := env.spawn("job", nil, &durable.SpawnOptions{RetryStrategy: workerRetryNow})
	env.run(w)
	runID := recvWithin(t, started, workerWaitLimit, "the handler to start")
	table := pgx.Identifier{"durable", "r_" + env.queue}.Sanitize()
	tag, err := env.pool.Exec(env.ctx,
		"update "+table+" set claim_expires_at = now() - interval '1 minute' where run_id = $1 and state = 'running'", runID)
	require.NoError(t, err)
	require.EqualValues(t, 1, tag.RowsAffected())
	env.waitState(id, durable.StateCompleted)

	var got hookLog
	require.Eventually(t, func() bool {
		got = workerHooks.snapshot()
		return len(got.done) == 1 && len(got.lost) == 1
	}, workerWaitLimit, 10*time.Millisecond, "the retry may complete before the heartbeat finds the lease lost")
	require.Len(t, got.lost, 1)
	require.Equal(t, runID, got.lost[0].RunID)
	require.Equal(t, id, got.lost[0].TaskID)
	require.Equal(t, 1, got.lost[0].Attempt)
	require.ErrorIs(t, got.lost[0].Cause, durable.ErrLeaseLost)
	require.Empty(t, got.fails, "the lost run's outcome is dropped")
	require.NotEqual(t, runID, got.done[0].RunID)
	require.Len(t, got.claims, 2)

	c := clientHooks.snapshot()
	require.Len(t, c.spawns, 1, "OnSpawn stays the client's")
	require.Empty(t, c.claims, "the worker's own hooks replace the client's")
	require.Empty(t, c.lost)
}

// TestHooksPanicIsRecovered: hooks that panic are logged and ignored; spawns
// succeed and the worker completes its tasks.
func TestHooksPanicIsRecovered(t *testing.T) {
	t.Parallel()
	boom := func() { panic("hook bug") }
	env := newHookEnv(t, "hookpanic", &durable.Hooks{
		OnSpawn:    func(context.Context, durable.SpawnEvent) { boom() },
		OnClaim:    func(context.Context, durable.RunEvent) { boom() },
		OnComplete: func(context.Context, durable.RunEvent) { boom() },
	})
	w := env.newWorker(durable.WorkerConfig{})
	w.Register("job", func(ctx context.Context, task *durable.Task) (any, error) { return 1, nil })
	ids := []durable.UUID{env.spawn("job", nil, nil), env.spawn("job", nil, nil)}
	env.run(w)
	for _, id := range ids {
		env.waitState(id, durable.StateCompleted)
	}
	require.Eventually(t, func() bool {
		n := map[any]int{}
		for _, r := range env.logs.atLeast(slog.LevelError) {
			if r.msg == "durable: hook panicked; ignored" {
				require.Equal(t, "hook bug", r.attrs["panic"])
				n[r.attrs["hook"]]++
			}
		}
		return n["OnSpawn"] == 2 && n["OnClaim"] == 2 && n["OnComplete"] == 2
	}, workerWaitLimit, 10*time.Millisecond)
}
