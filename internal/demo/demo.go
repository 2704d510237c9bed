// Package demo simulates a multi-instance deployment in which every instance
// sees the same events and spawns the same task for each of them, and counts
// how often each event's task actually runs.
//
// Each instance has its own connection pool and client, as separate processes
// would. All instances start spawning at the same moment, event after event,
// so that the spawns of one event race each other. Workers (each a
// durable.Worker on one instance's pool) execute the tasks and count the
// executions per event in memory.
//
// Deduplication holds a key while its task is unfinished (pending, running or
// sleeping). By default handlers do not return before every instance has
// spawned every event, which is the case deduplication is for: the duplicates
// arrive while the first task is still unfinished. With NoHold, handlers
// return at once, and an instance that sees an event after its task finished
// creates, as documented, a new one.
//
// The demo uses durable's public API only.
package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/durable-go/durable"
)

// TaskName is the name of the task every instance spawns for an event.
const TaskName = "handle-event"

// ErrInvalidConfig is returned by Run when the Config is out of range.
var ErrInvalidConfig = errors.New("demo: invalid config")

// Config sets the simulation up. Zero fields take their defaults.
type Config struct {
	// DatabaseURL is the database, migrated with durable.Migrate. Required.
	DatabaseURL string
	// Instances is how many instances see the event stream. Defaults to 8.
	Instances int
	// Events is how many events the stream has. Defaults to 1000.
	Events int
	// Workers is how many durable.Workers execute the tasks; worker i runs on
	// instance i mod Instances. Defaults to Instances.
	Workers int
	// Concurrency is each worker's Concurrency. Defaults to 8.
	Concurrency int
	// PoolSize is the MaxConns of each instance's pool. Defaults to 4.
	PoolSize int
	// OnlyOnce spawns with SpawnOptions.OnlyOnce (the key is derived from the
	// task name and the params {"event": n}) instead of the idempotency key
	// "event-<n>". Defaults to false.
	OnlyOnce bool
	// NoKeys spawns without any key, so every spawn creates a task: the
	// duplication that deduplication prevents. Defaults to false.
	NoKeys bool
	// NoHold lets handlers return at once instead of waiting until every
	// instance has spawned every event. Defaults to false.
	NoHold bool
	// Queue is the queue to use; it must not exist yet. Defaults to
	// "demo_<unix nanoseconds>".
	Queue string
	// Keep keeps the queue after the run instead of dropping it. Defaults to
	// false.
	Keep bool
	// Logger receives the clients' and workers' logs. Defaults to none.
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Instances == 0 {
		c.Instances = 8
	}
	if c.Events == 0 {
		c.Events = 1000
	}
	if c.Workers == 0 {
		c.Workers = c.Instances
	}
	if c.Concurrency == 0 {
		c.Concurrency = 8
	}
	if c.PoolSize == 0 {
		c.PoolSize = 4
	}
	if c.Queue == "" {
		c.Queue = fmt.Sprintf("demo_%d", time.Now().UnixNano())
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

func (c *Config) validate() error {
	var problems []string
	if c.DatabaseURL == "" {
		problems = append(problems, "a database URL is required")
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"instances", c.Instances}, {"events", c.Events}, {"workers", c.Workers}, {"concurrency", c.Concurrency}, {"pool size", c.PoolSize}} {
		if f.v < 1 {
			problems = append(problems, fmt.Sprintf("%s must be at least 1, got %d", f.name, f.v))
		}
	}
	if c.OnlyOnce && c.NoKeys {
		problems = append(problems, "only-once and no-keys exclude each other")
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, strings.Join(problems, "; "))
	}
	return nil
}

// Mode names how the instances deduplicate: "idempotency key", "only-once" or
// "no keys".
func (c Config) Mode() string {
	switch {
	case c.NoKeys:
		return "no keys"
	case c.OnlyOnce:
		return "only-once"
	default:
		return "idempotency key"
	}
}

// Report is what a run counted.
type Report struct {
	// Queue is the queue the run used.
	Queue string
	// Instances, Events, Workers and Concurrency are the run's Config values.
	Instances, Events, Workers, Concurrency int
	// Mode is Config.Mode().
	Mode string
	// NoKeys and NoHold are the run's Config values.
	NoKeys, NoHold bool

	// SpawnCalls is how many spawns the instances made: Instances × Events.
	SpawnCalls int
	// Created is how many spawns created a task.
	Created int
	// Duplicates is how many spawns returned an existing task (created=false).
	Duplicates int
	// SpawnRetries is how many spawns were retried after a serialization
	// failure (SQLSTATE 40001), which spawn_task raises as a last resort.
	SpawnRetries int
	// Wins is, per instance, how many of its spawns created a task.
	Wins []int

	// Executions is how many times a handler ran.
	Executions int
	// ExecutionsWhileSpawning is how many of them started before the last
	// spawn returned.
	ExecutionsWhileSpawning int
	// ExactlyOnce, MoreThanOnce and Never count the events whose task ran
	// exactly once, more than once, and not at all.
	ExactlyOnce, MoreThanOnce, Never int
	// MaxPerEvent is the most executions of one event.
	MaxPerEvent int
	// TasksRunOnce is how many created tasks ran exactly once.
	TasksRunOnce int
	// NotCompleted is how many created tasks ended in a state other than
	// completed.
	NotCompleted int

	// SpawnElapsed is the time from the start signal to the last spawn.
	SpawnElapsed time.Duration
	// Elapsed is the time from the start signal until every created task was
	// finished.
	Elapsed time.Duration
}

// OK reports whether the run showed what its mode promises. With keys, every
// event ran exactly once. With NoKeys, every spawn created a task and every
// task ran exactly once (so every event ran Instances times). With NoHold,
// every task ran exactly once and every event at least once; events that ran
// again were spawned after their first task had finished.
func (r *Report) OK() bool {
	tasksOK := r.TasksRunOnce == r.Created && r.Executions == r.Created && r.NotCompleted == 0
	switch {
	case r.NoKeys:
		return tasksOK && r.Created == r.SpawnCalls
	case r.NoHold:
		return tasksOK && r.Never == 0
	default:
		return tasksOK && r.ExactlyOnce == r.Events
	}
}

// SpawnsPerSecond is SpawnCalls over SpawnElapsed.
func (r *Report) SpawnsPerSecond() float64 { return perSecond(r.SpawnCalls, r.SpawnElapsed) }

// ExecutionsPerSecond is Executions over Elapsed.
func (r *Report) ExecutionsPerSecond() float64 { return perSecond(r.Executions, r.Elapsed) }

// ExecutionsPerSecondAfterSpawning is the executions that started after the
// last spawn over the time from then until every task finished: how fast the
// workers went once the spawning stopped competing with them.
func (r *Report) ExecutionsPerSecondAfterSpawning() float64 {
	return perSecond(r.Executions-r.ExecutionsWhileSpawning, r.Elapsed-r.SpawnElapsed)
}

func perSecond(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// spawnRecord is what one instance's spawn of one event returned.
type spawnRecord struct {
	taskID  durable.UUID
	created bool
}

// instance is one simulated process: its own pool and client.
type instance struct {
	pool   *pgxpool.Pool
	client *durable.Client
}

// tally counts handler executions, per event and per task.
type tally struct {
	perEvent []atomic.Int32
	mu       sync.Mutex
	perTask  map[durable.UUID]int
	total    atomic.Int64
}

type eventParams struct {
	Event int `json:"event"`
}

// Run runs the simulation described by cfg, writes what it does and its
// report to out (nil for none) and returns the report. It returns an error
// only when the run could not be carried out; whether the counts are right is
// Report.OK.
func Run(ctx context.Context, cfg Config, out io.Writer) (*Report, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if out == nil {
		out = io.Discard
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	// The monitor creates, watches and drops the queue; it is not one of
	// the instances.
	monitor, err := newInstance(ctx, cfg, 4)
	if err != nil {
		return nil, err
	}
	defer monitor.pool.Close()
	queues, err := monitor.client.ListQueues(ctx)
	if err != nil {
		return nil, fmt.Errorf("demo: list queues: %w", err)
	}
	for _, q := range queues {
		if q == cfg.Queue {
			return nil, fmt.Errorf("%w: queue %q already exists; choose a new one, or drop it", ErrInvalidConfig, cfg.Queue)
		}
	}
	if err := monitor.client.CreateQueue(ctx, cfg.Queue); err != nil {
		if errors.Is(err, durable.ErrInvalidQueueName) {
			return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
		return nil, fmt.Errorf("demo: create queue: %w", err)
	}
	if !cfg.Keep {
		defer func() {
			dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer dcancel()
			if err := monitor.client.DropQueue(dctx, cfg.Queue); err != nil {
				fmt.Fprintf(out, "demo: could not drop queue %s: %v\n", cfg.Queue, err)
			}
		}()
	}

	instances := make([]*instance, cfg.Instances)
	for i := range instances {
		if instances[i], err = newInstance(ctx, cfg, int32(cfg.PoolSize)); err != nil {
			return nil, err
		}
		defer instances[i].pool.Close()
	}

	fmt.Fprintf(out, "durable demo: %d instances × %d events, %s; queue %s\n",
		cfg.Instances, cfg.Events, describeMode(cfg), cfg.Queue)
	fmt.Fprintf(out, "  %d workers × concurrency %d, %d connections per instance; handlers %s\n",
		cfg.Workers, cfg.Concurrency, cfg.PoolSize, describeHold(cfg))

	t := &tally{perEvent: make([]atomic.Int32, cfg.Events), perTask: map[durable.UUID]int{}}
	spawnsDone := make(chan struct{})
	stopWorkers, err := startWorkers(ctx, cfg, instances, t, spawnsDone, cancel)
	if err != nil {
		return nil, err
	}
	defer stopWorkers()

	// Spawn: every instance waits at the barrier, then spawns every event.
	records := make([][]spawnRecord, cfg.Instances)
	retries := make([]int, cfg.Instances)
	var ready, finished sync.WaitGroup
	start := make(chan struct{})
	spawnErrs := make([]error, cfg.Instances)
	for i, inst := range instances {
		records[i] = make([]spawnRecord, cfg.Events)
		ready.Add(1)
		finished.Go(func() {
			ready.Done()
			<-start
			spawnErrs[i] = inst.spawnAll(ctx, cfg, records[i], &retries[i])
			if spawnErrs[i] != nil {
				cancel(spawnErrs[i])
			}
		})
	}
	ready.Wait()
	began := time.Now()
	close(start)
	finished.Wait()
	spawnElapsed := time.Since(began)
	whileSpawning := int(t.total.Load())
	close(spawnsDone)
	if err := errors.Join(spawnErrs...); err != nil {
		return nil, fmt.Errorf("demo: spawn: %w", context.Cause(ctx))
	}

	r := &Report{
		Queue: cfg.Queue, Instances: cfg.Instances, Events: cfg.Events, Workers: cfg.Workers,
		Concurrency: cfg.Concurrency, Mode: cfg.Mode(), NoKeys: cfg.NoKeys, NoHold: cfg.NoHold,
		Wins: make([]int, cfg.Instances), SpawnElapsed: spawnElapsed, ExecutionsWhileSpawning: whileSpawning,
	}
	for i := range records {
		r.SpawnRetries += retries[i]
	}
	// Event by event, so that created is in about the order of creation.
	var created []durable.UUID
	for n := range cfg.Events {
		for i := range records {
			rec := records[i][n]
			r.SpawnCalls++
			if rec.created {
				r.Created++
				r.Wins[i]++
				created = append(created, rec.taskID)
			} else {
				r.Duplicates++
			}
		}
	}

	// Wait until every created task is finished.
	notCompleted, err := waitAll(ctx, monitor.client, cfg.Queue, created)
	if err != nil {
		return nil, fmt.Errorf("demo: wait for the tasks: %w", err)
	}
	r.Elapsed = time.Since(began)
	r.NotCompleted = notCompleted
	if err := stopWorkers(); err != nil {
		return nil, err
	}

	for n := range t.perEvent {
		c := int(t.perEvent[n].Load())
		r.Executions += c
		r.MaxPerEvent = max(r.MaxPerEvent, c)
		switch {
		case c == 0:
			r.Never++
		case c == 1:
			r.ExactlyOnce++
		default:
			r.MoreThanOnce++
		}
	}
	t.mu.Lock()
	for _, id := range created {
		if t.perTask[id] == 1 {
			r.TasksRunOnce++
		}
	}
	t.mu.Unlock()

	r.Print(out)
	return r, nil
}

func newInstance(ctx context.Context, cfg Config, maxConns int32) (*instance, error) {
	pcfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("%w: database URL: %v", ErrInvalidConfig, err)
	}
	pcfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("demo: connect: %w", err)
	}
	client, err := durable.New(pool, &durable.Config{Logger: cfg.Logger})
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("demo: %w", err)
	}
	return &instance{pool: pool, client: client}, nil
}

// spawnAll spawns the task of every event, in order, and records the results.
func (inst *instance) spawnAll(ctx context.Context, cfg Config, records []spawnRecord, retries *int) error {
	for i := range records {
		n := i + 1
		var opts *durable.SpawnOptions
		switch {
		case cfg.NoKeys:
		case cfg.OnlyOnce:
			opts = &durable.SpawnOptions{OnlyOnce: true}
		default:
			opts = &durable.SpawnOptions{IdempotencyKey: fmt.Sprintf("event-%d", n)}
		}
		for try := 1; ; try++ {
			res, err := inst.client.Spawn(ctx, cfg.Queue, TaskName, eventParams{Event: n}, opts)
			var pgErr *pgconn.PgError
			if err != nil && try < 10 && errors.As(err, &pgErr) && pgErr.Code == "40001" {
				*retries++
				continue
			}
			if err != nil {
				return fmt.Errorf("event %d: %w", n, err)
			}
			records[i] = spawnRecord{taskID: res.TaskID, created: res.Created}
			break
		}
	}
	return nil
}

// startWorkers starts cfg.Workers workers on the instances' clients. The
// returned function stops them gracefully and returns their errors; it may be
// called more than once. A worker that stops on its own cancels the run.
func startWorkers(ctx context.Context, cfg Config, instances []*instance, t *tally, spawnsDone <-chan struct{}, cancelRun context.CancelCauseFunc) (func() error, error) {
	handler := func(hctx context.Context, task *durable.Task) (any, error) {
		var p eventParams
		if err := json.Unmarshal(task.Params, &p); err != nil || p.Event < 1 || p.Event > len(t.perEvent) {
			return nil, durable.NonRetryable(fmt.Errorf("params %s name no event of this run", task.Params))
		}
		t.perEvent[p.Event-1].Add(1)
		t.total.Add(1)
		t.mu.Lock()
		t.perTask[task.TaskID]++
		t.mu.Unlock()
		if !cfg.NoHold {
			select {
			case <-spawnsDone:
			case <-hctx.Done():
				return nil, hctx.Err()
			}
		}
		return p, nil
	}

	wctx, wcancel := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	errs := make([]error, cfg.Workers)
	stopped := make(chan struct{})
	for i := range cfg.Workers {
		w, err := instances[i%len(instances)].client.NewWorker(durable.WorkerConfig{
			Queue:        cfg.Queue,
			WorkerID:     fmt.Sprintf("%s-worker-%d", cfg.Queue, i+1),
			Concurrency:  cfg.Concurrency,
			PollInterval: 50 * time.Millisecond,
			DrainTimeout: 10 * time.Second,
			Logger:       cfg.Logger,
		})
		if err != nil {
			wcancel()
			wg.Wait()
			return nil, fmt.Errorf("demo: new worker: %w", err)
		}
		w.Register(TaskName, handler)
		wg.Go(func() {
			err := w.Run(wctx)
			if wctx.Err() == nil {
				// Stopped before it was asked to: the run cannot finish.
				if err == nil {
					err = errors.New("stopped on its own")
				}
				cancelRun(fmt.Errorf("demo: worker %d: %w", i+1, err))
			}
			errs[i] = err
		})
	}
	// Stop the workers when the run is cancelled too, so that a cancelled
	// run does not wait for their drain forever.
	go func() {
		select {
		case <-ctx.Done():
			wcancel()
		case <-stopped:
		}
	}()
	var once sync.Once
	var stopErr error
	return func() error {
		once.Do(func() {
			wcancel()
			wg.Wait()
			close(stopped)
			for i, err := range errs {
				if err != nil {
					stopErr = errors.Join(stopErr, fmt.Errorf("demo: worker %d: %w", i+1, err))
				}
			}
		})
		return stopErr
	}, nil
}

// waitAll waits, with a few goroutines, until each task is finished, and
// returns how many finished in a state other than completed.
func waitAll(ctx context.Context, client *durable.Client, queue string, tasks []durable.UUID) (int, error) {
	const waiters = 4
	var notCompleted atomic.Int64
	errs := make([]error, waiters)
	var wg sync.WaitGroup
	for w := range waiters {
		wg.Go(func() {
			// Tasks finish roughly in the order they were created, so each
			// waiter walks its share in that order.
			for i := w; i < len(tasks); i += waiters {
				res, err := client.WaitForResult(ctx, queue, tasks[i])
				if err != nil {
					if cause := context.Cause(ctx); cause != nil {
						err = cause
					}
					errs[w] = err
					return
				}
				if res.State != durable.StateCompleted {
					notCompleted.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return int(notCompleted.Load()), errors.Join(errs...)
}

func describeMode(cfg Config) string {
	switch {
	case cfg.NoKeys:
		return "no deduplication key"
	case cfg.OnlyOnce:
		return `only-once key (task name + params {"event": n})`
	default:
		return `idempotency key "event-<n>"`
	}
}

func describeHold(cfg Config) string {
	if cfg.NoHold {
		return "return at once"
	}
	return "finish after the last spawn"
}

// Print writes the report as a table and a verdict.
func (r *Report) Print(w io.Writer) {
	row := func(label string, v int) { fmt.Fprintf(w, "  %-46s %8d\n", label, v) }
	fmt.Fprintln(w)
	row("spawn calls", r.SpawnCalls)
	row("tasks created", r.Created)
	row("duplicates returned (created=false)", r.Duplicates)
	if r.SpawnRetries > 0 {
		row("spawns retried after a serialization failure", r.SpawnRetries)
	}
	row("executions", r.Executions)
	row("events executed exactly once", r.ExactlyOnce)
	row("events executed more than once", r.MoreThanOnce)
	row("events never executed", r.Never)
	if r.NotCompleted > 0 {
		row("tasks that did not complete", r.NotCompleted)
	}

	wins := make([]string, len(r.Wins))
	for i, n := range r.Wins {
		wins[i] = fmt.Sprintf("#%d:%d", i+1, n)
	}
	fmt.Fprintf(w, "\ncreates won per instance: %s\n", strings.Join(wins, " "))
	fmt.Fprintf(w, "elapsed: %s (spawning %s, then %s until every task finished)\n",
		round(r.Elapsed), round(r.SpawnElapsed), round(r.Elapsed-r.SpawnElapsed))
	fmt.Fprintf(w, "throughput: %.0f spawns/s while spawning; %.0f executions/s end to end, %.0f/s after the last spawn\n\n",
		r.SpawnsPerSecond(), r.ExecutionsPerSecond(), r.ExecutionsPerSecondAfterSpawning())

	switch {
	case !r.OK():
		fmt.Fprintf(w, "FAIL: %d of %d events did not execute exactly once", r.Events-r.ExactlyOnce, r.Events)
		if r.NoKeys || r.NoHold {
			fmt.Fprintf(w, "; %d of %d created tasks ran exactly once", r.TasksRunOnce, r.Created)
		}
		if r.NotCompleted > 0 {
			fmt.Fprintf(w, "; %d tasks did not complete", r.NotCompleted)
		}
		fmt.Fprintln(w)
	case r.NoKeys:
		fmt.Fprintf(w, "DUPLICATION (expected without keys): %d instances turned %d events into %d tasks and %d executions; every event ran %d times.\n",
			r.Instances, r.Events, r.Created, r.Executions, r.MaxPerEvent)
		fmt.Fprintln(w, "Run without --no-keys to see deduplication bring it down to one execution per event.")
	case r.NoHold && r.MoreThanOnce > 0:
		fmt.Fprintf(w, "OK, as documented: %d events ran again because an instance spawned them after their first task had finished;\n", r.MoreThanOnce)
		fmt.Fprintln(w, "a key is held only while its task is pending, running or sleeping. Every created task ran exactly once.")
	default:
		fmt.Fprintf(w, "OK: %d spawns from %d instances ran each of the %d events exactly once.\n", r.SpawnCalls, r.Instances, r.Events)
	}
}

func round(d time.Duration) time.Duration {
	if d >= time.Second {
		return d.Round(10 * time.Millisecond)
	}
	return d.Round(time.Millisecond)
}
