// Package durable is the Go side of durable, a task queue that lives in
// PostgreSQL. Every rule (deduplication, leases, retries, cancellation) is a
// PL/pgSQL function in the durable schema; this package calls those functions
// and adds types, a worker runtime and ergonomics, nothing a psql user would
// miss.
package durable

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DBTX is what every database call takes: *pgxpool.Pool, *pgx.Conn and pgx.Tx
// all satisfy it, so a task can be spawned inside the caller's transaction.
type DBTX interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Config configures a Client. A nil *Config takes every default.
type Config struct {
	// Logger receives the client's and its workers' structured logs.
	// Defaults to slog.Default().
	Logger *slog.Logger
	// Hooks are called when tasks are spawned and, unless a WorkerConfig
	// sets its own, when the client's workers claim, complete, fail or lose
	// runs. Defaults to none (when nil).
	Hooks *Hooks
}

// Client calls the durable schema's functions on a database.
type Client struct {
	db     DBTX
	logger *slog.Logger
	hooks  Hooks
}

// New returns a client for db. The schema must be installed, by Migrate or
// by psql -f sql/install.sql.
func New(db DBTX, cfg *Config) (*Client, error) {
	if db == nil {
		return nil, errors.New("durable: New needs a database (a *pgxpool.Pool, *pgx.Conn or pgx.Tx)")
	}
	c := &Client{db: db, logger: slog.Default()}
	if cfg != nil && cfg.Logger != nil {
		c.logger = cfg.Logger
	}
	if cfg != nil && cfg.Hooks != nil {
		c.hooks = *cfg.Hooks
	}
	return c, nil
}

// TaskState is the state of a task or of one of its runs.
type TaskState string

// The states. A task holds its idempotency key while it is pending, running
// or sleeping.
const (
	// StatePending: waiting for a worker (possibly until a later available_at).
	StatePending TaskState = "pending"
	// StateRunning: leased to a worker.
	StateRunning TaskState = "running"
	// StateSleeping: suspended after a run, e.g. waiting for its retry.
	StateSleeping TaskState = "sleeping"
	// StateCompleted: finished with a result.
	StateCompleted TaskState = "completed"
	// StateFailed: out of attempts, or failed with a non-retryable error.
	StateFailed TaskState = "failed"
	// StateCancelled: cancelled before it finished.
	StateCancelled TaskState = "cancelled"
)

// Terminal reports whether s is a final state: completed, failed or cancelled.
func (s TaskState) Terminal() bool {
	return s == StateCompleted || s == StateFailed || s == StateCancelled
}

// CreateQueue creates a queue, or brings its tables up to date when it exists.
func (c *Client) CreateQueue(ctx context.Context, queue string) error {
	if err := checkText("QD001", "queue name", queue); err != nil {
		return err
	}
	_, err := c.db.Exec(ctx, "select durable.create_queue($1)", queue)
	return mapError(err)
}

// DropQueue drops a queue with all its tasks. It returns ErrQueueNotFound
// when there is no such queue.
func (c *Client) DropQueue(ctx context.Context, queue string) error {
	if err := checkText("QD001", "queue name", queue); err != nil {
		return err
	}
	_, err := c.db.Exec(ctx, "select durable.drop_queue($1)", queue)
	return mapError(err)
}

// ListQueues returns the names of the queues, sorted.
func (c *Client) ListQueues(ctx context.Context) ([]string, error) {
	rows, err := c.db.Query(ctx, "select queue_name from durable.list_queues()")
	if err != nil {
		return nil, mapError(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	return names, mapError(err)
}

// DefaultCleanupLimit is the batch size of CleanupTasks, CleanupEvents and
// CleanupAll when they are given a limit of 0.
const DefaultCleanupLimit = 1000

// CleanupTasks deletes up to limit finished tasks of queue (completed, failed
// or cancelled) that ended more than ttl ago (rounded up to whole seconds),
// with their runs, checkpoints and waits, and returns how many it deleted.
// Call it again while it returns limit. It never deletes a live task, a
// finished task that still retains its key (SpawnOptions.KeyRetention), or a
// task that a live task is still waiting for; deleting a task frees its key.
// A limit of 0 means DefaultCleanupLimit; at most 10,000.
func (c *Client) CleanupTasks(ctx context.Context, queue string, ttl time.Duration, limit int) (int, error) {
	return c.cleanup(ctx, "cleanup_tasks", queue, ttl, limit)
}

// CleanupEvents deletes up to limit events of queue emitted more than ttl
// ago (rounded up to whole seconds) and returns how many it deleted. A
// deleted event is as if never emitted: a later AwaitEvent waits for a new
// emit. A limit of 0 means DefaultCleanupLimit; at most 10,000.
func (c *Client) CleanupEvents(ctx context.Context, queue string, ttl time.Duration, limit int) (int, error) {
	return c.cleanup(ctx, "cleanup_events", queue, ttl, limit)
}

func (c *Client) cleanup(ctx context.Context, fn, queue string, ttl time.Duration, limit int) (int, error) {
	if err := checkText("QD001", "queue name", queue); err != nil {
		return 0, err
	}
	if limit == 0 {
		limit = DefaultCleanupLimit
	}
	var n int
	err := c.db.QueryRow(ctx, "select durable."+fn+"($1, $2, $3)", queue, seconds(ttl), limit).Scan(&n)
	return n, mapError(err)
}

// RetentionPolicy is a queue's retention policy, which CleanupAll applies. A
// ttl is at least a second.
type RetentionPolicy struct {
	// TaskTTL: finished tasks that ended longer ago than this are deleted
	// (whole seconds, rounded up). Defaults to 0: kept forever.
	TaskTTL time.Duration
	// EventTTL: events emitted longer ago than this are deleted (whole
	// seconds, rounded up). Defaults to 0: kept forever.
	EventTTL time.Duration
}

// SetQueueRetention sets queue's retention policy; nil (or a zero policy)
// turns it off, which is every new queue's state.
func (c *Client) SetQueueRetention(ctx context.Context, queue string, p *RetentionPolicy) error {
	if err := checkText("QD001", "queue name", queue); err != nil {
		return err
	}
	var tasks, events *int
	if p != nil && p.TaskTTL != 0 {
		s := seconds(p.TaskTTL)
		tasks = &s
	}
	if p != nil && p.EventTTL != 0 {
		s := seconds(p.EventTTL)
		events = &s
	}
	_, err := c.db.Exec(ctx, "select durable.set_queue_retention($1, $2, $3)", queue, tasks, events)
	return mapError(err)
}

// CleanupResult is what CleanupAll did to one queue.
type CleanupResult struct {
	// Queue is the queue's name.
	Queue string
	// Policy is the queue's retention policy that was applied.
	Policy RetentionPolicy
	// TasksDeleted and EventsDeleted count what was deleted.
	TasksDeleted, EventsDeleted int
}

// CleanupAll applies every queue's retention policy once (SetQueueRetention),
// deleting at most limit tasks and limit events per queue, and returns one
// result per queue that has a policy, by name. Run it on a schedule. A limit
// of 0 means DefaultCleanupLimit; at most 10,000.
func (c *Client) CleanupAll(ctx context.Context, limit int) ([]CleanupResult, error) {
	if limit == 0 {
		limit = DefaultCleanupLimit
	}
	rows, err := c.db.Query(ctx,
		`select queue_name, task_ttl_seconds, event_ttl_seconds, tasks_deleted, events_deleted
		   from durable.cleanup_all($1)`, limit)
	if err != nil {
		return nil, mapError(err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (CleanupResult, error) {
		var r CleanupResult
		var tasks, events *int
		if err := row.Scan(&r.Queue, &tasks, &events, &r.TasksDeleted, &r.EventsDeleted); err != nil {
			return r, err
		}
		if tasks != nil {
			r.Policy.TaskTTL = time.Duration(*tasks) * time.Second
		}
		if events != nil {
			r.Policy.EventTTL = time.Duration(*events) * time.Second
		}
		return r, nil
	})
	return out, mapError(err)
}

// RetryKind names a retry strategy.
type RetryKind string

// The retry strategies.
const (
	// RetryNone retries at once.
	RetryNone RetryKind = "none"
	// RetryFixed waits Base between attempts.
	RetryFixed RetryKind = "fixed"
	// RetryExponential waits Base * Factor^(n-1) after attempt n, at most Max.
	RetryExponential RetryKind = "exponential"
)

// RetryStrategy says how long to wait before each retry. The server fills in
// what is left zero.
type RetryStrategy struct {
	// Kind is none, fixed or exponential. Required.
	Kind RetryKind
	// Base is the first (fixed: every) delay, in whole or fractional seconds.
	// Defaults to 1s.
	Base time.Duration
	// Factor multiplies the delay after each attempt (exponential only).
	// Defaults to 2.
	Factor float64
	// Max caps the delay (exponential only). Defaults to 1h.
	Max time.Duration
}

// SpawnOptions tune one spawn. A nil *SpawnOptions takes every default.
type SpawnOptions struct {
	// OnlyOnce derives the idempotency key from the task name and the params
	// (compared as JSON), so an identical spawn while the task is unfinished
	// returns it instead of creating another. Defaults to false.
	OnlyOnce bool
	// IdempotencyKey, when not empty, is the deduplication key and wins over
	// OnlyOnce. It is scoped to the queue and the task name. Defaults to none.
	IdempotencyKey string
	// MaxAttempts is how many times the task may run before it fails.
	// Defaults to 5 (when 0).
	MaxAttempts int
	// RetryStrategy spaces the retries. Defaults to exponential from 1s,
	// doubling, at most 1h (when nil).
	RetryStrategy *RetryStrategy
	// Headers travel with the task to the worker (trace ids, tenants...).
	// They are not part of an only-once key. Defaults to none.
	Headers map[string]any
	// AvailableAt delays the task: no worker claims it before then.
	// Defaults to now (when zero).
	AvailableAt time.Time
	// ParentTaskID makes the task a child of that task of the same queue: it
	// is cancelled when the parent fails or is cancelled. Handlers use
	// Task.SpawnChild, which sets it. Defaults to none.
	ParentTaskID UUID
	// MaxDelay cancels the task if no worker has started it this long after
	// AvailableAt (whole seconds, rounded up). Defaults to none.
	MaxDelay time.Duration
	// MaxDuration cancels the task if it has not finished this long after its
	// first start (whole seconds, rounded up). Defaults to none.
	MaxDuration time.Duration
	// KeyRetention keeps the task's idempotency key held this long after the
	// task ends (completed, failed or cancelled): meanwhile a spawn with the
	// key returns the finished task with Created false and its final state,
	// and its result stays readable with GetTaskResult. KeepKeyForever never
	// frees it. CleanupTasks deletes such a task only once its retention has
	// expired. Ignored without a key. Defaults to 0: the key is freed when
	// the task ends.
	KeyRetention time.Duration
}

// KeepKeyForever is the SpawnOptions.KeyRetention that keeps a finished
// task's key held for good (the spawn option key_retention_seconds
// "forever").
const KeepKeyForever = time.Duration(math.MaxInt64)

// optionsJSON encodes the options as spawn_task's p_options object.
func (o *SpawnOptions) optionsJSON() ([]byte, error) {
	if o == nil {
		return []byte("{}"), nil
	}
	m := map[string]any{}
	if o.MaxAttempts != 0 {
		m["max_attempts"] = o.MaxAttempts
	}
	if rs := o.RetryStrategy; rs != nil {
		s := map[string]any{"kind": string(rs.Kind)}
		if rs.Base != 0 {
			s["base_seconds"] = rs.Base.Seconds()
		}
		if rs.Factor != 0 {
			s["factor"] = rs.Factor
		}
		if rs.Max != 0 {
			s["max_seconds"] = rs.Max.Seconds()
		}
		m["retry_strategy"] = s
	}
	if o.Headers != nil {
		m["headers"] = o.Headers
	}
	if !o.AvailableAt.IsZero() {
		m["available_at"] = o.AvailableAt.UTC().Format(time.RFC3339Nano)
	}
	if !o.ParentTaskID.IsZero() {
		m["parent_task_id"] = o.ParentTaskID.String()
	}
	if o.MaxDelay != 0 {
		m["max_delay"] = seconds(o.MaxDelay)
	}
	if o.MaxDuration != 0 {
		m["max_duration"] = seconds(o.MaxDuration)
	}
	switch {
	case o.KeyRetention == KeepKeyForever:
		m["key_retention_seconds"] = "forever"
	case o.KeyRetention != 0:
		m["key_retention_seconds"] = o.KeyRetention.Seconds()
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, clientError("QD005", "spawn options cannot be encoded as JSON: %v", err)
	}
	return b, nil
}

// SpawnResult is what a spawn returns: the task that now holds the key.
type SpawnResult struct {
	// TaskID is the new task, or the existing one when Created is false.
	TaskID UUID
	// RunID is the task's current run.
	RunID UUID
	// Attempt is the current run's attempt number, from 1.
	Attempt int
	// Created is true when this call created the task, false when it returned
	// the unfinished task that holds the same key.
	Created bool
	// State is the task's state.
	State TaskState
}

// Spawn enqueues a task named taskName with params (marshalled to JSON;
// json.RawMessage and []byte are taken as JSON as they are) on queue.
//
// With a key (opts.IdempotencyKey, or opts.OnlyOnce), the first spawn creates
// the task and, while it is unfinished, every other spawn with the same key
// returns it with Created false and writes nothing.
func (c *Client) Spawn(ctx context.Context, queue, taskName string, params any, opts *SpawnOptions) (*SpawnResult, error) {
	return c.SpawnTx(ctx, c.db, queue, taskName, params, opts)
}

// SpawnTx is Spawn on tx, typically the caller's pgx.Tx, so that the task is
// enqueued if and only if the caller's own writes commit. Until then no worker
// sees the task, and a concurrent spawn with the same key waits for the
// outcome.
func (c *Client) SpawnTx(ctx context.Context, tx DBTX, queue, taskName string, params any, opts *SpawnOptions) (*SpawnResult, error) {
	if err := checkText("QD001", "queue name", queue); err != nil {
		return nil, err
	}
	if err := checkText("QD003", "task name", taskName); err != nil {
		return nil, err
	}
	var key *string
	onlyOnce := false
	if opts != nil {
		onlyOnce = opts.OnlyOnce
		if opts.IdempotencyKey != "" {
			if err := checkText("QD004", "idempotency key", opts.IdempotencyKey); err != nil {
				return nil, err
			}
			key = &opts.IdempotencyKey
		}
	}
	p, err := encodeJSON("params", params)
	if err != nil {
		return nil, err
	}
	o, err := opts.optionsJSON()
	if err != nil {
		return nil, err
	}
	var r SpawnResult
	err = tx.QueryRow(ctx,
		"select task_id, run_id, attempt, created, state from durable.spawn_task($1, $2, $3, $4, $5, $6)",
		queue, taskName, p, onlyOnce, key, o,
	).Scan(&r.TaskID, &r.RunID, &r.Attempt, &r.Created, &r.State)
	if err != nil {
		return nil, mapError(err)
	}
	c.spawned(ctx, queue, taskName, &r)
	return &r, nil
}

// spawned calls the OnSpawn hook for r.
func (c *Client) spawned(ctx context.Context, queue, taskName string, r *SpawnResult) {
	callHook(ctx, c.logger, "OnSpawn", c.hooks.OnSpawn, SpawnEvent{
		Queue: queue, TaskName: taskName, TaskID: r.TaskID, RunID: r.RunID, Created: r.Created, State: r.State,
	})
}

// CancelTask cancels a task that has not finished and returns its state
// afterwards: StateCancelled, or the final state it already had. A worker
// running it learns of the cancellation at its next heartbeat.
func (c *Client) CancelTask(ctx context.Context, queue string, taskID UUID) (TaskState, error) {
	if err := checkText("QD001", "queue name", queue); err != nil {
		return "", err
	}
	var s TaskState
	err := c.db.QueryRow(ctx, "select durable.cancel_task($1, $2)", queue, taskID).Scan(&s)
	return s, mapError(err)
}

// TaskResult is a task's state and outcome.
type TaskResult struct {
	// TaskID is the task.
	TaskID UUID
	// State is the task's state.
	State TaskState
	// Result is what the completed run returned (JSON), or nil.
	Result json.RawMessage
	// FailureReason is the latest failure's reason (JSON), kept while the
	// task waits to retry, or nil.
	FailureReason json.RawMessage
}

// GetTaskResult returns a task's state and outcome now.
func (c *Client) GetTaskResult(ctx context.Context, queue string, taskID UUID) (*TaskResult, error) {
	if err := checkText("QD001", "queue name", queue); err != nil {
		return nil, err
	}
	var r TaskResult
	err := c.db.QueryRow(ctx,
		"select task_id, state, result, failure_reason from durable.get_task_result($1, $2)",
		queue, taskID,
	).Scan(&r.TaskID, &r.State, &r.Result, &r.FailureReason)
	if err != nil {
		return nil, mapError(err)
	}
	return &r, nil
}

// WaitForResult polls the task, backing off from 10ms to 1s between looks,
// until it is completed, failed or cancelled, and returns its outcome. It
// returns ctx's error when ctx ends first.
func (c *Client) WaitForResult(ctx context.Context, queue string, taskID UUID) (*TaskResult, error) {
	delay := 10 * time.Millisecond
	for {
		r, err := c.GetTaskResult(ctx, queue, taskID)
		if err != nil {
			return nil, err
		}
		if r.State.Terminal() {
			return r, nil
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		delay = min(delay*2, time.Second)
	}
}

// EmitEvent records the event name of queue with payload (marshalled to JSON)
// and wakes every task waiting for it. The first emit of a name wins: it
// returns true, and later emits return false and change nothing.
func (c *Client) EmitEvent(ctx context.Context, queue, name string, payload any) (bool, error) {
	if err := checkText("QD001", "queue name", queue); err != nil {
		return false, err
	}
	if err := checkText("QD007", "event name", name); err != nil {
		return false, err
	}
	p, err := encodeJSON("payload", payload)
	if err != nil {
		return false, err
	}
	var stored bool
	err = c.db.QueryRow(ctx, "select durable.emit_event($1, $2, $3)", queue, name, p).Scan(&stored)
	return stored, mapError(err)
}

// RetryOptions tune RetryTask. A nil *RetryOptions retries in place.
type RetryOptions struct {
	// SpawnNew spawns the task's name, params, key and options as a new task
	// instead of reviving it; a live holder of its key is returned instead
	// (Created false). Defaults to false: retry in place.
	SpawnNew bool
	// MaxAttempts becomes the task's max_attempts. Defaults to one more
	// attempt when they are used up (0).
	MaxAttempts int
}

// RetryTask runs a failed or cancelled task again, in place (a new run,
// keeping its checkpoints, so finished steps do not run again) or as a new
// task. An in-place retry returns ErrKeyHeld, naming the holder, when a newer
// live task holds the task's idempotency key.
func (c *Client) RetryTask(ctx context.Context, queue string, taskID UUID, opts *RetryOptions) (*SpawnResult, error) {
	if err := checkText("QD001", "queue name", queue); err != nil {
		return nil, err
	}
	o := map[string]any{}
	if opts != nil {
		if opts.SpawnNew {
			o["spawn_new"] = true
		}
		if opts.MaxAttempts != 0 {
			o["max_attempts"] = opts.MaxAttempts
		}
	}
	b, err := json.Marshal(o)
	if err != nil {
		return nil, err
	}
	var r SpawnResult
	err = c.db.QueryRow(ctx,
		"select task_id, run_id, attempt, created, state from durable.retry_task($1, $2, $3)",
		queue, taskID, b,
	).Scan(&r.TaskID, &r.RunID, &r.Attempt, &r.Created, &r.State)
	if err != nil {
		return nil, mapError(err)
	}
	return &r, nil
}

// ClaimedRun is a run leased to a worker by ClaimTasks.
type ClaimedRun struct {
	RunID          UUID
	TaskID         UUID
	Attempt        int
	TaskName       string
	Params         json.RawMessage
	Headers        map[string]any
	MaxAttempts    int
	ClaimExpiresAt time.Time
}

// ClaimTasks leases up to qty ready runs of queue to workerID for
// claimTimeout (rounded up to whole seconds). Runs whose lease expired are
// recovered first. Most programs use a Worker instead.
func (c *Client) ClaimTasks(ctx context.Context, queue, workerID string, claimTimeout time.Duration, qty int) ([]ClaimedRun, error) {
	if err := checkText("QD001", "queue name", queue); err != nil {
		return nil, err
	}
	if err := checkText("QD006", "worker id", workerID); err != nil {
		return nil, err
	}
	if qty < math.MinInt32 || qty > math.MaxInt32 {
		// The schema checks the range (1 to 10000); this cannot even be sent.
		return nil, clientError("QD006", "claim qty must be from 1 to 10000, got %d", qty)
	}
	rows, err := c.db.Query(ctx,
		`select run_id, task_id, attempt, task_name, params, headers, max_attempts, claim_expires_at
		   from durable.claim_task($1, $2, $3, $4)`,
		queue, workerID, seconds(claimTimeout), qty)
	if err != nil {
		return nil, mapError(err)
	}
	runs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ClaimedRun, error) {
		var r ClaimedRun
		err := row.Scan(&r.RunID, &r.TaskID, &r.Attempt, &r.TaskName, &r.Params, &r.Headers, &r.MaxAttempts, &r.ClaimExpiresAt)
		return r, err
	})
	return runs, mapError(err)
}

// CompleteRun records result (marshalled to JSON) for a running run and
// completes its task. It returns ErrLeaseLost, ErrTaskCancelled or
// ErrRunNotRunning (all matching ErrRunNotRunning) when the run is no longer
// this worker's to complete.
func (c *Client) CompleteRun(ctx context.Context, queue string, runID UUID, result any) error {
	if err := checkText("QD001", "queue name", queue); err != nil {
		return err
	}
	r, err := encodeJSON("result", result)
	if err != nil {
		return err
	}
	_, err = c.db.Exec(ctx, "select durable.complete_run($1, $2, $3)", queue, runID, r)
	return mapError(err)
}

// FailRun records reason (marshalled to JSON) for a running run and schedules
// the task's next attempt, at retryAt when it is not zero, else after the
// task's retry strategy's delay; with no attempts left the task fails. A reason
// object with "retryable": false fails the task at once. Errors as CompleteRun.
func (c *Client) FailRun(ctx context.Context, queue string, runID UUID, reason any, retryAt time.Time) error {
	if err := checkText("QD001", "queue name", queue); err != nil {
		return err
	}
	r, err := encodeJSON("reason", reason)
	if err != nil {
		return err
	}
	var at *time.Time
	if !retryAt.IsZero() {
		at = &retryAt
	}
	_, err = c.db.Exec(ctx, "select durable.fail_run($1, $2, $3, $4)", queue, runID, r, at)
	return mapError(err)
}

// ExtendClaim renews a running run's lease to now + extendBy (rounded up to
// whole seconds) and returns the new expiry. Errors as CompleteRun: this is how
// a worker learns that its task was cancelled.
func (c *Client) ExtendClaim(ctx context.Context, queue string, runID UUID, extendBy time.Duration) (time.Time, error) {
	if err := checkText("QD001", "queue name", queue); err != nil {
		return time.Time{}, err
	}
	var t time.Time
	err := c.db.QueryRow(ctx, "select durable.extend_claim($1, $2, $3)", queue, runID, seconds(extendBy)).Scan(&t)
	return t, mapError(err)
}

// ErrTaskFailed is returned by TaskDef.WaitForResult when the task failed.
// It is the client's own: no SQLSTATE raises it.
var ErrTaskFailed = errors.New("durable: task failed")

// TaskDef names a task and the Go types of its params (P) and result (R), so
// that spawning, handling and reading results need no JSON by hand.
//
//	var SendEmail = durable.DefineTask[EmailParams, EmailResult]("send-email")
type TaskDef[P, R any] struct {
	// Name is the task name that spawns use and handlers are registered under.
	Name string
}

// DefineTask returns the definition of the task called name.
func DefineTask[P, R any](name string) TaskDef[P, R] {
	return TaskDef[P, R]{Name: name}
}

// Spawn spawns the task with params on queue; see Client.Spawn.
func (d TaskDef[P, R]) Spawn(ctx context.Context, c *Client, queue string, params P, opts *SpawnOptions) (*SpawnResult, error) {
	return c.Spawn(ctx, queue, d.Name, params, opts)
}

// SpawnTx spawns the task with params on queue inside tx; see Client.SpawnTx.
func (d TaskDef[P, R]) SpawnTx(ctx context.Context, c *Client, tx DBTX, queue string, params P, opts *SpawnOptions) (*SpawnResult, error) {
	return c.SpawnTx(ctx, tx, queue, d.Name, params, opts)
}

// WaitForResult waits for the task to finish and decodes its result. A failed
// task gives an error matching ErrTaskFailed, a cancelled one ErrTaskCancelled.
func (d TaskDef[P, R]) WaitForResult(ctx context.Context, c *Client, queue string, taskID UUID) (R, error) {
	var out R
	r, err := c.WaitForResult(ctx, queue, taskID)
	if err != nil {
		return out, err
	}
	switch r.State {
	case StateFailed:
		return out, fmt.Errorf("%w: task %s: %s", ErrTaskFailed, taskID, r.FailureReason)
	case StateCancelled:
		return out, fmt.Errorf("%w: task %s", ErrTaskCancelled, taskID)
	}
	if len(r.Result) > 0 {
		if err := json.Unmarshal(r.Result, &out); err != nil {
			return out, fmt.Errorf("durable: decode result of task %s (%s): %w", taskID, d.Name, err)
		}
	}
	return out, nil
}

// checkText refuses, before any round trip, text that PostgreSQL cannot
// store: invalid UTF-8 or a NUL byte. Emptiness and the rest are the server's
// rules.
func checkText(code, what, s string) error {
	if !utf8.ValidString(s) {
		return clientError(code, "%s %q is not valid UTF-8", what, s)
	}
	if strings.IndexByte(s, 0) >= 0 {
		return clientError(code, "%s %q contains a NUL byte", what, s)
	}
	return nil
}

// encodeJSON marshals v for a jsonb argument. json.RawMessage and []byte
// are taken as JSON already and only checked.
func encodeJSON(what string, v any) ([]byte, error) {
	var b []byte
	switch x := v.(type) {
	case json.RawMessage:
		b = x
	case []byte:
		b = x
	default:
		var err error
		if b, err = json.Marshal(v); err != nil {
			return nil, clientError("QD006", "%s cannot be encoded as JSON: %v", what, err)
		}
	}
	if b == nil {
		return []byte("null"), nil
	}
	if !json.Valid(b) {
		return nil, clientError("QD006", "%s are not valid JSON", what)
	}
	if !utf8.Valid(b) {
		return nil, clientError("QD006", "%s are not valid UTF-8", what)
	}
	if escape := unstorableEscape(b); escape != "" {
		return nil, clientError("QD006", "%s contain the escape %s, which PostgreSQL's jsonb cannot store", what, escape)
	}
	if n := numberOutOfRange(b); n != "" {
		if len(n) > 40 {
			n = n[:40] + "..."
		}
		return nil, clientError("QD006", "%s contain the number %s, beyond what PostgreSQL's numeric can hold", what, n)
	}
	return b, nil
}

// The limits of PostgreSQL's numeric, which jsonb stores numbers as.
const (
	numericMaxLeadingExponent = 131071    // the first digit is at most the 10^131071s
	numericMaxScale           = 16383     // at most this many digits after the point
	numericMaxExponent        = 1<<30 - 2 // |e| in 1eN beyond this is refused as written
)

// numberOutOfRange returns the first number in valid JSON b that PostgreSQL's
// numeric cannot hold ("value overflows numeric format"), or "".
func numberOutOfRange(b []byte) string {
	inString := false
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case inString:
			if c == '\\' {
				i++
			} else if c == '"' {
				inString = false
			}
		case c == '"':
			inString = true
		case c == '-' || c >= '0' && c <= '9':
			j := i
			for j < len(b) && strings.IndexByte("+-.0123456789eE", b[j]) >= 0 {
				j++
			}
			if !numericFits(string(b[i:j])) {
				return string(b[i:j])
			}
			i = j - 1
		}
	}
	return ""
}

// numericFits reports whether JSON number n fits PostgreSQL's numeric.
func numericFits(n string) bool {
	n = strings.TrimPrefix(n, "-")
	mantissa, exp := n, 0
	if k := strings.IndexAny(n, "eE"); k >= 0 {
		mantissa = n[:k]
		digits := strings.TrimLeft(strings.TrimLeft(n[k+1:], "+-"), "0")
		if len(digits) > 10 {
			return false
		}
		e, _ := strconv.Atoi(digits)
		if e > numericMaxExponent {
			return false
		}
		if strings.HasPrefix(n[k+1:], "-") {
			e = -e
		}
		exp = e
	}
	intPart, frac, _ := strings.Cut(mantissa, ".")
	if max(0, len(frac)-exp) > numericMaxScale {
		return false
	}
	if t := strings.TrimLeft(intPart, "0"); t != "" {
		return len(t)-1+exp <= numericMaxLeadingExponent
	}
	if k := strings.IndexFunc(frac, func(r rune) bool { return r != '0' }); k >= 0 {
		return -(k+1)+exp <= numericMaxLeadingExponent
	}
	return true // zero
}

// unstorableEscape returns the first string escape in valid JSON b that
// PostgreSQL's jsonb refuses, or "": \u0000, and a \uD800-\uDFFF surrogate
// that is not the first half of a pair followed by its second half.
// Backslashes occur only inside strings, each starting an escape, so skipping
// the character after each one finds exactly the real escapes.
func unstorableEscape(b []byte) string {
	hex := func(i int) (rune, bool) {
		if i+5 >= len(b) || b[i+1] != 'u' {
			return 0, false
		}
		var r rune
		for _, c := range b[i+2 : i+6] {
			switch {
			case c >= '0' && c <= '9':
				r = r<<4 | rune(c-'0')
			case c >= 'a' && c <= 'f':
				r = r<<4 | rune(c-'a'+10)
			case c >= 'A' && c <= 'F':
				r = r<<4 | rune(c-'A'+10)
			default:
				return 0, false
			}
		}
		return r, true
	}
	for i := 0; i < len(b); i++ {
		if b[i] != '\\' {
			continue
		}
		r, ok := hex(i)
		if !ok {
			i++ // a one-character escape
			continue
		}
		switch {
		case r == 0:
			return `\u0000`
		case r >= 0xDC00 && r <= 0xDFFF:
			return string(b[i : i+6])
		case r >= 0xD800 && r <= 0xDBFF:
			if i+6 < len(b) && b[i+6] == '\\' {
				if low, ok := hex(i + 6); ok && low >= 0xDC00 && low <= 0xDFFF {
					i += 11 // the pair
					continue
				}
			}
			return string(b[i : i+6])
		}
		i += 5
	}
	return ""
}

// seconds rounds d up to whole seconds for the integer-second arguments.
func seconds(d time.Duration) int {
	s := math.Ceil(d.Seconds())
	if s > math.MaxInt32 {
		return math.MaxInt32
	}
	return int(s)
}

// QueueStats is one reading of durable.queue_stats: what an autoscaler or a
// person on call needs about a queue.
type QueueStats struct {
	// Queue is the queue's name.
	Queue string `json:"queue_name"`
	// Pending, Running and Sleeping count the tasks in each live state,
	// exactly.
	Pending  int64 `json:"pending"`
	Running  int64 `json:"running"`
	Sleeping int64 `json:"sleeping"`
	// Completed, Failed and Cancelled count the finished tasks in each final
	// state: exactly when TerminalCounts is "exact", else the planner's
	// estimates from the database's statistics. The schema no longer returns
	// NULL for them (since migration 010); they stay pointers so that callers
	// written for older schemas keep compiling.
	Completed *int64 `json:"completed"`
	Failed    *int64 `json:"failed"`
	Cancelled *int64 `json:"cancelled"`
	// Finished is Completed + Failed + Cancelled (exact or estimated alike).
	Finished int64 `json:"finished"`
	// ReadyNow counts the runs a worker could claim now.
	ReadyNow int64 `json:"ready_now"`
	// Scheduled counts the pending or sleeping runs due later.
	Scheduled int64 `json:"scheduled"`
	// OldestReadyAge is how long the longest-waiting ready run has been
	// claimable (0 when none is): how far behind the workers are. Not in
	// its JSON, whose readers want seconds (see the durable command).
	OldestReadyAge time.Duration `json:"-"`
	// KeysHeld counts the live tasks that hold an idempotency key.
	KeysHeld int64 `json:"keys_held"`
	// TerminalCounts is "exact" or "estimated".
	TerminalCounts string `json:"terminal_counts"`
	// MeasuredAt is the database's time of the reading.
	MeasuredAt time.Time `json:"measured_at"`
}

// QueueStats returns the figures of durable.queue_stats for queue. Cheap
// enough to poll every second: it reads the indexes of live work only.
func (c *Client) QueueStats(ctx context.Context, queue string) (*QueueStats, error) {
	if err := checkText("QD001", "queue name", queue); err != nil {
		return nil, err
	}
	var s QueueStats
	var age float64
	err := c.db.QueryRow(ctx,
		`select queue_name, pending, running, sleeping, completed, failed, cancelled, finished,
		        ready_now, scheduled, oldest_ready_age, keys_held, terminal_counts, measured_at
		   from durable.queue_stats($1)`, queue,
	).Scan(&s.Queue, &s.Pending, &s.Running, &s.Sleeping, &s.Completed, &s.Failed, &s.Cancelled, &s.Finished,
		&s.ReadyNow, &s.Scheduled, &age, &s.KeysHeld, &s.TerminalCounts, &s.MeasuredAt)
	if err != nil {
		return nil, mapError(err)
	}
	s.OldestReadyAge = time.Duration(age * float64(time.Second))
	return &s, nil
}

// ListTasksOptions filter ListTasks. A nil *ListTasksOptions lists any task.
type ListTasksOptions struct {
	// State keeps the tasks in that state. Defaults to any (when empty).
	State TaskState
	// TaskName keeps the tasks of that name. Defaults to any.
	TaskName string
	// IdempotencyKey keeps the tasks spawned with that explicit key.
	// Defaults to any.
	IdempotencyKey string
	// Limit is the most tasks returned, 1 to 1000. Defaults to 100 (when 0).
	Limit int
}

// TaskSummary is one row of ListTasks.
type TaskSummary struct {
	TaskID         UUID       `json:"task_id"`
	TaskName       string     `json:"task_name"`
	State          TaskState  `json:"state"`
	Attempts       int        `json:"attempts"`
	MaxAttempts    int        `json:"max_attempts"`
	IdempotencyKey *string    `json:"idempotency_key"`
	RunID          UUID       `json:"run_id"`
	AvailableAt    *time.Time `json:"available_at"`
	EnqueuedAt     time.Time  `json:"enqueued_at"`
	FirstStartedAt *time.Time `json:"first_started_at"`
	FinishedAt     *time.Time `json:"finished_at"`
	ParentTaskID   *UUID      `json:"parent_task_id"`
}

// ListTasks returns up to opts.Limit tasks of queue matching opts, through
// durable.list_tasks: pending and sleeping tasks in the order workers claim
// them, running ones by lease expiry, others in no particular order.
func (c *Client) ListTasks(ctx context.Context, queue string, opts *ListTasksOptions) ([]TaskSummary, error) {
	if err := checkText("QD001", "queue name", queue); err != nil {
		return nil, err
	}
	var o ListTasksOptions
	if opts != nil {
		o = *opts
	}
	if o.Limit == 0 {
		o.Limit = 100
	}
	for _, f := range []struct{ code, what, v string }{
		{"QD006", "state", string(o.State)}, {"QD003", "task name", o.TaskName}, {"QD004", "idempotency key", o.IdempotencyKey},
	} {
		if err := checkText(f.code, f.what, f.v); err != nil {
			return nil, err
		}
	}
	rows, err := c.db.Query(ctx,
		`select task_id, task_name, state, attempts, max_attempts, idempotency_key, run_id, available_at,
		        enqueued_at, first_started_at, finished_at, parent_task_id
		   from durable.list_tasks($1, $2, $3, $4, $5)`,
		queue, nullIfEmpty(string(o.State)), nullIfEmpty(o.TaskName), nullIfEmpty(o.IdempotencyKey), o.Limit)
	if err != nil {
		return nil, mapError(err)
	}
	tasks, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (TaskSummary, error) {
		var t TaskSummary
		err := row.Scan(&t.TaskID, &t.TaskName, &t.State, &t.Attempts, &t.MaxAttempts, &t.IdempotencyKey,
			&t.RunID, &t.AvailableAt, &t.EnqueuedAt, &t.FirstStartedAt, &t.FinishedAt, &t.ParentTaskID)
		return t, err
	})
	if err != nil {
		return nil, mapError(err)
	}
	return tasks, nil
}

// TaskDetail is a task with its runs and checkpoints, from GetTask.
type TaskDetail struct {
	TaskID         UUID            `json:"task_id"`
	TaskName       string          `json:"task_name"`
	State          TaskState       `json:"state"`
	Params         json.RawMessage `json:"params"`
	Headers        json.RawMessage `json:"headers"`
	Attempts       int             `json:"attempts"`
	MaxAttempts    int             `json:"max_attempts"`
	RetryStrategy  json.RawMessage `json:"retry_strategy"`
	IdempotencyKey *string         `json:"idempotency_key"`
	KeyHeld        bool            `json:"key_held"`
	Result         json.RawMessage `json:"result"`
	FailureReason  json.RawMessage `json:"failure_reason"`
	ParentTaskID   *UUID           `json:"parent_task_id"`
	CancelDeadline *time.Time      `json:"cancel_deadline"`
	EnqueuedAt     time.Time       `json:"enqueued_at"`
	FirstStartedAt *time.Time      `json:"first_started_at"`
	FinishedAt     *time.Time      `json:"finished_at"`
	// Runs are the task's attempts, oldest first.
	Runs []RunDetail `json:"runs"`
	// Checkpoints are the task's recorded steps, in the order they were
	// written.
	Checkpoints []CheckpointDetail `json:"checkpoints"`
}

// RunDetail is one attempt of a task.
type RunDetail struct {
	RunID          UUID            `json:"run_id"`
	Attempt        int             `json:"attempt"`
	State          TaskState       `json:"state"`
	AvailableAt    time.Time       `json:"available_at"`
	ClaimedBy      *string         `json:"claimed_by"`
	ClaimExpiresAt *time.Time      `json:"claim_expires_at"`
	StartedAt      *time.Time      `json:"started_at"`
	FinishedAt     *time.Time      `json:"finished_at"`
	Result         json.RawMessage `json:"result"`
	FailureReason  json.RawMessage `json:"failure_reason"`
	CreatedAt      time.Time       `json:"created_at"`
}

// CheckpointDetail is one recorded step of a task.
type CheckpointDetail struct {
	StepName  string          `json:"step_name"`
	State     json.RawMessage `json:"state"`
	RunID     UUID            `json:"run_id"`
	Attempt   int             `json:"attempt"`
	UpdatedAt time.Time       `json:"updated_at"`
}

// GetTask returns the task with its runs (failure reasons included) and its
// checkpoints, through durable.get_task. It returns ErrTaskNotFound when the
// queue has no such task.
func (c *Client) GetTask(ctx context.Context, queue string, taskID UUID) (*TaskDetail, error) {
	if err := checkText("QD001", "queue name", queue); err != nil {
		return nil, err
	}
	var d TaskDetail
	var runs, checkpoints []byte
	err := c.db.QueryRow(ctx,
		`select task_id, task_name, state, params, headers, attempts, max_attempts, retry_strategy,
		        idempotency_key, key_held, result, failure_reason, parent_task_id, cancel_deadline,
		        enqueued_at, first_started_at, finished_at, runs, checkpoints
		   from durable.get_task($1, $2)`, queue, taskID,
	).Scan(&d.TaskID, &d.TaskName, &d.State, &d.Params, &d.Headers, &d.Attempts, &d.MaxAttempts, &d.RetryStrategy,
		&d.IdempotencyKey, &d.KeyHeld, &d.Result, &d.FailureReason, &d.ParentTaskID, &d.CancelDeadline,
		&d.EnqueuedAt, &d.FirstStartedAt, &d.FinishedAt, &runs, &checkpoints)
	if err != nil {
		return nil, mapError(err)
	}
	if err := json.Unmarshal(runs, &d.Runs); err != nil {
		return nil, fmt.Errorf("durable: decode runs of task %s: %w", taskID, err)
	}
	if err := json.Unmarshal(checkpoints, &d.Checkpoints); err != nil {
		return nil, fmt.Errorf("durable: decode checkpoints of task %s: %w", taskID, err)
	}
	return &d, nil
}

// nullIfEmpty is nil for "", else s: an optional text argument.
func nullIfEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}
