package durable

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrSuspended is returned, wrapped, by a Task's SleepFor, SleepUntil,
// AwaitEvent and AwaitTask (and TaskDef.AwaitChild) when the run has just been
// put to sleep: its lease is released, and the same run is claimed again when
// the wait is over, its handler then replaying the task from its checkpoints.
// The handler must return the error (or one wrapping it) at once; the worker
// then neither completes nor fails the run. It is the client's own: no
// SQLSTATE raises it.
var ErrSuspended = errors.New("durable: run suspended")

// ErrAwaitTimeout is returned, wrapped, by a Task's AwaitEvent and AwaitTask
// (and TaskDef.AwaitChild) when the wait's timeout passed before the event was
// emitted or the task finished. The timeout is recorded as the step's outcome,
// so every replay of the step returns it too. It is the client's own: no
// SQLSTATE raises it.
var ErrAwaitTimeout = errors.New("durable: await timed out")

// taskRuntime is what a Task's durable calls need; the worker sets it up for
// each claimed run.
type taskRuntime struct {
	client   *Client
	extendBy int // seconds: the worker's claim timeout, the lease a checkpoint renews

	// onSuspend is called once the run has been suspended, onLost when a
	// durable call found that the run is no longer this worker's.
	onSuspend func()
	onLost    func(error)

	mu          sync.Mutex
	loaded      bool
	checkpoints map[string]json.RawMessage // step name -> recorded state
	used        map[string]bool            // step names taken by this execution
	calls       map[string]int             // durable calls so far, by the name the handler gave

	suspended  atomic.Bool
	suspending atomic.Int32 // durable calls in flight that may suspend the run
}

func newTaskRuntime(c *Client, extendBy int, onSuspend func(), onLost func(error)) *taskRuntime {
	return &taskRuntime{
		client:    c,
		extendBy:  extendBy,
		onSuspend: onSuspend,
		onLost:    onLost,
		used:      map[string]bool{},
		calls:     map[string]int{},
	}
}

// beingSuspended reports whether the run is suspended, or a call that may
// suspend it is in flight.
func (rt *taskRuntime) beingSuspended() bool {
	return rt.suspended.Load() || rt.suspending.Load() > 0
}

// runtime returns t's durable state, or an error for a Task a worker did not
// hand out, or whose run has been suspended.
func (t *Task) runtime() (*taskRuntime, error) {
	if t == nil || t.rt == nil {
		return nil, errors.New("durable: durable calls need a Task handed to a handler by a Worker")
	}
	if t.rt.suspended.Load() {
		return nil, fmt.Errorf("%w: run %s of task %s is suspended; the handler must return", ErrSuspended, t.RunID, t.TaskID)
	}
	return t.rt, nil
}

// step names the next durable call, whose handler-given name is name, and
// returns its recorded state when an earlier execution recorded one. The
// checkpoints are loaded on the first durable call of an execution.
//
// The k-th call named name in an execution is the step name#k (name alone for
// the first), skipping any name already taken, so loops get distinct steps and
// a replay that makes the same calls in the same order gets the same names,
// whether earlier calls succeeded or not.
func (t *Task) step(ctx context.Context, name string) (rt *taskRuntime, step string, state json.RawMessage, found bool, err error) {
	if rt, err = t.runtime(); err != nil {
		return nil, "", nil, false, err
	}
	if name == "" {
		return nil, "", nil, false, clientError("QD006", "step name must not be empty (task %s)", t.TaskID)
	}
	if err := checkText("QD006", "step name", name); err != nil {
		return nil, "", nil, false, err
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if !rt.loaded {
		if err := rt.load(ctx, t); err != nil {
			return nil, "", nil, false, err
		}
	}
	for {
		rt.calls[name]++
		step = name
		if k := rt.calls[name]; k > 1 {
			step = name + "#" + strconv.Itoa(k)
		}
		if !rt.used[step] {
			break
		}
	}
	rt.used[step] = true
	state, found = rt.checkpoints[step]
	return rt, step, state, found, nil
}

// load reads the task's checkpoints. The caller holds rt.mu.
func (rt *taskRuntime) load(ctx context.Context, t *Task) error {
	rows, err := rt.client.db.Query(ctx,
		"select step_name, state from durable.get_task_checkpoint_states($1, $2, $3)",
		t.Queue, t.TaskID, t.RunID)
	if err != nil {
		return rt.check(err)
	}
	cps := map[string]json.RawMessage{}
	var name string
	var state json.RawMessage
	_, err = pgx.ForEachRow(rows, []any{&name, &state}, func() error {
		cps[name] = append(json.RawMessage(nil), state...)
		return nil
	})
	if err != nil {
		return rt.check(err)
	}
	rt.checkpoints, rt.loaded = cps, true
	return nil
}

// check maps err and, when it says that the run is no longer this worker's,
// reports that to the worker.
func (rt *taskRuntime) check(err error) error {
	err = mapError(err)
	if errors.Is(err, ErrRunNotRunning) || errors.Is(err, ErrRunNotFound) || errors.Is(err, ErrQueueNotFound) {
		rt.onLost(err)
	}
	return err
}

// remember caches a state this execution recorded.
func (rt *taskRuntime) remember(step string, state json.RawMessage) {
	rt.mu.Lock()
	rt.checkpoints[step] = state
	rt.mu.Unlock()
}

// suspend records that the run was suspended.
func (rt *taskRuntime) suspend() {
	if rt.suspended.CompareAndSwap(false, true) {
		rt.onSuspend()
	}
}

// Step runs fn once for the task, whatever the number of attempts: the first
// time, it stores fn's result (as JSON) as the step's checkpoint and renews
// the run's lease; a later attempt, or the same run claimed again after a
// suspension, gets the stored result without calling fn. The result is
// returned as decoded from its JSON, on the first run as on replays, so the
// handler sees the same value either way.
//
// An error of fn is returned as it is and nothing is stored: the next call or
// attempt runs fn again. A name used again in one run names a new step (the
// second is name#2, then name#3...), so a loop of steps works as long as each
// run makes its durable calls in the same order; to retry inside a step, retry
// inside fn. fn must not make durable calls of t.
//
// When the checkpoint is refused because the run is no longer this worker's,
// Step returns an error matching ErrRunNotRunning (ErrLeaseLost,
// ErrTaskCancelled) and the handler should return: its outcome is dropped.
func Step[T any](ctx context.Context, t *Task, name string, fn func(ctx context.Context) (T, error)) (T, error) {
	var zero T
	rt, step, state, found, err := t.step(ctx, name)
	if err != nil {
		return zero, err
	}
	if found {
		var out T
		if err := json.Unmarshal(state, &out); err != nil {
			return zero, fmt.Errorf("durable: decode the recorded result of step %q of task %s into %T: %w", step, t.TaskID, out, err)
		}
		return out, nil
	}

	v, err := fn(ctx)
	if err != nil {
		return zero, err
	}
	b, err := encodeJSON("step result", v)
	if err != nil {
		return zero, fmt.Errorf("durable: step %q of task %s: %w", step, t.TaskID, err)
	}
	// Decode before storing, so that a result a replay could not decode is
	// refused now rather than on every later attempt.
	var out T
	if err := json.Unmarshal(b, &out); err != nil {
		return zero, fmt.Errorf("durable: step %q of task %s: result %T does not decode from its JSON: %w", step, t.TaskID, v, err)
	}
	_, err = rt.client.db.Exec(ctx,
		"select durable.set_task_checkpoint_state($1, $2, $3, $4, $5, $6)",
		t.Queue, t.TaskID, step, b, t.RunID, rt.extendBy)
	if err != nil {
		return zero, rt.check(err)
	}
	rt.remember(step, b)
	return out, nil
}

// SleepFor sleeps durably for d: the first call of the step records its wake
// time (now by the database's clock, plus d) and suspends the run until then,
// returning an error matching ErrSuspended that the handler must return. When
// the run is claimed again and replays the step, the recorded time is used (a
// sleep does not restart), and SleepFor returns nil once it has passed.
func (t *Task) SleepFor(ctx context.Context, step string, d time.Duration) error {
	return t.sleep(ctx, step, "durable.current_time() + make_interval(secs => $5::float8)", d.Seconds())
}

// SleepUntil sleeps durably until at; see SleepFor. It returns nil at once
// when at has passed, and an error matching ErrSuspended when the run was
// suspended. Replays use the wake time the first call recorded.
func (t *Task) SleepUntil(ctx context.Context, step string, at time.Time) error {
	return t.sleep(ctx, step, "$5::timestamptz", at)
}

func (t *Task) sleep(ctx context.Context, name, wakeAt string, arg any) error {
	rt, step, _, _, err := t.step(ctx, name)
	if err != nil {
		return err
	}
	rt.suspending.Add(1)
	defer rt.suspending.Add(-1)
	var suspended bool
	err = rt.client.db.QueryRow(ctx,
		"select durable.sleep_until($1, $2, $3, $4, "+wakeAt+")",
		t.Queue, t.TaskID, t.RunID, step, arg).Scan(&suspended)
	if err != nil {
		return rt.check(err)
	}
	if !suspended {
		return nil
	}
	rt.suspend()
	return fmt.Errorf("%w: task %s sleeps (step %q)", ErrSuspended, t.TaskID, step)
}

// AwaitEvent waits durably for the event of the task's queue and returns its
// payload. An event emitted before the wait began counts. When it has not been
// emitted yet, the run is suspended and AwaitEvent returns an error matching
// ErrSuspended, which the handler must return; the run is claimed again when
// the event is emitted (or the timeout passes), and the replayed AwaitEvent
// returns the payload (or an error matching ErrAwaitTimeout).
//
// timeout counts from the first wait, in whole seconds rounded up; 0 waits
// forever.
func (t *Task) AwaitEvent(ctx context.Context, step, event string, timeout time.Duration) (json.RawMessage, error) {
	if err := checkText("QD007", "event name", event); err != nil {
		return nil, err
	}
	return t.await(ctx, step, fmt.Sprintf("event %q", event),
		"select status, payload from durable.await_event($1, $2, $3, $4, $5, $6)", event, timeout)
}

// AwaitTask waits durably for the task taskID of the same queue (typically a
// child spawned with SpawnChild) to finish, whatever way it ends, and returns
// its outcome. Suspension and timeout are as for AwaitEvent. A task returned by
// a deduplicated spawn is waited for the same way. The outcome's Result and
// FailureReason are nil when they are JSON null. TaskDef.AwaitChild decodes
// the result.
func (t *Task) AwaitTask(ctx context.Context, step string, taskID UUID, timeout time.Duration) (*TaskResult, error) {
	payload, err := t.await(ctx, step, "task "+taskID.String(),
		"select status, payload from durable.await_task_result($1, $2, $3, $4, $5, $6)", taskID, timeout)
	if err != nil {
		return nil, err
	}
	var p struct {
		TaskID        UUID            `json:"task_id"`
		State         TaskState       `json:"state"`
		Result        json.RawMessage `json:"result"`
		FailureReason json.RawMessage `json:"failure_reason"`
	}
	if err := json.Unmarshal(payload, &p); err != nil {
		return nil, fmt.Errorf("durable: decode the outcome of task %s: %w", taskID, err)
	}
	return &TaskResult{TaskID: p.TaskID, State: p.State, Result: nullToNil(p.Result), FailureReason: nullToNil(p.FailureReason)}, nil
}

// nullToNil returns nil for the JSON null.
func nullToNil(b json.RawMessage) json.RawMessage {
	if string(b) == "null" {
		return nil
	}
	return b
}

// await is AwaitEvent and AwaitTask: query takes (queue, task, run, step,
// what, timeout seconds) and returns (status, payload).
func (t *Task) await(ctx context.Context, name, what, query string, arg any, timeout time.Duration) (json.RawMessage, error) {
	rt, step, _, _, err := t.step(ctx, name)
	if err != nil {
		return nil, err
	}
	rt.suspending.Add(1)
	defer rt.suspending.Add(-1)
	var status string
	var payload json.RawMessage
	err = rt.client.db.QueryRow(ctx, query,
		t.Queue, t.TaskID, t.RunID, step, arg, timeoutSeconds(timeout)).Scan(&status, &payload)
	if err != nil {
		return nil, rt.check(err)
	}
	switch status {
	case "received":
		return payload, nil
	case "timed_out":
		return nil, fmt.Errorf("%w: task %s waited for %s (step %q)", ErrAwaitTimeout, t.TaskID, what, step)
	case "suspended":
		rt.suspend()
		return nil, fmt.Errorf("%w: task %s waits for %s (step %q)", ErrSuspended, t.TaskID, what, step)
	}
	return nil, fmt.Errorf("durable: unexpected wait status %q for %s (step %q)", status, what, step)
}

// timeoutSeconds is the timeout_seconds argument of the awaits: NULL (wait
// forever) for 0, else whole seconds away from zero, so that a negative
// timeout reaches the server, which refuses it.
func timeoutSeconds(d time.Duration) *int {
	if d == 0 {
		return nil
	}
	s := seconds(d)
	if d < 0 {
		s = int(math.Max(math.Floor(d.Seconds()), math.MinInt32))
	}
	return &s
}

// EmitEvent emits the event on the task's queue; see Client.EmitEvent. It is
// not a step: the first emit of a name wins, so a replay emitting it again
// changes nothing.
func (t *Task) EmitEvent(ctx context.Context, event string, payload any) (bool, error) {
	rt, err := t.runtime()
	if err != nil {
		return false, err
	}
	return rt.client.EmitEvent(ctx, t.Queue, event, payload)
}

// txBeginner is what SpawnChild needs of the client's database:
// *pgxpool.Pool, *pgx.Conn and pgx.Tx all have it.
type txBeginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// spawnCheckpoint is the state SpawnChild records for its step.
type spawnCheckpoint struct {
	TaskID  UUID      `json:"task_id"`
	RunID   UUID      `json:"run_id"`
	Attempt int       `json:"attempt"`
	Created bool      `json:"created"`
	State   TaskState `json:"state"`
}

// SpawnChild spawns taskName with params on the task's queue as a child of
// this task (opts.ParentTaskID is set to t.TaskID; other options apply as in
// Client.Spawn): the child is cancelled when this task fails or is cancelled.
// The spawn and the step's checkpoint commit in one transaction, so a replay
// returns the recorded spawn (RunID, Attempt and State as they were then) and
// never spawns a second child. With an idempotency key held by a live task,
// that task is returned with Created false, and recorded the same way.
func (t *Task) SpawnChild(ctx context.Context, step, taskName string, params any, opts *SpawnOptions) (*SpawnResult, error) {
	rt, step, state, found, err := t.step(ctx, step)
	if err != nil {
		return nil, err
	}
	if found {
		var cp spawnCheckpoint
		if err := json.Unmarshal(state, &cp); err != nil {
			return nil, fmt.Errorf("durable: decode the recorded spawn of step %q of task %s: %w", step, t.TaskID, err)
		}
		return &SpawnResult{TaskID: cp.TaskID, RunID: cp.RunID, Attempt: cp.Attempt, Created: cp.Created, State: cp.State}, nil
	}

	db, ok := rt.client.db.(txBeginner)
	if !ok {
		return nil, fmt.Errorf("durable: SpawnChild needs a client database that can begin a transaction, got %T", rt.client.db)
	}
	o := SpawnOptions{}
	if opts != nil {
		o = *opts
	}
	o.ParentTaskID = t.TaskID

	tx, err := db.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	r, err := rt.client.SpawnTx(ctx, tx, t.Queue, taskName, params, &o)
	if err != nil {
		return nil, rt.check(err)
	}
	b, err := json.Marshal(spawnCheckpoint{TaskID: r.TaskID, RunID: r.RunID, Attempt: r.Attempt, Created: r.Created, State: r.State})
	if err != nil {
		return nil, err
	}
	_, err = tx.Exec(ctx,
		"select durable.set_task_checkpoint_state($1, $2, $3, $4, $5, $6)",
		t.Queue, t.TaskID, step, b, t.RunID, rt.extendBy)
	if err != nil {
		return nil, rt.check(err)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, rt.check(err)
	}
	rt.remember(step, b)
	return r, nil
}

// SpawnChild spawns the task with params as a child of t; see Task.SpawnChild.
func (d TaskDef[P, R]) SpawnChild(ctx context.Context, t *Task, step string, params P, opts *SpawnOptions) (*SpawnResult, error) {
	return t.SpawnChild(ctx, step, d.Name, params, opts)
}

// AwaitChild waits durably for the task childID (see Task.AwaitTask) and
// decodes its result. A failed child gives an error matching ErrTaskFailed, a
// cancelled one ErrTaskCancelled; suspension and timeout give errors matching
// ErrSuspended and ErrAwaitTimeout.
func (d TaskDef[P, R]) AwaitChild(ctx context.Context, t *Task, step string, childID UUID, timeout time.Duration) (R, error) {
	var out R
	r, err := t.AwaitTask(ctx, step, childID, timeout)
	if err != nil {
		return out, err
	}
	switch r.State {
	case StateFailed:
		return out, fmt.Errorf("%w: task %s: %s", ErrTaskFailed, childID, r.FailureReason)
	case StateCancelled:
		return out, fmt.Errorf("%w: task %s", ErrTaskCancelled, childID)
	}
	if len(r.Result) > 0 {
		if err := json.Unmarshal(r.Result, &out); err != nil {
			return out, fmt.Errorf("durable: decode result of task %s (%s): %w", childID, d.Name, err)
		}
	}
	return out, nil
}
