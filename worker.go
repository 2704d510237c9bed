package durable

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// WorkerConfig configures a Worker. Zero fields take their defaults.
type WorkerConfig struct {
	// Queue is the queue to work. Required.
	Queue string
	// WorkerID names this worker in leases and logs. Defaults to
	// "<hostname>:<pid>:<8 random hex digits>".
	WorkerID string
	// Concurrency is how many handlers run at once. Defaults to 10.
	Concurrency int
	// ClaimTimeout is the lease a claim takes; the heartbeat renews it while
	// the handler runs. Defaults to 30s.
	ClaimTimeout time.Duration
	// HeartbeatInterval is how often a running task's lease is extended. It
	// must be shorter than ClaimTimeout. Defaults to ClaimTimeout / 3.
	HeartbeatInterval time.Duration
	// PollInterval is how long an idle worker waits before looking for work
	// again, unless a notification wakes it sooner (see DisableNotify).
	// Defaults to 250ms.
	PollInterval time.Duration
	// DrainTimeout is how long Run waits, after its context ends, for
	// in-flight handlers before cancelling them. Defaults to 30s.
	DrainTimeout time.Duration
	// DisableNotify turns off the wake-ups by LISTEN/NOTIFY, leaving polling
	// every PollInterval as the only way the worker finds new work. By
	// default (false) the worker keeps one connection of its own, taken out
	// of the client's *pgxpool.Pool (which opens another in its place),
	// listening on the channel durable_<queue>. When a claim finds nothing,
	// that connection registers as a waiter (durable.register_waiter), and
	// from then on the schema notifies the channel whenever a run of the
	// queue becomes claimable now; the worker then claims at once, and still
	// polls for runs that become due by the clock. A notification ends the
	// registration, so that spawns do not notify a busy worker.
	// When that connection cannot be had or is lost, the worker polls and
	// tries to listen again with backoff. Set DisableNotify when the database
	// is reached through a transaction-mode pooler (PgBouncer's
	// pool_mode=transaction), where LISTEN does not work.
	DisableNotify bool
	// Logger receives the worker's logs. Defaults to the client's logger.
	Logger *slog.Logger
	// Hooks are called when the worker claims, completes, fails or loses a
	// run (see Hooks; OnSpawn is the client's). Defaults to the client's
	// hooks (when nil).
	Hooks *Hooks
}

// The defaults of WorkerConfig, and the worker's own fixed timings.
const (
	defaultConcurrency  = 10
	defaultClaimTimeout = 30 * time.Second
	defaultPollInterval = 250 * time.Millisecond
	defaultDrainTimeout = 30 * time.Second

	// maxClaimBatch is the largest qty durable.claim_task accepts.
	maxClaimBatch = 10000
	// maxClaimBackoff caps the wait between failed claims (or PollInterval,
	// when that is longer).
	maxClaimBackoff = 5 * time.Second
	// shutdownGrace is how long Run waits for handlers to return once it has
	// cancelled them at the end of the drain.
	shutdownGrace = 5 * time.Second
	// finishTimeout bounds each complete_run or fail_run call.
	finishTimeout = 5 * time.Second
	// finishAttempts is how many times a complete_run or fail_run call that
	// failed without reaching the schema (a connection error) is tried.
	finishAttempts = 3

	// completeBatch is the most runs one complete_runs call completes.
	completeBatch = 100
	// completeFlushes is how many complete_runs calls may be in flight at
	// once; completions that arrive meanwhile wait and go together in the
	// next call.
	completeFlushes = 2
	// completeBacklog is how many completions may wait for a complete_runs
	// call before handlers that return keep their slots until there is room.
	completeBacklog = 8 * completeBatch

	// listenRetryMin and listenRetryMax bound the backoff between attempts
	// to listen for notifications.
	listenRetryMin = time.Second
	listenRetryMax = time.Minute
	// listenCheckInterval is how long the listening connection may stay
	// silent before it is pinged, so that a dead connection is noticed.
	listenCheckInterval = 30 * time.Second
	// listenTimeout bounds taking the listening connection and each ping.
	listenTimeout = 10 * time.Second
	// waiterRetry is how soon an idle worker claims again when it could not
	// register as a waiter because spawns that notified nobody were still
	// uncommitted (see durable.register_waiter).
	waiterRetry = 10 * time.Millisecond
)

// Task is a claimed run as its handler sees it. Beyond its fields, it makes
// the handler's work durable: Step runs a piece of work once per task and
// replays its result on later attempts, SleepFor, SleepUntil, AwaitEvent and
// AwaitTask wait without holding a worker, and SpawnChild starts child tasks
// exactly once. A run that waits is suspended: the call returns an error
// matching ErrSuspended, which the handler must return, and the same run is
// handed to a handler again when the wait is over. A handler must make its
// durable calls in the same order on every run, from one goroutine at a time.
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

	rt *taskRuntime // what the durable calls need; nil for a Task not handed out by a worker
}

// HandlerFunc handles one run of a task. Its result is marshalled to JSON and
// stored as the task's result; an error fails the run, which is retried under
// the task's retry strategy unless the error is wrapped with NonRetryable. The
// context is cancelled when the task is cancelled, the lease is lost, or the
// worker's drain timeout ends; context.Cause then matches ErrTaskCancelled,
// ErrLeaseLost or ErrWorkerShutdown. A handler should return soon after: its
// outcome is dropped when the task was cancelled or the lease lost. A handler
// whose durable call suspended the run (an error matching ErrSuspended)
// returns that error; the worker then neither completes nor fails the run.
type HandlerFunc func(ctx context.Context, task *Task) (any, error)

// ErrWorkerShutdown is the cause (see context.Cause) of a handler's context
// when the worker cancelled it because its drain timeout ended. The run is
// then failed with reason {"name": "worker_shutdown"} and retried at once. It
// is the worker's own: no SQLSTATE raises it.
var ErrWorkerShutdown = errors.New("durable: worker shut down")

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

// namedError gives a handler error its own reason name instead of "error".
type namedError struct {
	name string
	err  error
}

func (e namedError) Error() string { return e.err.Error() }
func (e namedError) Unwrap() error { return e.err }

// failureReason is the reason object the worker gives fail_run. Retryable is
// set (to false) only for errors that must not be retried: fail_run fails the
// task at once for {"retryable": false}.
type failureReason struct {
	Name      string `json:"name"`
	Message   string `json:"message"`
	Retryable *bool  `json:"retryable,omitempty"`
	Stack     string `json:"stack,omitempty"`
	TaskName  string `json:"task_name,omitempty"`
	WorkerID  string `json:"worker_id,omitempty"`
}

var notRetryable = new(bool)

// Worker claims runs of one queue and executes them with registered handlers.
type Worker struct {
	client   *Client
	cfg      WorkerConfig
	handlers map[string]HandlerFunc
	logger   *slog.Logger
	hooks    Hooks
	leaseDur time.Duration

	mu      sync.Mutex
	started bool // Run was called: handlers are fixed
	running bool // a Run is in progress
}

// NewWorker returns a worker for cfg.Queue. Register handlers, then Run it.
// It refuses an empty queue, negative durations or concurrency, and a
// HeartbeatInterval not shorter than ClaimTimeout, with an error matching
// ErrInvalidQueueName or ErrInvalidArgument; it makes no database call. The
// client's database must be safe for concurrent use (a *pgxpool.Pool, not a
// pgx.Tx or *pgx.Conn): claims, heartbeats and outcomes run at once.
func (c *Client) NewWorker(cfg WorkerConfig) (*Worker, error) {
	if cfg.Queue == "" {
		return nil, clientError("QD001", "worker config: Queue is required")
	}
	if err := checkText("QD001", "queue name", cfg.Queue); err != nil {
		return nil, err
	}
	if err := checkText("QD006", "worker id", cfg.WorkerID); err != nil {
		return nil, err
	}
	if cfg.Concurrency < 0 {
		return nil, clientError("QD006", "worker config: Concurrency must not be negative, got %d", cfg.Concurrency)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"ClaimTimeout", cfg.ClaimTimeout},
		{"HeartbeatInterval", cfg.HeartbeatInterval},
		{"PollInterval", cfg.PollInterval},
		{"DrainTimeout", cfg.DrainTimeout},
	} {
		if d.v < 0 {
			return nil, clientError("QD006", "worker config: %s must not be negative, got %s", d.name, d.v)
		}
	}

	if cfg.WorkerID == "" {
		cfg.WorkerID = defaultWorkerID()
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = defaultConcurrency
	}
	if cfg.ClaimTimeout == 0 {
		cfg.ClaimTimeout = defaultClaimTimeout
	}
	if cfg.HeartbeatInterval == 0 {
		cfg.HeartbeatInterval = cfg.ClaimTimeout / 3
	}
	if cfg.HeartbeatInterval >= cfg.ClaimTimeout {
		return nil, clientError("QD006",
			"worker config: HeartbeatInterval (%s) must be shorter than ClaimTimeout (%s), or every lease expires between heartbeats",
			cfg.HeartbeatInterval, cfg.ClaimTimeout)
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = defaultPollInterval
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = defaultDrainTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = c.logger
	}
	hooks := c.hooks
	if cfg.Hooks != nil {
		hooks = *cfg.Hooks
	}
	return &Worker{
		hooks:    hooks,
		client:   c,
		cfg:      cfg,
		handlers: map[string]HandlerFunc{},
		logger:   cfg.Logger.With("queue", cfg.Queue, "worker_id", cfg.WorkerID),
		// The lease claim_task and extend_claim grant: whole seconds.
		leaseDur: time.Duration(seconds(cfg.ClaimTimeout)) * time.Second,
	}, nil
}

// defaultWorkerID returns "<hostname>:<pid>:<8 random hex digits>".
func defaultWorkerID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown-host"
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s:%d:%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

// Register sets the handler of task name, replacing any earlier one. Register
// before Run: it panics once Run has been called, as it does for an empty name
// or a nil handler.
//
// A run of a task that has no handler on this worker fails with reason
// {"name": "unknown_task"}, which is retryable: in a deployment where workers
// of one queue know different tasks, another worker may take the retry. Each
// such failure uses up one of the task's attempts.
func (w *Worker) Register(name string, h HandlerFunc) {
	if name == "" {
		panic("durable: Register with an empty task name")
	}
	if h == nil {
		panic(fmt.Sprintf("durable: Register of task %q with a nil handler", name))
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.started {
		panic(fmt.Sprintf("durable: Register of task %q after Run was called", name))
	}
	w.handlers[name] = h
}

// HandleTask registers a typed handler for def: params are decoded into P and
// the returned R is stored as the result. Params that do not decode into P
// fail the run without retry, with reason {"name": "invalid_params"}. It
// panics as Register does.
func HandleTask[P, R any](w *Worker, def TaskDef[P, R], fn func(ctx context.Context, task *Task, params P) (R, error)) {
	if fn == nil {
		panic(fmt.Sprintf("durable: HandleTask of task %q with a nil function", def.Name))
	}
	w.Register(def.Name, func(ctx context.Context, task *Task) (any, error) {
		var p P
		if err := json.Unmarshal(task.Params, &p); err != nil {
			return nil, NonRetryable(namedError{
				name: "invalid_params",
				err:  fmt.Errorf("durable: params of task %q do not decode into %T: %w", def.Name, p, err),
			})
		}
		return fn(ctx, task, p)
	})
}

// Run claims and executes runs until ctx ends, then stops claiming, waits up
// to DrainTimeout for in-flight handlers, cancels the rest and returns. It
// returns nil after a shutdown through ctx.
//
// Handlers' contexts do not derive from ctx's cancellation (they keep its
// values): they are cancelled only by the end of the drain, the task's
// cancellation or the loss of the lease. A handler cancelled by the end of the
// drain that returns an error is failed with reason {"name":
// "worker_shutdown"} and retry_at now, so that another worker retries it at
// once; like any failure this uses up an attempt. A handler that has not
// returned 5 seconds after that is abandoned: its run is failed the same way
// and its outcome ignored. A claim in flight when ctx ends is let finish (for
// at most ClaimTimeout) and its runs are drained with the others, so that no
// lease is left to expire. Claim errors are logged and retried with backoff;
// Run returns an error only when the worker is already running.
//
// When the queue runs dry, Run waits PollInterval before claiming again, or
// less: a notification that a run became claimable wakes it at once (see
// DisableNotify). The results of handlers that succeed are recorded in
// batches, many runs per durable.complete_runs call, each call starting as
// soon as an earlier one is done; Run returns once every result is recorded.
func (w *Worker) Run(ctx context.Context) error {
	w.mu.Lock()
	if w.running {
		w.mu.Unlock()
		return errors.New("durable: Run called while the worker is already running")
	}
	w.running, w.started = true, true
	handlers := make(map[string]HandlerFunc, len(w.handlers))
	for k, v := range w.handlers {
		handlers[k] = v
	}
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		w.running = false
		w.mu.Unlock()
	}()

	base := context.WithoutCancel(ctx)
	life, endLife := context.WithCancelCause(base)
	defer endLife(ErrWorkerShutdown)
	rs := &runState{
		w:        w,
		handlers: handlers,
		base:     base,
		life:     life,
		inflight: map[*execution]struct{}{},
		freed:    make(chan struct{}, 1),
		wake:     make(chan struct{}, 1),
	}
	rs.completer = newCompleter(rs)
	w.logger.Info("durable: worker started", "concurrency", w.cfg.Concurrency, "notify", !w.cfg.DisableNotify)
	listening := make(chan struct{})
	if w.cfg.DisableNotify {
		close(listening)
	} else {
		go func() {
			defer close(listening)
			rs.listen(ctx)
		}()
	}
	rs.claimLoop(ctx)
	rs.shutdown(endLife)
	rs.completer.stop()
	<-listening
	return nil
}

// runState is the state of one call to Run.
type runState struct {
	w        *Worker
	handlers map[string]HandlerFunc
	base     context.Context // Run's ctx without its cancellation
	life     context.Context // parent of the handlers' contexts

	mu       sync.Mutex
	inflight map[*execution]struct{}
	freed    chan struct{} // signalled (without blocking) when a run ends
	wake     chan struct{} // signalled (without blocking) by a notification
	lst      *listener     // the listening connection, while it listens

	completer *completer
}

// execution is one claimed run being handled.
type execution struct {
	run       ClaimedRun
	claimedAt time.Time // when the claim was sent
	task      *Task
	log       *slog.Logger
	ctx       context.Context
	cancel    context.CancelCauseFunc
	deadline  time.Time // local time the lease surely lasts until; written by the heartbeat

	lost      atomic.Pointer[error] // why the run is no longer ours, if it is not
	reported  atomic.Bool           // the outcome was (or is being) reported
	stopHB    func()
	hbStopped chan struct{}
}

func (rs *runState) active() int {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return len(rs.inflight)
}

// claimLoop claims runs and starts their handlers until ctx ends.
func (rs *runState) claimLoop(ctx context.Context) {
	w := rs.w
	failures := 0
	justRegistered := false
	for ctx.Err() == nil {
		free := w.cfg.Concurrency - rs.active()
		if free <= 0 {
			// Slot-limited: claim again as soon as a handler is done.
			select {
			case <-ctx.Done():
			case <-rs.freed:
			}
			continue
		}
		n := min(free, maxClaimBatch)
		runs, started, err := rs.claim(n)
		if err != nil {
			failures++
			delay := claimBackoff(w.cfg.PollInterval, failures)
			w.logger.Error("durable: claim failed", "error", err, "failures", failures, "retry_in", delay)
			sleep(ctx, delay)
			continue
		}
		failures = 0
		for _, r := range runs {
			rs.start(r, started)
		}
		if len(runs) == n {
			continue // there may be more: claim again at once
		}
		if justRegistered {
			justRegistered = false
			rs.idle(ctx, w.cfg.PollInterval)
			continue
		}
		switch rs.registerWaiter(ctx) {
		case waiterRegistered:
			// Runs made claimable before the registration notified nobody:
			// claim once more before waiting.
			justRegistered = true
		case waiterBusy:
			rs.idle(ctx, min(w.cfg.PollInterval, waiterRetry))
		default:
			rs.idle(ctx, w.cfg.PollInterval)
		}
	}
}

// idle waits d, or until a notification says that a run became claimable,
// or ctx ends.
func (rs *runState) idle(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-rs.wake:
	}
}

// claimBackoff is the wait after the failures-th failed claim in a row:
// PollInterval doubling with each failure, at most maxClaimBackoff (or
// PollInterval when that is longer).
func claimBackoff(poll time.Duration, failures int) time.Duration {
	limit := max(maxClaimBackoff, poll)
	d := poll
	for i := 1; i < failures && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// claim leases up to n runs. The call does not end with Run's ctx: runs
// leased by a call cut short would be lost until their lease expired.
func (rs *runState) claim(n int) ([]ClaimedRun, time.Time, error) {
	w := rs.w
	ctx, cancel := context.WithTimeout(rs.base, w.leaseDur)
	defer cancel()
	started := time.Now()
	runs, err := w.client.ClaimTasks(ctx, w.cfg.Queue, w.cfg.WorkerID, w.cfg.ClaimTimeout, n)
	return runs, started, err
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// start runs the handler of r in its own goroutine, with a heartbeat.
// claimedAt is when the claim was sent, so the lease lasts at least until
// claimedAt + the lease duration.
func (rs *runState) start(r ClaimedRun, claimedAt time.Time) {
	w := rs.w
	e := &execution{
		run: r,
		task: &Task{
			Queue:       w.cfg.Queue,
			TaskID:      r.TaskID,
			RunID:       r.RunID,
			Attempt:     r.Attempt,
			MaxAttempts: r.MaxAttempts,
			Name:        r.TaskName,
			Params:      r.Params,
			Headers:     r.Headers,
		},
		log:       w.logger.With("task_name", r.TaskName, "task_id", r.TaskID, "run_id", r.RunID, "attempt", r.Attempt),
		claimedAt: claimedAt,
		deadline:  claimedAt.Add(w.leaseDur),
		hbStopped: make(chan struct{}),
	}
	e.ctx, e.cancel = context.WithCancelCause(rs.life)
	hbCtx, stopHB := context.WithCancel(rs.base)
	var once sync.Once
	e.stopHB = func() { once.Do(stopHB) }
	e.task.rt = newTaskRuntime(w.client, seconds(w.cfg.ClaimTimeout),
		e.stopHB, // suspended: the lease is released, nothing to keep alive
		func(cause error) { rs.durableCallLost(e, cause) })

	rs.mu.Lock()
	rs.inflight[e] = struct{}{}
	rs.mu.Unlock()

	e.log.Debug("durable: run claimed")
	callHook(rs.base, e.log, "OnClaim", w.hooks.OnClaim, rs.runEvent(e, false))
	if h := rs.handlers[r.TaskName]; h != nil {
		go rs.heartbeat(hbCtx, e)
	} else {
		close(e.hbStopped) // nothing to keep alive: the run fails at once
	}
	go rs.execute(e)
}

// done forgets e and wakes the claim loop or the drain.
func (rs *runState) done(e *execution) {
	e.cancel(nil)
	rs.mu.Lock()
	delete(rs.inflight, e)
	rs.mu.Unlock()
	select {
	case rs.freed <- struct{}{}:
	default:
	}
}

// heartbeat extends e's lease every HeartbeatInterval until ctx ends. When the
// schema says the run is no longer ours, or the lease passes without a
// successful extension, it cancels the handler and marks the run lost.
func (rs *runState) heartbeat(ctx context.Context, e *execution) {
	defer close(e.hbStopped)
	w := rs.w
	tick := time.NewTicker(w.cfg.HeartbeatInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if !time.Now().Before(e.deadline) {
			rs.loseLease(e, fmt.Errorf("%w: no successful heartbeat before the lease ended at %s",
				ErrLeaseLost, e.deadline.Format(time.RFC3339Nano)))
			return
		}
		callCtx, cancel := context.WithDeadline(ctx, e.deadline)
		sent := time.Now()
		_, err := w.client.ExtendClaim(callCtx, w.cfg.Queue, e.run.RunID, w.cfg.ClaimTimeout)
		cancel()
		switch {
		case err == nil:
			e.deadline = sent.Add(w.leaseDur)
		case ctx.Err() != nil:
			return
		case errors.Is(err, ErrTaskCancelled):
			e.log.Info("durable: task cancelled; cancelling its handler")
			rs.markLost(e, fmt.Errorf("durable: task %s was cancelled: %w", e.run.TaskID, err))
			return
		case errors.Is(err, ErrRunNotRunning) && !errors.Is(err, ErrLeaseLost) && e.task.rt.beingSuspended():
			// A durable call is suspending the run (or just did): the run is
			// sleeping, not lost. Look again at the next tick, unless the
			// suspension stops the heartbeat first.
			continue
		case errors.Is(err, ErrRunNotRunning), errors.Is(err, ErrRunNotFound), errors.Is(err, ErrQueueNotFound):
			rs.loseLease(e, fmt.Errorf("durable: run %s is no longer this worker's: %w", e.run.RunID, err))
			return
		default:
			e.log.Warn("durable: heartbeat failed; retrying until the lease ends",
				"error", err, "lease_ends", e.deadline)
		}
	}
}

// durableCallLost handles a durable call of e's handler that found the run no
// longer this worker's: it stops the heartbeat, logs and marks e lost, so that
// the handler's outcome is dropped.
func (rs *runState) durableCallLost(e *execution, cause error) {
	e.stopHB()
	if errors.Is(cause, ErrTaskCancelled) {
		e.log.Info("durable: task cancelled; cancelling its handler", "error", cause)
	} else {
		e.log.Warn("durable: run lost during a durable call; cancelling the handler", "error", cause)
		rs.leaseLost(e, cause)
	}
	rs.markLost(e, cause)
}

// loseLease logs and marks e lost.
func (rs *runState) loseLease(e *execution, cause error) {
	e.log.Warn("durable: lease lost; cancelling the handler", "error", cause)
	rs.leaseLost(e, cause)
	rs.markLost(e, cause)
}

// leaseLost calls the OnLeaseLost hook for e.
func (rs *runState) leaseLost(e *execution, cause error) {
	callHook(rs.base, e.log, "OnLeaseLost", rs.w.hooks.OnLeaseLost, LeaseLostEvent{RunEvent: rs.runEvent(e, false), Cause: cause})
}

// runEvent describes e for a hook; withDuration sets the time since the claim.
func (rs *runState) runEvent(e *execution, withDuration bool) RunEvent {
	ev := RunEvent{
		Queue: rs.w.cfg.Queue, WorkerID: rs.w.cfg.WorkerID, TaskName: e.run.TaskName,
		TaskID: e.run.TaskID, RunID: e.run.RunID, Attempt: e.run.Attempt,
	}
	if withDuration {
		ev.Duration = time.Since(e.claimedAt)
	}
	return ev
}

// completed calls the OnComplete hook for e.
func (rs *runState) completed(e *execution) {
	callHook(rs.base, e.log, "OnComplete", rs.w.hooks.OnComplete, rs.runEvent(e, true))
}

// markLost records that e's run is no longer this worker's and cancels its
// handler with cause.
func (rs *runState) markLost(e *execution, cause error) {
	e.lost.Store(&cause)
	e.cancel(cause)
}

// outcome is how a handler ended.
type outcome struct {
	result   any
	err      error
	panicked bool
	panicVal any
	stack    string
}

// call runs h, turning a panic (or runtime.Goexit) into an outcome.
func call(ctx context.Context, h HandlerFunc, task *Task) outcome {
	ch := make(chan outcome, 1)
	go func() {
		o := outcome{panicked: true, panicVal: "handler exited through runtime.Goexit"}
		defer func() {
			if v := recover(); v != nil {
				o = outcome{panicked: true, panicVal: v, stack: string(debug.Stack())}
			}
			ch <- o
		}()
		res, err := h(ctx, task)
		o = outcome{result: res, err: err}
	}()
	return <-ch
}

// execute runs e's handler and reports its outcome.
func (rs *runState) execute(e *execution) {
	defer rs.done(e)
	w := rs.w
	h := rs.handlers[e.run.TaskName]
	if h == nil {
		e.stopHB()
		if !e.reported.CompareAndSwap(false, true) {
			return
		}
		e.log.Warn("durable: no handler for task; failing the run so that another worker may retry it")
		rs.fail(e, failureReason{
			Name:     "unknown_task",
			Message:  fmt.Sprintf("no handler registered for task %q on this worker", e.run.TaskName),
			TaskName: e.run.TaskName,
			WorkerID: w.cfg.WorkerID,
		}, time.Time{})
		return
	}

	o := call(e.ctx, h, e.task)
	e.stopHB()
	<-e.hbStopped
	if !e.reported.CompareAndSwap(false, true) {
		return // abandoned at shutdown: Run reported it
	}
	if lost := e.lost.Load(); lost != nil {
		e.log.Info("durable: handler returned after its run was lost or cancelled; outcome dropped",
			"cause", *lost, "handler_error", o.err)
		return
	}
	if e.task.rt.suspended.Load() {
		// The schema put the run to sleep and released its lease; the run
		// is claimed again when it is due.
		if errors.Is(o.err, ErrSuspended) {
			e.log.Debug("durable: run suspended")
		} else {
			e.log.Warn("durable: handler did not return the suspension of its run; outcome dropped",
				"handler_error", o.err, "panicked", o.panicked)
		}
		return
	}

	switch {
	case o.panicked:
		e.log.Error("durable: handler panicked", "panic", o.panicVal, "stack", o.stack)
		rs.fail(e, failureReason{Name: "panic", Message: fmt.Sprint(o.panicVal), Stack: o.stack}, time.Time{})
	case o.err != nil && errors.Is(context.Cause(e.ctx), ErrWorkerShutdown):
		e.log.Info("durable: handler cut off by shutdown; the task is retried at once", "error", o.err)
		rs.fail(e, shutdownReason(w.cfg.WorkerID, o.err), time.Now())
	case o.err != nil:
		reason := failureReason{Name: "error", Message: o.err.Error()}
		var ne namedError
		if errors.As(o.err, &ne) {
			reason.Name = ne.name
		}
		if IsNonRetryable(o.err) {
			reason.Retryable = notRetryable
		}
		e.log.Warn("durable: handler failed", "error", o.err, "retryable", reason.Retryable == nil)
		rs.fail(e, reason, time.Time{})
	default:
		result, err := encodeJSON("result", o.result)
		if err != nil {
			// The result is not JSON; it would not be on a retry either.
			e.log.Error("durable: handler result cannot be stored", "error", err)
			rs.fail(e, failureReason{Name: "invalid_result", Message: err.Error(), Retryable: notRetryable}, time.Time{})
			return
		}
		rs.completer.add(e, result)
	}
}

// complete completes e's run on its own, through complete_run.
func (rs *runState) complete(e *execution, result []byte) {
	w := rs.w
	err := rs.finish(e, "complete", func(ctx context.Context) error {
		return w.client.CompleteRun(ctx, w.cfg.Queue, e.run.RunID, json.RawMessage(result))
	})
	if err == nil {
		e.log.Debug("durable: run completed")
		rs.completed(e)
	}
}

// shutdownReason is the reason of a run cut off by the worker's shutdown.
func shutdownReason(workerID string, err error) failureReason {
	msg := fmt.Sprintf("worker %s shut down before the handler finished", workerID)
	if err != nil {
		msg += ": " + err.Error()
	}
	return failureReason{Name: "worker_shutdown", Message: msg, WorkerID: workerID}
}

// fail fails e's run with reason, to be retried at retryAt (zero: the task's
// retry strategy decides).
func (rs *runState) fail(e *execution, reason failureReason, retryAt time.Time) {
	w := rs.w
	err := rs.finish(e, "fail", func(ctx context.Context) error {
		return w.client.FailRun(ctx, w.cfg.Queue, e.run.RunID, reason, retryAt)
	})
	if err == nil {
		callHook(rs.base, e.log, "OnFail", w.hooks.OnFail, FailEvent{
			RunEvent: rs.runEvent(e, true), Reason: reason.Name, Message: reason.Message, Retryable: reason.Retryable == nil,
		})
	}
}

// finish makes a complete_run or fail_run call with its own timeout (Run's
// ctx may be over), retrying errors that did not come from the schema while
// the lease lasts. It logs the final error and returns it.
func (rs *runState) finish(e *execution, what string, f func(ctx context.Context) error) error {
	var err error
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(rs.base, finishTimeout)
		err = f(ctx)
		cancel()
		var de *Error
		if err == nil || errors.As(err, &de) || attempt == finishAttempts || !time.Now().Before(e.deadline) {
			break
		}
		e.log.Warn("durable: could not record the run's outcome; retrying", "action", what, "error", err)
		time.Sleep(time.Duration(attempt) * 100 * time.Millisecond)
	}
	rs.outcomeError(e, what, err)
	return err
}

// outcomeError logs err, the final error of recording e's outcome, and calls
// the OnLeaseLost hook when it says the lease was lost.
func (rs *runState) outcomeError(e *execution, what string, err error) {
	logOutcomeError(e, what, err)
	if errors.Is(err, ErrLeaseLost) {
		rs.leaseLost(e, err)
	}
}

// logOutcomeError logs err, the final error of recording e's outcome (what
// is "complete" or "fail"), if there is one.
func logOutcomeError(e *execution, what string, err error) {
	var de *Error
	switch {
	case err == nil:
	case errors.Is(err, ErrRunNotRunning):
		e.log.Warn("durable: run is no longer this worker's; outcome dropped", "action", what, "error", err)
	case errors.Is(err, ErrInvalidArgument):
		// Refused before any round trip (a result that is not JSON): the
		// caller handles it.
	case errors.As(err, &de):
		e.log.Error("durable: the run's outcome was refused", "action", what, "error", err)
	default:
		e.log.Error("durable: could not record the run's outcome; the task is retried when its lease expires",
			"action", what, "error", err)
	}
}

// shutdown stops the in-flight handlers after Run's ctx ended: it waits up to
// DrainTimeout, cancels them with ErrWorkerShutdown, waits shutdownGrace, and
// fails the runs of handlers still running then.
func (rs *runState) shutdown(endLife context.CancelCauseFunc) {
	w := rs.w
	n := rs.active()
	w.logger.Info("durable: worker stopping; draining in-flight handlers", "in_flight", n, "drain_timeout", w.cfg.DrainTimeout)
	if rs.wait(w.cfg.DrainTimeout) {
		w.logger.Info("durable: worker stopped")
		return
	}
	w.logger.Warn("durable: drain timeout ended; cancelling in-flight handlers", "in_flight", rs.active())
	endLife(ErrWorkerShutdown)
	if rs.wait(shutdownGrace) {
		w.logger.Info("durable: worker stopped")
		return
	}
	rs.mu.Lock()
	left := make([]*execution, 0, len(rs.inflight))
	for e := range rs.inflight {
		left = append(left, e)
	}
	rs.mu.Unlock()
	for _, e := range left {
		if !e.reported.CompareAndSwap(false, true) {
			continue
		}
		e.stopHB()
		<-e.hbStopped
		if e.lost.Load() != nil || e.task.rt.suspended.Load() {
			continue
		}
		e.log.Error("durable: handler ignored its cancellation; abandoning it and failing its run for retry")
		rs.fail(e, shutdownReason(w.cfg.WorkerID, errors.New("the handler did not return after its context was cancelled")), time.Now())
	}
	w.logger.Info("durable: worker stopped", "abandoned", len(left))
}

// wait waits up to d for every handler to end and reports whether they did.
func (rs *runState) wait(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for rs.active() > 0 {
		select {
		case <-rs.freed:
		case <-t.C:
			return rs.active() == 0
		}
	}
	return true
}

// completer records the results of handlers that succeeded, many runs per
// durable.complete_runs call. A call starts as soon as one of the
// completeFlushes allowed in flight is free; results that arrive while none is
// wait in a backlog and go together in the next call, up to completeBatch. So
// a lone result is sent at once, and under load the calls grow with the load.
type completer struct {
	rs *runState

	mu      sync.Mutex
	room    *sync.Cond // broadcast when the backlog shrinks or the completer closes
	backlog []pendingCompletion
	closed  bool // stop was called: add completes runs on their own

	kick  chan struct{}  // signalled (without blocking) by add and stop
	slots chan struct{}  // one token per complete_runs call in flight
	calls sync.WaitGroup // complete_runs calls in flight
	done  chan struct{}  // closed when loop has returned
}

// pendingCompletion is a result waiting to be recorded.
type pendingCompletion struct {
	e      *execution
	result []byte // JSON
}

func newCompleter(rs *runState) *completer {
	c := &completer{
		rs:    rs,
		kick:  make(chan struct{}, 1),
		slots: make(chan struct{}, completeFlushes),
		done:  make(chan struct{}),
	}
	c.room = sync.NewCond(&c.mu)
	go c.loop()
	return c
}

// add queues the result of e's run. While the backlog is full it waits, so
// that the handler keeps its slot and the worker claims no more than it can
// record. Once the completer is stopped, it completes the run on its own.
func (c *completer) add(e *execution, result []byte) {
	c.mu.Lock()
	for len(c.backlog) >= completeBacklog && !c.closed {
		c.room.Wait()
	}
	if c.closed {
		c.mu.Unlock()
		c.rs.complete(e, result)
		return
	}
	c.backlog = append(c.backlog, pendingCompletion{e: e, result: result})
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// stop records what is queued, waits for the calls in flight and returns;
// results added afterwards are completed one by one.
func (c *completer) stop() {
	c.mu.Lock()
	c.closed = true
	c.room.Broadcast()
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
	<-c.done
}

// take removes up to completeBatch results from the backlog.
func (c *completer) take() (batch []pendingCompletion, closed bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := min(len(c.backlog), completeBatch); n > 0 {
		batch = append([]pendingCompletion(nil), c.backlog[:n]...)
		c.backlog = append(c.backlog[:0], c.backlog[n:]...)
		c.room.Broadcast()
	}
	return batch, c.closed
}

// loop starts a complete_runs call whenever there are results and a call
// may start, until the completer is stopped and the backlog is empty.
func (c *completer) loop() {
	defer close(c.done)
	for range c.kick {
		for {
			c.slots <- struct{}{} // wait until a call may start
			batch, closed := c.take()
			if len(batch) == 0 {
				<-c.slots
				if closed {
					c.calls.Wait()
					return
				}
				break // wait for the next add
			}
			c.calls.Add(1)
			go func() {
				defer c.calls.Done()
				defer func() { <-c.slots }()
				c.flush(batch)
			}()
		}
	}
}

// flush completes batch through complete_runs, with its own timeout (Run's
// ctx may be over), retrying errors that did not come from the schema. Each
// run that was not completed is logged as a failed complete_run is; a run
// another transaction held locked is completed again on its own, by
// complete_run, which waits for the lock.
func (c *completer) flush(batch []pendingCompletion) {
	rs := c.rs
	w := rs.w
	runs := make([]runCompletion, len(batch))
	for i, p := range batch {
		runs[i] = runCompletion{runID: p.e.run.RunID, result: p.result}
	}
	var rows []runCompleted
	var err error
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(rs.base, finishTimeout)
		rows, err = w.client.completeRuns(ctx, w.cfg.Queue, runs)
		cancel()
		var de *Error
		if err == nil || errors.As(err, &de) || attempt == finishAttempts {
			break
		}
		w.logger.Warn("durable: could not record the runs' outcomes; retrying",
			"action", "complete", "runs", len(batch), "error", err)
		time.Sleep(time.Duration(attempt) * 100 * time.Millisecond)
	}
	for i, p := range batch {
		switch {
		case err != nil:
			rs.outcomeError(p.e, "complete", err)
		case rows[i].RunID != p.e.run.RunID:
			rs.outcomeError(p.e, "complete", fmt.Errorf("durable: complete_runs answered for run %s in the place of run %s", rows[i].RunID, p.e.run.RunID))
		case rows[i].Completed:
			p.e.log.Debug("durable: run completed")
			rs.completed(p.e)
		case rows[i].Code == codeRunLocked:
			rs.complete(p.e, p.result)
		default:
			rs.outcomeError(p.e, "complete", notCompletedError(w.cfg.Queue, p.e.run.RunID, rows[i].Code))
		}
	}
}

// connAcquirer is what listening needs of the client's database: a
// *pgxpool.Pool has it.
type connAcquirer interface {
	Acquire(ctx context.Context) (*pgxpool.Conn, error)
}

// listen keeps a connection listening on the queue's channel until ctx ends,
// waking the claim loop on every notification. When it cannot listen it logs,
// leaves the claim loop to poll, and tries again with backoff.
func (rs *runState) listen(ctx context.Context) {
	w := rs.w
	acq, ok := w.client.db.(connAcquirer)
	if !ok {
		w.logger.Info("durable: notifications need the client's database to be a *pgxpool.Pool; polling only",
			"poll_interval", w.cfg.PollInterval)
		return
	}
	channel := pgx.Identifier{"durable_" + w.cfg.Queue}.Sanitize()
	failures := 0
	for {
		listened, err := rs.listenOn(ctx, acq, channel)
		if ctx.Err() != nil {
			return
		}
		if listened {
			failures = 0 // it worked for a while: back off from the start
		}
		failures++
		delay := listenRetryMin
		for i := 1; i < failures && delay < listenRetryMax; i++ {
			delay *= 2
		}
		delay = min(delay, listenRetryMax)
		w.logger.Warn("durable: not listening for notifications; polling until listening again",
			"error", err, "poll_interval", w.cfg.PollInterval, "retry_in", delay)
		sleep(ctx, delay)
	}
}

// listener is the claim loop's handle on the listening connection.
type listener struct {
	req  chan chan waiterState // registration requests from the claim loop
	done chan struct{}         // closed when the connection stops listening

	mu        sync.Mutex
	interrupt context.CancelFunc // ends the current wait for a notification
}

func (l *listener) setInterrupt(f context.CancelFunc) {
	l.mu.Lock()
	l.interrupt = f
	l.mu.Unlock()
}

// waiterState is the answer to a registration as a waiter (see
// durable.register_waiter).
type waiterState int

const (
	// notListening: no connection listens; poll.
	notListening waiterState = iota
	// waiterRegistered: newly registered; claim once more, then wait.
	waiterRegistered
	// waiterAlready: registered before; wait.
	waiterAlready
	// waiterBusy: spawns that notified nobody have not committed yet; claim
	// again after waiterRetry.
	waiterBusy
)

// registerWaiter registers the worker's listening connection as a waiter
// of the queue, so that spawns notify it; the listening goroutine does it,
// since the registration belongs to that connection's session.
func (rs *runState) registerWaiter(ctx context.Context) waiterState {
	rs.mu.Lock()
	l := rs.lst
	rs.mu.Unlock()
	if l == nil {
		return notListening
	}
	reply := make(chan waiterState, 1)
	select {
	case l.req <- reply:
	case <-l.done:
		return notListening
	case <-ctx.Done():
		return notListening
	}
	l.mu.Lock()
	if l.interrupt != nil {
		l.interrupt()
	}
	l.mu.Unlock()
	select {
	case s := <-reply:
		return s
	case <-l.done:
		return notListening
	case <-ctx.Done():
		return notListening
	}
}

// listenOn takes a connection out of the pool, listens on channel and waits
// for notifications until ctx ends or the connection fails, pinging it when
// it has been silent for listenCheckInterval. Between waits it registers the
// connection as a waiter when the claim loop asks (registerWaiter), and
// unregisters it when a notification arrives, so that spawns stop notifying
// while the worker is busy. It reports whether LISTEN succeeded, and why it
// stopped.
func (rs *runState) listenOn(ctx context.Context, acq connAcquirer, channel string) (listened bool, err error) {
	actx, cancel := context.WithTimeout(ctx, listenTimeout)
	pc, err := acq.Acquire(actx)
	cancel()
	if err != nil {
		return false, err
	}
	// The connection is the worker's from now on: the pool opens another in
	// its place, and never hands out one that listens. Closing it ends its
	// registration as a waiter.
	conn := pc.Hijack()
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = conn.Close(cctx)
		cancel()
	}()
	lctx, cancel := context.WithTimeout(ctx, listenTimeout)
	_, err = conn.Exec(lctx, "listen "+channel)
	cancel()
	if err != nil {
		return false, err
	}
	rs.w.logger.Debug("durable: listening for notifications", "channel", channel)

	l := &listener{req: make(chan chan waiterState, 1), done: make(chan struct{})}
	rs.mu.Lock()
	rs.lst = l
	rs.mu.Unlock()
	defer func() {
		rs.mu.Lock()
		rs.lst = nil
		rs.mu.Unlock()
		close(l.done)
	}()
	rs.notify() // runs may have become claimable while nobody listened

	registered := false
	call := func(sql string, dest ...any) error {
		cctx, cancel := context.WithTimeout(ctx, listenTimeout)
		defer cancel()
		if len(dest) == 0 {
			_, err := conn.Exec(cctx, sql, rs.w.cfg.Queue)
			return err
		}
		return conn.QueryRow(cctx, sql, rs.w.cfg.Queue).Scan(dest...)
	}
	for {
		wctx, cancel := context.WithTimeout(ctx, listenCheckInterval)
		// The interrupt is in place before the request channel is looked at,
		// so a request sent after this look interrupts the wait below.
		l.setInterrupt(cancel)
		select {
		case reply := <-l.req:
			l.setInterrupt(nil)
			cancel()
			state := waiterAlready
			if !registered {
				var ok bool
				if err := call("select durable.register_waiter($1)", &ok); err != nil {
					reply <- notListening
					return true, err
				}
				registered, state = ok, waiterRegistered
				if !ok {
					state = waiterBusy
				}
			}
			reply <- state
			continue
		default:
		}
		_, err := conn.WaitForNotification(wctx)
		l.setInterrupt(nil)
		timedOut := errors.Is(wctx.Err(), context.DeadlineExceeded)
		interrupted := errors.Is(wctx.Err(), context.Canceled)
		cancel()
		switch {
		case err == nil:
			rs.notify()
			if registered {
				registered = false
				if err := call("select durable.unregister_waiter($1)"); err != nil {
					return true, err
				}
			}
		case ctx.Err() != nil:
			return true, ctx.Err()
		case conn.IsClosed():
			return true, err
		case interrupted:
			// A registration request: served at the top of the loop.
		case timedOut:
			pctx, cancel := context.WithTimeout(ctx, listenTimeout)
			err = conn.Ping(pctx)
			cancel()
			if err != nil {
				return true, err
			}
		default:
			return true, err
		}
	}
}

// notify wakes the claim loop if it is idle.
func (rs *runState) notify() {
	select {
	case rs.wake <- struct{}{}:
	default:
	}
}
