package durable_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable"
)

// taskCheckpoints returns the step names recorded for the task, sorted.
func (env *workerEnv) taskCheckpoints(id durable.UUID) []string {
	env.t.Helper()
	table := pgx.Identifier{"durable", "c_" + env.queue}.Sanitize()
	rows, err := env.pool.Query(env.ctx, "select step_name from "+table+" where task_id = $1 order by step_name", id)
	require.NoError(env.t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(env.t, err)
	return names
}

// taskCount returns how many tasks named name the queue holds, and their ids.
func (env *workerEnv) taskCount(name string) (int, []durable.UUID) {
	env.t.Helper()
	table := pgx.Identifier{"durable", "t_" + env.queue}.Sanitize()
	rows, err := env.pool.Query(env.ctx, "select task_id from "+table+" where task_name = $1 order by enqueued_at", name)
	require.NoError(env.t, err)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[durable.UUID])
	require.NoError(env.t, err)
	return len(ids), ids
}

// taskParent returns the parent_task_id of the task.
func (env *workerEnv) taskParent(id durable.UUID) *durable.UUID {
	env.t.Helper()
	table := pgx.Identifier{"durable", "t_" + env.queue}.Sanitize()
	var parent *durable.UUID
	require.NoError(env.t, env.pool.QueryRow(env.ctx, "select parent_task_id from "+table+" where task_id = $1", id).Scan(&parent))
	return parent
}

// taskExpireLease ends the run's lease behind its worker's back.
func (env *workerEnv) taskExpireLease(runID durable.UUID) {
	env.t.Helper()
	table := pgx.Identifier{"durable", "r_" + env.queue}.Sanitize()
	tag, err := env.pool.Exec(env.ctx,
		"update "+table+" set claim_expires_at = now() - interval '1s' where run_id = $1 and state = 'running'", runID)
	require.NoError(env.t, err)
	require.EqualValues(env.t, 1, tag.RowsAffected())
}

// requireNoOutcomeCalls fails if the worker tried to complete or fail a run.
func (env *workerEnv) requireNoOutcomeCalls() {
	env.t.Helper()
	for _, r := range env.logs.all() {
		require.NotContains(env.t, r.attrs, "action", "no attempt to complete or fail the run: %s", r.msg)
	}
}

// requireQuietLogs fails on any warning or error the worker logged.
func (env *workerEnv) requireQuietLogs() {
	env.t.Helper()
	for _, r := range env.logs.atLeast(slog.LevelWarn) {
		require.Failf(env.t, "unexpected log", "%s %s %v", r.level, r.msg, r.attrs)
	}
}

func TestTaskCrashResumesFromLastStep(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "crash")
	var one, two, three atomic.Int32
	blocked := make(chan struct{}, 1)
	handler := func(ctx context.Context, task *durable.Task) (any, error) {
		a, err := durable.Step(ctx, task, "one", func(context.Context) (string, error) {
			one.Add(1)
			return "one@" + task.RunID.String(), nil
		})
		if err != nil {
			return nil, err
		}
		b, err := durable.Step(ctx, task, "two", func(context.Context) (string, error) {
			two.Add(1)
			return "two@" + task.RunID.String(), nil
		})
		if err != nil {
			return nil, err
		}
		if task.Attempt == 1 {
			// The worker dies here: its handler never gets further.
			blocked <- struct{}{}
			<-ctx.Done()
			return nil, context.Cause(ctx)
		}
		c, err := durable.Step(ctx, task, "three", func(context.Context) (string, error) {
			three.Add(1)
			return "three@" + task.RunID.String(), nil
		})
		if err != nil {
			return nil, err
		}
		return []string{a, b, c}, nil
	}
	w1 := env.newWorker(durable.WorkerConfig{WorkerID: "w1", DrainTimeout: 50 * time.Millisecond})
	w1.Register("flow", handler)
	id := env.spawn("flow", nil, &durable.SpawnOptions{RetryStrategy: workerRetryNow})
	stop1 := env.run(w1)
	recvWithin(t, blocked, workerWaitLimit, "the first worker to run steps one and two")
	require.NoError(t, stop1()) // cut off: the run fails with worker_shutdown and is retried at once

	w2 := env.newWorker(durable.WorkerConfig{WorkerID: "w2"})
	w2.Register("flow", handler)
	env.run(w2)
	r := env.waitState(id, durable.StateCompleted)

	runs := env.runs(id)
	require.Len(t, runs, 2)
	require.Contains(t, string(runs[0].FailureReason), `"worker_shutdown"`)
	var got []string
	require.NoError(t, json.Unmarshal(r.Result, &got))
	first, second := runIDs(t, env, id)
	require.Equal(t, []string{"one@" + first, "two@" + first, "three@" + second}, got,
		"steps one and two come from the first run's checkpoints")
	require.Equal(t, []int32{1, 1, 1}, []int32{one.Load(), two.Load(), three.Load()}, "each step ran exactly once")
	require.Equal(t, []string{"one", "three", "two"}, env.taskCheckpoints(id))
}

// runIDs returns the ids of the task's first two runs.
func runIDs(t *testing.T, env *workerEnv, id durable.UUID) (string, string) {
	t.Helper()
	table := pgx.Identifier{"durable", "r_" + env.queue}.Sanitize()
	rows, err := env.pool.Query(env.ctx, "select run_id::text from "+table+" where task_id = $1 order by attempt", id)
	require.NoError(t, err)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(ids), 2)
	return ids[0], ids[1]
}

func TestTaskStepNotRerunAfterRetry(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "retrystep")
	w := env.newWorker(durable.WorkerConfig{})
	var charges atomic.Int32
	w.Register("pay", func(ctx context.Context, task *durable.Task) (any, error) {
		receipt, err := durable.Step(ctx, task, "charge", func(context.Context) (string, error) {
			charges.Add(1)
			return fmt.Sprintf("receipt of attempt %d", task.Attempt), nil
		})
		if err != nil {
			return nil, err
		}
		if task.Attempt == 1 {
			return nil, errors.New("mail server down")
		}
		return receipt, nil
	})
	id := env.spawn("pay", nil, &durable.SpawnOptions{RetryStrategy: workerRetryNow})
	env.run(w)

	r := env.waitState(id, durable.StateCompleted)
	require.JSONEq(t, `"receipt of attempt 1"`, string(r.Result))
	require.EqualValues(t, 1, charges.Load(), "2 attempts, 1 charge")
	require.Len(t, env.runs(id), 2)
}

func TestTaskManySteps(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "many")
	const n = 60
	w := env.newWorker(durable.WorkerConfig{ClaimTimeout: 10 * time.Second}) // no lease loss on a loaded machine
	var calls atomic.Int32
	w.Register("long", func(ctx context.Context, task *durable.Task) (any, error) {
		sum := 0
		for i := range n {
			v, err := durable.Step(ctx, task, fmt.Sprintf("step-%02d", i), func(context.Context) (int, error) {
				calls.Add(1)
				return i * task.Attempt, nil // a re-run on attempt 2 would double the sum
			})
			if err != nil {
				return nil, err
			}
			sum += v
		}
		if task.Attempt == 1 {
			return nil, errors.New("fail after every step")
		}
		return sum, nil
	})
	id := env.spawn("long", nil, &durable.SpawnOptions{RetryStrategy: workerRetryNow})
	env.run(w)

	r := env.waitState(id, durable.StateCompleted)
	require.JSONEq(t, fmt.Sprint(n*(n-1)/2), string(r.Result))
	require.EqualValues(t, n, calls.Load(), "60 steps over 2 attempts: 60 calls")
	require.Len(t, env.taskCheckpoints(id), n)
}

func TestTaskLargeStepResult(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "large")
	w := env.newWorker(durable.WorkerConfig{ClaimTimeout: 10 * time.Second}) // no lease loss on a loaded machine
	var calls atomic.Int32
	digests := make(chan string, 2)
	w.Register("big", func(ctx context.Context, task *durable.Task) (any, error) {
		blob, err := durable.Step(ctx, task, "blob", func(context.Context) (string, error) {
			calls.Add(1)
			b := make([]byte, 1<<19)
			_, _ = rand.Read(b)
			return hex.EncodeToString(b), nil // 1 MiB of random text
		})
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256([]byte(blob))
		digests <- fmt.Sprintf("%d:%x", len(blob), sum)
		if task.Attempt == 1 {
			return nil, errors.New("fail after the big step")
		}
		return nil, nil
	})
	id := env.spawn("big", nil, &durable.SpawnOptions{RetryStrategy: workerRetryNow})
	env.run(w)

	first := recvWithin(t, digests, workerWaitLimit, "attempt 1")
	second := recvWithin(t, digests, workerWaitLimit, "attempt 2")
	env.waitState(id, durable.StateCompleted)
	require.Regexp(t, `^1048576:`, first)
	require.Equal(t, first, second, "attempt 2 gets the same 1 MiB")
	require.EqualValues(t, 1, calls.Load())
}

func TestTaskRepeatedStepNames(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "loop")
	w := env.newWorker(durable.WorkerConfig{})
	var calls atomic.Int32
	results := make(chan []string, 2)
	w.Register("loop", func(ctx context.Context, task *durable.Task) (any, error) {
		var got []string
		for i := range 5 {
			v, err := durable.Step(ctx, task, "item", func(context.Context) (string, error) {
				calls.Add(1)
				return fmt.Sprintf("item %d of attempt %d", i, task.Attempt), nil
			})
			if err != nil {
				return nil, err
			}
			got = append(got, v)
		}
		// A name that an earlier call was given gets a suffix of its own.
		v, err := durable.Step(ctx, task, "item#2", func(context.Context) (string, error) {
			calls.Add(1)
			return fmt.Sprintf("explicit of attempt %d", task.Attempt), nil
		})
		if err != nil {
			return nil, err
		}
		results <- append(got, v)
		if task.Attempt == 1 {
			return nil, errors.New("fail after the loop")
		}
		return nil, nil
	})
	id := env.spawn("loop", nil, &durable.SpawnOptions{RetryStrategy: workerRetryNow})
	env.run(w)

	first := recvWithin(t, results, workerWaitLimit, "attempt 1")
	second := recvWithin(t, results, workerWaitLimit, "attempt 2")
	env.waitState(id, durable.StateCompleted)
	require.Equal(t, []string{
		"item 0 of attempt 1", "item 1 of attempt 1", "item 2 of attempt 1",
		"item 3 of attempt 1", "item 4 of attempt 1", "explicit of attempt 1",
	}, first)
	require.Equal(t, first, second)
	require.EqualValues(t, 6, calls.Load())
	require.Equal(t, []string{"item", "item#2", "item#2#2", "item#3", "item#4", "item#5"}, env.taskCheckpoints(id))
}

func TestTaskSleepForSuspendsAndWakes(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "sleep")
	w := env.newWorker(durable.WorkerConfig{})
	var before, after atomic.Int32
	calls := make(chan time.Time, 3)
	sleepErrs := make(chan error, 3)
	w.Register("nap", func(ctx context.Context, task *durable.Task) (any, error) {
		calls <- time.Now()
		if _, err := durable.Step(ctx, task, "before", func(context.Context) (bool, error) {
			before.Add(1)
			return true, nil
		}); err != nil {
			return nil, err
		}
		err := task.SleepFor(ctx, "nap", time.Second)
		sleepErrs <- err
		if err != nil {
			return nil, err
		}
		if _, err := durable.Step(ctx, task, "after", func(context.Context) (bool, error) {
			after.Add(1)
			return true, nil
		}); err != nil {
			return nil, err
		}
		return "rested", nil
	})
	id := env.spawn("nap", nil, nil)
	env.run(w)

	start := recvWithin(t, calls, workerWaitLimit, "the first run")
	require.ErrorIs(t, recvWithin(t, sleepErrs, workerWaitLimit, "the sleep"), durable.ErrSuspended)
	env.waitState(id, durable.StateSleeping)
	woken := recvWithin(t, calls, workerWaitLimit, "the run claimed again")
	require.NoError(t, recvWithin(t, sleepErrs, workerWaitLimit, "the replayed sleep"))
	r := env.waitState(id, durable.StateCompleted)

	require.JSONEq(t, `"rested"`, string(r.Result))
	require.GreaterOrEqual(t, woken.Sub(start), 900*time.Millisecond, "not claimed again before the wake time")
	require.Len(t, calls, 0, "two handler calls")
	runs := env.runs(id)
	require.Len(t, runs, 1, "the same run, suspended and claimed again")
	require.Equal(t, "completed", runs[0].State)
	require.EqualValues(t, 1, before.Load())
	require.EqualValues(t, 1, after.Load())
	env.requireQuietLogs()
}

func TestTaskAwaitEventEmittedBefore(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "evbefore")
	stored, err := env.c.EmitEvent(env.ctx, env.queue, "order-42-paid", map[string]int{"amount": 42})
	require.NoError(t, err)
	require.True(t, stored)

	w := env.newWorker(durable.WorkerConfig{})
	var calls atomic.Int32
	w.Register("ship", func(ctx context.Context, task *durable.Task) (any, error) {
		calls.Add(1)
		return task.AwaitEvent(ctx, "paid", "order-42-paid", 0)
	})
	id := env.spawn("ship", nil, nil)
	env.run(w)

	r := env.waitState(id, durable.StateCompleted)
	require.JSONEq(t, `{"amount": 42}`, string(r.Result))
	require.EqualValues(t, 1, calls.Load(), "received at once: no suspension")
	env.requireQuietLogs()
}

func TestTaskAwaitEventEmittedAfter(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "evafter")
	w := env.newWorker(durable.WorkerConfig{})
	awaitErrs := make(chan error, 3)
	w.Register("ship", func(ctx context.Context, task *durable.Task) (any, error) {
		p, err := task.AwaitEvent(ctx, "paid", "order-7-paid", time.Hour)
		awaitErrs <- err
		return p, err
	})
	id := env.spawn("ship", nil, nil)
	env.run(w)

	require.ErrorIs(t, recvWithin(t, awaitErrs, workerWaitLimit, "the first wait"), durable.ErrSuspended)
	env.waitState(id, durable.StateSleeping)
	stored, err := env.c.EmitEvent(env.ctx, env.queue, "order-7-paid", "paid in full")
	require.NoError(t, err)
	require.True(t, stored)

	r := env.waitState(id, durable.StateCompleted)
	require.JSONEq(t, `"paid in full"`, string(r.Result))
	require.NoError(t, recvWithin(t, awaitErrs, workerWaitLimit, "the replayed wait"))
	require.Len(t, awaitErrs, 0, "two handler calls")
	require.Len(t, env.runs(id), 1)
	env.requireQuietLogs()
}

func TestTaskAwaitEventWakesAllWaiters(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "evmany")
	w := env.newWorker(durable.WorkerConfig{})
	w.Register("wait", func(ctx context.Context, task *durable.Task) (any, error) {
		return task.AwaitEvent(ctx, "go", "start", 0)
	})
	emits := make(chan [2]bool, 1)
	w.Register("signal", func(ctx context.Context, task *durable.Task) (any, error) {
		first, err := task.EmitEvent(ctx, "start", map[string]string{"by": "signal"})
		if err != nil {
			return nil, err
		}
		again, err := task.EmitEvent(ctx, "start", "ignored")
		if err != nil {
			return nil, err
		}
		emits <- [2]bool{first, again}
		return nil, nil
	})
	ids := make([]durable.UUID, 5)
	for i := range ids {
		ids[i] = env.spawn("wait", nil, nil)
	}
	env.run(w)
	for _, id := range ids {
		env.waitState(id, durable.StateSleeping)
	}

	env.spawn("signal", nil, nil)
	require.Equal(t, [2]bool{true, false}, recvWithin(t, emits, workerWaitLimit, "the signal"), "the first emit wins")
	for _, id := range ids {
		r := env.waitState(id, durable.StateCompleted)
		require.JSONEq(t, `{"by": "signal"}`, string(r.Result))
	}
	env.requireQuietLogs()
}

func TestTaskAwaitEventTimeout(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "evtimeout")
	w := env.newWorker(durable.WorkerConfig{})
	awaitErrs := make(chan error, 3)
	w.Register("wait", func(ctx context.Context, task *durable.Task) (any, error) {
		_, err := task.AwaitEvent(ctx, "reply", "never-sent", time.Second)
		awaitErrs <- err
		if errors.Is(err, durable.ErrAwaitTimeout) {
			return "gave up", nil
		}
		return nil, err
	})
	id := env.spawn("wait", nil, nil)
	env.run(w)

	require.ErrorIs(t, recvWithin(t, awaitErrs, workerWaitLimit, "the first wait"), durable.ErrSuspended)
	err := recvWithin(t, awaitErrs, workerWaitLimit, "the wait after its timeout")
	require.ErrorIs(t, err, durable.ErrAwaitTimeout)
	require.NotErrorIs(t, err, durable.ErrSuspended)
	r := env.waitState(id, durable.StateCompleted)
	require.JSONEq(t, `"gave up"`, string(r.Result))
	require.Len(t, env.runs(id), 1)
	env.requireQuietLogs()
}

func TestTaskSpawnChildAwaitChild(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "children")
	add := durable.DefineTask[sumParams, sumResult]("add")
	parent := durable.DefineTask[sumParams, sumResult]("add-then-scale")
	w := env.newWorker(durable.WorkerConfig{})
	durable.HandleTask(w, add, func(ctx context.Context, task *durable.Task, p sumParams) (sumResult, error) {
		return sumResult{Sum: p.A + p.B}, nil
	})
	durable.HandleTask(w, parent, func(ctx context.Context, task *durable.Task, p sumParams) (sumResult, error) {
		s, err := add.SpawnChild(ctx, task, "add", p, nil)
		if err != nil {
			return sumResult{}, err
		}
		r, err := add.AwaitChild(ctx, task, "sum", s.TaskID, 0)
		if err != nil {
			return sumResult{}, err
		}
		return sumResult{Sum: r.Sum * 10}, nil
	})
	env.run(w)

	ctx, cancel := context.WithTimeout(env.ctx, workerWaitLimit)
	defer cancel()
	s, err := parent.Spawn(ctx, env.c, env.queue, sumParams{A: 2, B: 3}, nil)
	require.NoError(t, err)
	got, err := parent.WaitForResult(ctx, env.c, env.queue, s.TaskID)
	require.NoError(t, err)
	require.Equal(t, sumResult{Sum: 50}, got)

	n, children := env.taskCount("add")
	require.Equal(t, 1, n)
	require.Equal(t, &s.TaskID, env.taskParent(children[0]))
	require.Equal(t, []string{"add", "sum"}, env.taskCheckpoints(s.TaskID))
	env.requireQuietLogs()
}

func TestTaskChildFailureReachesParent(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "childfail")
	boom := durable.DefineTask[struct{}, string]("boom")
	w := env.newWorker(durable.WorkerConfig{})
	durable.HandleTask(w, boom, func(context.Context, *durable.Task, struct{}) (string, error) {
		return "", durable.NonRetryable(errors.New("kaput"))
	})
	awaitErrs := make(chan error, 3)
	w.Register("parent", func(ctx context.Context, task *durable.Task) (any, error) {
		s, err := boom.SpawnChild(ctx, task, "spawn", struct{}{}, nil)
		if err != nil {
			return nil, err
		}
		_, err = boom.AwaitChild(ctx, task, "await", s.TaskID, 0)
		if errors.Is(err, durable.ErrSuspended) {
			return nil, err
		}
		awaitErrs <- err
		return "saw the failure", nil
	})
	id := env.spawn("parent", nil, nil)
	env.run(w)

	err := recvWithin(t, awaitErrs, workerWaitLimit, "the parent's wait")
	require.ErrorIs(t, err, durable.ErrTaskFailed)
	require.Contains(t, err.Error(), "kaput")
	r := env.waitState(id, durable.StateCompleted)
	require.JSONEq(t, `"saw the failure"`, string(r.Result))
}

func TestTaskParentCancelCascadesToChild(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "cascade")
	w := env.newWorker(durable.WorkerConfig{})
	childStarted := make(chan durable.UUID, 1)
	childCause := make(chan error, 1)
	w.Register("child", func(ctx context.Context, task *durable.Task) (any, error) {
		childStarted <- task.TaskID
		<-ctx.Done()
		childCause <- context.Cause(ctx)
		return nil, context.Cause(ctx)
	})
	w.Register("parent", func(ctx context.Context, task *durable.Task) (any, error) {
		s, err := task.SpawnChild(ctx, "spawn", "child", nil, nil)
		if err != nil {
			return nil, err
		}
		return task.AwaitTask(ctx, "await", s.TaskID, 0)
	})
	id := env.spawn("parent", nil, nil)
	env.run(w)

	child := recvWithin(t, childStarted, workerWaitLimit, "the child to start")
	env.waitState(id, durable.StateSleeping)
	state, err := env.c.CancelTask(env.ctx, env.queue, id)
	require.NoError(t, err)
	require.Equal(t, durable.StateCancelled, state)

	r := env.waitState(child, durable.StateCancelled)
	var reason map[string]any
	require.NoError(t, json.Unmarshal(r.FailureReason, &reason))
	require.Equal(t, "parent_cancelled", reason["name"])
	require.Equal(t, id.String(), reason["parent_task_id"])
	require.ErrorIs(t, recvWithin(t, childCause, workerWaitLimit, "the child's context to end"), durable.ErrTaskCancelled)
}

func TestTaskSpawnChildDeduplicated(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "childdedup")
	w := env.newWorker(durable.WorkerConfig{})
	release := make(chan struct{})
	w.Register("kid", func(ctx context.Context, task *durable.Task) (any, error) {
		select {
		case <-release:
			return "kid done", nil
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	})
	spawned := make(chan *durable.SpawnResult, 3)
	w.Register("parent", func(ctx context.Context, task *durable.Task) (any, error) {
		s, err := task.SpawnChild(ctx, "spawn", "kid", nil, &durable.SpawnOptions{IdempotencyKey: "k1"})
		if err != nil {
			return nil, err
		}
		spawned <- s
		r, err := task.AwaitTask(ctx, "await", s.TaskID, 0)
		if err != nil {
			return nil, err
		}
		return r.Result, nil
	})
	existing := env.spawn("kid", nil, &durable.SpawnOptions{IdempotencyKey: "k1"})
	env.run(w)
	env.waitState(existing, durable.StateRunning)
	parent := env.spawn("parent", nil, nil)

	s := recvWithin(t, spawned, workerWaitLimit, "the parent's spawn")
	require.False(t, s.Created)
	require.Equal(t, existing, s.TaskID)
	env.waitState(parent, durable.StateSleeping)
	close(release)

	r := env.waitState(parent, durable.StateCompleted)
	require.JSONEq(t, `"kid done"`, string(r.Result))
	n, _ := env.taskCount("kid")
	require.Equal(t, 1, n)
	require.Nil(t, env.taskParent(existing), "the holder keeps its own parent: none")
}

func TestTaskSpawnChildReplayDoesNotRespawn(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "childreplay")
	w := env.newWorker(durable.WorkerConfig{})
	w.Register("kid", func(context.Context, *durable.Task) (any, error) { return nil, nil })
	spawned := make(chan *durable.SpawnResult, 2)
	w.Register("parent", func(ctx context.Context, task *durable.Task) (any, error) {
		s, err := task.SpawnChild(ctx, "spawn", "kid", map[string]int{"attempt": task.Attempt}, nil)
		if err != nil {
			return nil, err
		}
		spawned <- s
		if task.Attempt == 1 {
			return nil, errors.New("fail after the spawn")
		}
		return s.TaskID, nil
	})
	id := env.spawn("parent", nil, &durable.SpawnOptions{RetryStrategy: workerRetryNow})
	env.run(w)

	first := recvWithin(t, spawned, workerWaitLimit, "attempt 1")
	second := recvWithin(t, spawned, workerWaitLimit, "attempt 2")
	r := env.waitState(id, durable.StateCompleted)
	require.True(t, first.Created)
	require.Equal(t, first, second, "attempt 2 gets the recorded spawn")
	require.JSONEq(t, fmt.Sprintf("%q", first.TaskID), string(r.Result))
	n, _ := env.taskCount("kid")
	require.Equal(t, 1, n, "2 attempts, 1 child")
}

func TestTaskCheckpointAfterLeaseLossRefused(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "leaselost")
	// A 30s lease: no heartbeat during the test, so the durable call is the
	// first to find out.
	w := env.newWorker(durable.WorkerConfig{ClaimTimeout: 30 * time.Second})
	var one, two atomic.Int32
	started := make(chan durable.UUID, 1)
	proceed := make(chan struct{})
	stepErrs := make(chan error, 1)
	causes := make(chan error, 1)
	w.Register("job", func(ctx context.Context, task *durable.Task) (any, error) {
		if _, err := durable.Step(ctx, task, "one", func(context.Context) (int, error) { return int(one.Add(1)), nil }); err != nil {
			return nil, err
		}
		if task.Attempt == 1 {
			started <- task.RunID
			<-proceed
		}
		_, err := durable.Step(ctx, task, "two", func(context.Context) (int, error) { return int(two.Add(1)), nil })
		if task.Attempt == 1 {
			stepErrs <- err
			causes <- context.Cause(ctx)
			// Claim success: the worker must not complete the run.
			return "finished anyway", nil
		}
		if err != nil {
			return nil, err
		}
		return "second attempt", nil
	})
	id := env.spawn("job", nil, &durable.SpawnOptions{RetryStrategy: workerRetryNow})
	env.run(w)

	runID := recvWithin(t, started, workerWaitLimit, "the first run")
	env.taskExpireLease(runID)
	close(proceed)
	err := recvWithin(t, stepErrs, workerWaitLimit, "the refused checkpoint")
	require.ErrorIs(t, err, durable.ErrLeaseLost)
	require.ErrorIs(t, err, durable.ErrRunNotRunning)
	require.ErrorIs(t, recvWithin(t, causes, workerWaitLimit, "the handler's context"), durable.ErrLeaseLost)

	r := env.waitState(id, durable.StateCompleted)
	require.JSONEq(t, `"second attempt"`, string(r.Result))
	runs := env.runs(id)
	require.Len(t, runs, 2)
	require.Contains(t, string(runs[0].FailureReason), `"claim_timeout"`, "recovered by the lease sweep, not failed by the worker")
	require.EqualValues(t, 1, one.Load())
	require.EqualValues(t, 2, two.Load(), "the refused step runs again on attempt 2")
	env.requireNoOutcomeCalls()
}

func TestTaskSpawnChildAfterLeaseLossLeavesNoChild(t *testing.T) {
	t.Parallel()
	env := newWorkerEnv(t, "spawnlost")
	w := env.newWorker(durable.WorkerConfig{ClaimTimeout: 30 * time.Second})
	w.Register("kid", func(context.Context, *durable.Task) (any, error) { return nil, nil })
	started := make(chan durable.UUID, 1)
	proceed := make(chan struct{})
	spawnErrs := make(chan error, 1)
	w.Register("parent", func(ctx context.Context, task *durable.Task) (any, error) {
		if task.Attempt == 1 {
			started <- task.RunID
			<-proceed
		}
		s, err := task.SpawnChild(ctx, "spawn", "kid", nil, nil)
		if task.Attempt == 1 {
			spawnErrs <- err
		}
		if err != nil {
			return nil, err
		}
		return s.TaskID, nil
	})
	id := env.spawn("parent", nil, &durable.SpawnOptions{RetryStrategy: workerRetryNow})
	env.run(w)

	env.taskExpireLease(recvWithin(t, started, workerWaitLimit, "the first run"))
	close(proceed)
	require.ErrorIs(t, recvWithin(t, spawnErrs, workerWaitLimit, "the refused spawn"), durable.ErrRunNotRunning)

	r := env.waitState(id, durable.StateCompleted)
	n, kids := env.taskCount("kid")
	require.Equal(t, 1, n, "the refused checkpoint took its spawn with it")
	require.JSONEq(t, fmt.Sprintf("%q", kids[0]), string(r.Result))
	env.requireNoOutcomeCalls()
}

func TestTaskDurableCallsNeedWorkerTask(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	task := &durable.Task{Queue: "q"}
	ran := false
	_, err := durable.Step(ctx, task, "s", func(context.Context) (int, error) { ran = true; return 1, nil })
	require.Error(t, err)
	require.False(t, ran)
	require.Error(t, task.SleepFor(ctx, "s", time.Second))
	_, err = task.AwaitEvent(ctx, "s", "e", 0)
	require.Error(t, err)
	_, err = task.SpawnChild(ctx, "s", "child", nil, nil)
	require.Error(t, err)
}
