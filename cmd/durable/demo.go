package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/internal/demo"
	"github.com/durable-go/durable/internal/localpg"
)

const demoDoc = `
Simulates a deployment in which several instances all see the same stream of
events and each spawns a task per event, and counts how often each event's
task runs. Every instance has its own connection pool; all start spawning at
the same moment, so the spawns of one event race each other. Workers (each a
durable.Worker on one instance's pool) execute the tasks.

With an idempotency key per event ("event-<n>", the default) or --only-once
(the key is derived from the task name and the params {"event": n}), every
event must run exactly once; the command exits 1 otherwise.

With --no-keys nothing is deduplicated: every spawn creates a task and each
event runs once per instance. That duplication is what the flag shows, so the
command reports it and exits 0.

Handlers finish only after every instance has spawned every event, so the
duplicates arrive while the first task is unfinished: a key is held while its
task is pending, running or sleeping. --no-hold lets handlers return at once;
an instance that sees an event after its task has finished then creates a new
task, which runs again, as documented. The command exits 0 when every created
task ran exactly once.

Without --database-url or DATABASE_URL, a throwaway PostgreSQL server is
started (Debian's postgresql-15 is installed with apt-get when it is missing
and the command runs as root), migrated, and removed at the end. A database
given by URL must be migrated already (durable migrate). Each run uses a new
queue, demo_<unix nanoseconds>, dropped at the end unless --keep.

Exit status: 0 when the counts are what the mode promises, 1 when they are not
or the run failed, 2 on a usage error.`

const demoExample = `  durable demo                          # 8 instances x 1000 events, keys
  durable demo --instances 3 --events 100 --only-once
  durable demo --no-keys                # the duplication without keys
  DATABASE_URL='postgres://postgres@127.0.0.1:5432/app?sslmode=disable' durable demo --keep`

func runDemo(ctx context.Context, e *env, args []string) int {
	fs := newFlagSet(e, "demo", "[flags]", demoDoc, demoExample)
	var cfg demo.Config
	databaseURL := fs.String("database-url", e.getenv("DATABASE_URL"), "database to run on, migrated (defaults to $DATABASE_URL; none: start a throwaway server)")
	fs.IntVar(&cfg.Instances, "instances", 8, "instances, each with its own pool, that all see every event")
	fs.IntVar(&cfg.Events, "events", 1000, "events in the stream; each instance spawns one task per event")
	fs.IntVar(&cfg.Workers, "workers", 0, "workers executing the tasks (0: one per instance)")
	fs.IntVar(&cfg.Concurrency, "concurrency", 8, "handlers each worker runs at once")
	fs.IntVar(&cfg.PoolSize, "pool-size", 4, "connections in each instance's pool")
	fs.BoolVar(&cfg.OnlyOnce, "only-once", false, `deduplicate with only-once keys (task name + params {"event": n}) instead of "event-<n>"`)
	fs.BoolVar(&cfg.NoKeys, "no-keys", false, "spawn without keys: shows the duplication (exits 0)")
	fs.BoolVar(&cfg.NoHold, "no-hold", false, "let handlers return at once, even before every instance has spawned the event")
	fs.StringVar(&cfg.Queue, "queue", "", "queue to use; it must not exist (default demo_<unix nanoseconds>)")
	fs.BoolVar(&cfg.Keep, "keep", false, "keep the queue and its tasks after the run")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long")
	verbose := fs.Bool("verbose", false, "log the workers' activity to stderr (default: warnings and errors only)")
	if code, ok := parse(e, fs, args); !ok {
		return code
	}
	for _, f := range []struct {
		name string
		v    int
		min  int
	}{
		{"instances", cfg.Instances, 1},
		{"events", cfg.Events, 1},
		{"workers", cfg.Workers, 0},
		{"concurrency", cfg.Concurrency, 1},
		{"pool-size", cfg.PoolSize, 1},
	} {
		if f.v < f.min {
			return usageError(e, fs, "--%s must be at least %d, got %d", f.name, f.min, f.v)
		}
	}
	if cfg.OnlyOnce && cfg.NoKeys {
		return usageError(e, fs, "--only-once and --no-keys exclude each other")
	}
	if *timeout <= 0 {
		return usageError(e, fs, "--timeout must be positive, got %s", *timeout)
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	cfg.Logger = slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: level}))

	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	cfg.DatabaseURL = *databaseURL
	if cfg.DatabaseURL == "" {
		fmt.Fprintln(e.stderr, "durable demo: no --database-url or DATABASE_URL; starting a throwaway PostgreSQL")
		srv, err := localpg.Start(ctx, &localpg.Options{Log: e.stderr, MaxConnections: max(300, demoConnections(cfg)+20)})
		if err != nil {
			fmt.Fprintf(e.stderr, "durable demo: %v\n", err)
			return exitError
		}
		defer func() {
			if err := srv.Stop(); err != nil {
				fmt.Fprintf(e.stderr, "durable demo: %v\n", err)
			}
		}()
		cfg.DatabaseURL = srv.URL()
		if err := migrate(ctx, cfg.DatabaseURL); err != nil {
			fmt.Fprintf(e.stderr, "durable demo: %v\n", err)
			return exitError
		}
	} else if err := checkMigrated(ctx, cfg.DatabaseURL); err != nil {
		fmt.Fprintf(e.stderr, "durable demo: %v\n", err)
		return exitError
	}

	r, err := demo.Run(ctx, cfg, e.stdout)
	if err != nil {
		fmt.Fprintf(e.stderr, "durable %v\n", err) // demo's errors start with "demo: "
		if errors.Is(err, demo.ErrInvalidConfig) {
			return exitUsage
		}
		return exitError
	}
	if !r.OK() {
		return exitError
	}
	return exitOK
}

// demoConnections is how many connections a demo run opens at most: the
// instances' pools and the monitor's.
func demoConnections(cfg demo.Config) int {
	return cfg.Instances*cfg.PoolSize + 4
}

func migrate(ctx context.Context, url string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return durable.Migrate(ctx, conn, nil)
}

// checkMigrated returns an error naming the fix when the database's schema
// is missing or older than this command's.
func checkMigrated(ctx context.Context, url string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	installed, latest, err := durable.MigrationStatus(ctx, conn)
	if err != nil {
		return err
	}
	if installed < latest {
		return fmt.Errorf("the database's durable schema is at version %d, this command needs %d: run 'durable migrate' first", installed, latest)
	}
	return nil
}
