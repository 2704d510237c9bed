package durable

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"time"
)

// WorkerConfig configures a Worker. Zero fields take their defaults.
type WorkerConfig struct {
	// Queue is the queue to work. Required.
	Queue string
	// WorkerID names this worker in leases and logs. Defaults to
	// "<hostname>:<pid>:<random>".
	WorkerID string
	// Concurrency is how many handlers run at once. Defaults to 10.
	Concurrency int
	// ClaimTimeout is the lease a claim takes; the heartbeat renews it while
	// the handler runs. Defaults to 30s.
	ClaimTimeout time.Duration
	// HeartbeatInterval is how often a running task's lease is extended.
	// Defaults to ClaimTimeout / 3.
	HeartbeatInterval time.Duration
	// PollInterval is how long an idle worker waits before looking for work
	// again. Defaults to 250ms.
	PollInterval time.Duration
	// DrainTimeout is how long Run waits, after its context ends, for
	// in-flight handlers before cancelling them. Defaults to 30s.
	DrainTimeout time.Duration
	// Logger receives the worker's logs. Defaults to the client's logger.
	Logger *slog.Logger
}

// Task is a claimed run as its handler sees it.
type Task struct {
	// Queue is the queue the task is on.
	Queue string
	// TaskID identifies the task across its attempts.
	TaskID UUID
	// RunID identifies this attempt.
	RunID UUID
	// Attempt is this run's attempt number, from 1.
	Attempt int
	// MaxAttempts is how many attempts the task may have.
	MaxAttempts int
	// Name is the task name.
	Name string
	// Params are the task's params as JSON.
	Params json.RawMessage
	// Headers are the headers the task was spawned with, or nil.
	Headers map[string]any
}

// HandlerFunc handles one run of a task. Its result is marshalled to JSON and
// stored as the task's result; an error fails the run, which is retried under
// the task's retry strategy unless the error is wrapped with NonRetryable. The
// context is cancelled when the task is cancelled, the lease is lost, or the
// worker's drain timeout ends.
type HandlerFunc func(ctx context.Context, task *Task) (any, error)

// errNonRetryable marks errors that fail a task without retrying it.
var errNonRetryable = errors.New("durable: not retryable")

type nonRetryableError struct{ err error }

func (e nonRetryableError) Error() string { return e.err.Error() }
func (e nonRetryableError) Unwrap() []error {
	return []error{e.err, errNonRetryable}
}

// NonRetryable wraps err so that the run's failure fails the task at once,
// whatever attempts remain.
func NonRetryable(err error) error {
	if err == nil {
		return nil
	}
	return nonRetryableError{err: err}
}

// IsNonRetryable reports whether err was wrapped with NonRetryable.
func IsNonRetryable(err error) bool { return errors.Is(err, errNonRetryable) }

// Worker claims runs of one queue and executes them with registered handlers.
type Worker struct {
	client   *Client
	cfg      WorkerConfig
	handlers map[string]HandlerFunc
}

// NewWorker returns a worker for cfg.Queue. Register handlers, then Run it.
func (c *Client) NewWorker(cfg WorkerConfig) (*Worker, error) {
	panic("not implemented")
}

// Register sets the handler of task name. Register before Run.
func (w *Worker) Register(name string, h HandlerFunc) {
	panic("not implemented")
}

// HandleTask registers a typed handler for def: params are decoded into P and
// the returned R is stored as the result.
func HandleTask[P, R any](w *Worker, def TaskDef[P, R], fn func(ctx context.Context, task *Task, params P) (R, error)) {
	panic("not implemented")
}

// Run claims and executes runs until ctx ends, then stops claiming, waits up
// to DrainTimeout for in-flight handlers, cancels the rest and returns. It
// returns nil after a shutdown through ctx.
func (w *Worker) Run(ctx context.Context) error {
	panic("not implemented")
}
