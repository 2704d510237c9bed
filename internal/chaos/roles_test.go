package chaos_test

// The processes of the chaos run. The test binary runs itself again with
// DURABLE_CHAOS_ROLE set to "spawner" or "worker", so that what the driver
// kills is a real OS process running the real Client and Worker.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/durable-go/durable"
)

const (
	roleEnv   = "DURABLE_CHAOS_ROLE"
	configEnv = "DURABLE_CHAOS_CONFIG"
	taskName  = "event"
)

// roleConfig is what the driver tells a process, as JSON in configEnv.
type roleConfig struct {
	URL         string        `json:"url"`
	Queue       string        `json:"queue"`
	ID          string        `json:"id"`      // the worker id
	Spawner     int           `json:"spawner"` // the spawner's number
	Events      int           `json:"events"`
	Spawners    int           `json:"spawners"`
	Concurrency int           `json:"concurrency"`
	Pace        time.Duration `json:"pace"`
	Lease       time.Duration `json:"lease"`
	Seed        uint64        `json:"seed"`
}

// spawnerSummary is the last line a spawner prints.
type spawnerSummary struct {
	Spawned int `json:"spawned"` // events whose spawn transaction committed
	Created int `json:"created"` // of those, spawns that answered created = true
	Retries int `json:"retries"` // attempts that failed with a retryable error
}

type eventParams struct {
	Event int `json:"event"`
}

// runRole runs the process's role and returns its exit code.
func runRole(role string) int {
	var cfg roleConfig
	if err := json.Unmarshal([]byte(os.Getenv(configEnv)), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "chaos: bad config:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var err error
	switch role {
	case "spawner":
		err = runSpawner(ctx, cfg)
	case "worker":
		err = runWorker(ctx, cfg)
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "chaos: %s %s%d: %v\n", role, cfg.ID, cfg.Spawner, err)
		return 1
	}
	return 0
}

func newPool(ctx context.Context, url string, maxConns int32) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	pc.MaxConns = maxConns
	return pgxpool.NewWithConfig(ctx, pc)
}

// runSpawner spawns every event of the stream once, in order, each in a
// transaction that also records that this spawner saw it; a transaction that
// fails with a retryable error is retried whole, with the same key.
func runSpawner(ctx context.Context, cfg roleConfig) error {
	pool, err := newPool(ctx, cfg.URL, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	client, err := durable.New(pool, nil)
	if err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, uint64(cfg.Spawner)))
	var sum spawnerSummary
	for n := range cfg.Events {
		var created bool
		err := retry(ctx, time.Minute, func(error) { sum.Retries++ }, func() error {
			var err error
			created, err = spawnEvent(ctx, client, pool, cfg, n)
			return err
		})
		if err != nil {
			return fmt.Errorf("event %d: %w", n, err)
		}
		sum.Spawned++
		if created {
			sum.Created++
		}
		if cfg.Pace > 0 {
			sleep(ctx, cfg.Pace/2+time.Duration(rng.Int64N(int64(cfg.Pace))))
		}
	}
	return json.NewEncoder(os.Stdout).Encode(sum)
}

// spawnEvent spawns event n with its key, inside a transaction that also
// inserts (event, spawner) into chaos_seen.
func spawnEvent(ctx context.Context, client *durable.Client, pool *pgxpool.Pool, cfg roleConfig, n int) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tx, err := pool.Begin(ctx)
	if err != nil {
		return false, err
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	res, err := client.SpawnTx(ctx, tx, cfg.Queue, taskName, eventParams{Event: n}, &durable.SpawnOptions{
		IdempotencyKey: fmt.Sprintf("event-%d", n),
		MaxAttempts:    1000,
		RetryStrategy:  &durable.RetryStrategy{Kind: durable.RetryNone},
	})
	if err != nil {
		return false, err
	}
	if _, err := tx.Exec(ctx, "insert into chaos_seen (event, spawner) values ($1, $2) on conflict do nothing", n, cfg.Spawner); err != nil {
		return false, err
	}
	if err := tx.Commit(ctx); err != nil {
		return false, err
	}
	return res.Created, nil
}

// runWorker works the queue with the real Worker until SIGTERM (or SIGKILL).
// Its handler records the execution, then holds the task until every spawner
// has spawned the event, so that the task holds its key for as long as any
// spawner may still spawn it: one task per event is then the rule's promise.
func runWorker(ctx context.Context, cfg roleConfig) error {
	pool, err := newPool(ctx, cfg.URL, int32(cfg.Concurrency+4))
	if err != nil {
		return err
	}
	defer pool.Close()
	client, err := durable.New(pool, nil)
	if err != nil {
		return err
	}
	w, err := client.NewWorker(durable.WorkerConfig{
		Queue:             cfg.Queue,
		WorkerID:          cfg.ID,
		Concurrency:       cfg.Concurrency,
		ClaimTimeout:      cfg.Lease,
		HeartbeatInterval: cfg.Lease / 4,
		PollInterval:      50 * time.Millisecond,
		DrainTimeout:      5 * time.Second,
		Logger:            slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return err
	}
	w.Register(taskName, func(ctx context.Context, t *durable.Task) (any, error) {
		var p eventParams
		if err := json.Unmarshal(t.Params, &p); err != nil {
			return nil, durable.NonRetryable(err)
		}
		// One row per (run, worker): a run executed by two workers would show
		// twice; a retried insert of the same execution does not.
		err := retry(ctx, 0, nil, func() error {
			_, err := pool.Exec(ctx,
				`insert into chaos_exec (run_id, worker, task_id, attempt, event) values ($1, $2, $3, $4, $5)
				 on conflict do nothing`, t.RunID, cfg.ID, t.TaskID, t.Attempt, p.Event)
			return err
		})
		if err != nil {
			return nil, err
		}
		for delay := 5 * time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
			var seen int
			err := retry(ctx, 0, nil, func() error {
				return pool.QueryRow(ctx, "select count(*) from chaos_seen where event = $1", p.Event).Scan(&seen)
			})
			if err != nil {
				return nil, err
			}
			if seen >= cfg.Spawners {
				return map[string]any{"event": p.Event, "worker": cfg.ID}, nil
			}
			sleep(ctx, delay)
		}
	})
	return w.Run(ctx)
}

// retry calls f until it succeeds, fails with an error that is not
// retryable (durable.IsRetryable, or a per-call timeout while ctx lasts), or
// ctx ends; limit > 0 bounds the time spent. onRetry, if not nil, sees each
// retried error.
func retry(ctx context.Context, limit time.Duration, onRetry func(error), f func() error) error {
	start := time.Now()
	delay := 20 * time.Millisecond
	for {
		err := f()
		if err == nil || ctx.Err() != nil || limit > 0 && time.Since(start) > limit {
			return err
		}
		if !durable.IsRetryable(err) && !(pgconn.Timeout(err) && !errors.Is(err, context.Canceled)) {
			return err
		}
		if onRetry != nil {
			onRetry(err)
		}
		sleep(ctx, delay)
		delay = min(2*delay, 500*time.Millisecond)
	}
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
