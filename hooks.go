package durable

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"
)

// Hooks are functions the client and its workers call when something happens
// to a task, so that programs can feed their own metrics and traces (see the
// README's Prometheus example) without durable depending on any of them.
// Every field is optional: nil means no call.
//
// Hooks run synchronously on the goroutine that did the work (a spawn's
// caller, the worker's claim loop, a handler's goroutine or the worker's
// completion batcher), after the database call they report has returned: they
// must be quick and must not block, like incrementing a counter or ending a
// span; hand anything slow to a goroutine of your own. A hook that panics is
// recovered: the panic is logged (at Error, with its stack) and the work goes
// on as if the hook had returned, so a faulty hook can never crash a worker or
// fail a spawn.
type Hooks struct {
	// OnSpawn is called after each successful spawn (Spawn, SpawnTx, SpawnMany
	// and SpawnManyTx: once per task), created or deduplicated. Inside the
	// caller's transaction the task exists only once that transaction commits.
	OnSpawn func(ctx context.Context, e SpawnEvent)
	// OnClaim is called for each run a worker claimed, before its handler
	// starts.
	OnClaim func(ctx context.Context, e RunEvent)
	// OnComplete is called once a run's completion is recorded.
	OnComplete func(ctx context.Context, e RunEvent)
	// OnFail is called once a run's failure is recorded (a handler's error,
	// a panic, a missing handler, a shutdown); the task is then retried or,
	// with no attempts left or a non-retryable error, failed.
	OnFail func(ctx context.Context, e FailEvent)
	// OnLeaseLost is called when a worker finds that a run it was executing
	// is no longer its own because its lease expired (a missed heartbeat, or
	// another worker recovered the run), so the handler's outcome is dropped.
	// A cancelled task does not call it.
	OnLeaseLost func(ctx context.Context, e LeaseLostEvent)
}

// SpawnEvent describes one spawn.
type SpawnEvent struct {
	Queue    string
	TaskName string
	TaskID   UUID
	RunID    UUID
	// Created is true when the spawn created the task, false when it returned
	// the live task that holds the same key (deduplicated).
	Created bool
	// State is the task's state.
	State TaskState
}

// RunEvent describes a run that a worker claimed or completed.
type RunEvent struct {
	Queue    string
	WorkerID string
	TaskName string
	TaskID   UUID
	RunID    UUID
	// Attempt is the run's attempt number, from 1.
	Attempt int
	// Duration is, for OnComplete, the time from the claim to the completion
	// being recorded; zero for OnClaim.
	Duration time.Duration
}

// FailEvent describes a recorded failure of a run.
type FailEvent struct {
	RunEvent
	// Reason is the failure reason's name: "error", "panic", "unknown_task",
	// "worker_shutdown", "invalid_params", "invalid_result" or a name the
	// handler gave.
	Reason string
	// Message is the failure reason's message.
	Message string
	// Retryable is false when the error was marked non-retryable: the task
	// fails at once. When true, the task is retried if attempts remain.
	Retryable bool
}

// LeaseLostEvent describes a run lost by its worker.
type LeaseLostEvent struct {
	RunEvent
	// Cause says how the loss was found; it matches ErrLeaseLost or
	// ErrRunNotRunning.
	Cause error
}

// callHook runs fn(ctx, e), recovering and logging a panic. fn may be nil.
func callHook[E any](ctx context.Context, logger *slog.Logger, name string, fn func(context.Context, E), e E) {
	if fn == nil {
		return
	}
	defer func() {
		if v := recover(); v != nil {
			logger.Error("durable: hook panicked; ignored", "hook", name, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
		}
	}()
	fn(ctx, e)
}
