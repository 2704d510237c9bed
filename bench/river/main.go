// Command riverbench is durable's peer benchmark: it inserts and works no-op
// jobs with River, as River's own bench does, so `make bench` can print
// River's figure beside durable's on the same PostgreSQL in the same run.
// It lives in its own module so River never becomes a dependency of durable.
//
//	go run . -database-url $DATABASE_URL -jobs 100000
//
// It creates (and afterwards drops) the schema river_bench, migrates River
// into it, inserts the jobs in batches with InsertManyFast, then starts a
// client and reports how fast the jobs complete.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
)

type noopArgs struct{}

func (noopArgs) Kind() string { return "noop" }

type noopWorker struct {
	river.WorkerDefaults[noopArgs]
	done *atomic.Int64
}

func (w *noopWorker) Work(ctx context.Context, job *river.Job[noopArgs]) error {
	w.done.Add(1)
	return nil
}

func main() {
	url := flag.String("database-url", os.Getenv("DATABASE_URL"), "PostgreSQL to run on")
	jobs := flag.Int("jobs", 100000, "jobs to insert and work")
	workers := flag.Int("workers", 1000, "River MaxWorkers")
	schema := flag.String("schema", "river_bench", "schema for River's tables (dropped afterwards)")
	flag.Parse()
	if err := run(*url, *jobs, *workers, *schema); err != nil {
		fmt.Fprintln(os.Stderr, "riverbench:", err)
		os.Exit(1)
	}
}

func run(url string, jobs, workers int, schema string) error {
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return err
	}
	cfg.MaxConns = 20
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, fmt.Sprintf("drop schema if exists %s cascade; create schema %s", schema, schema)); err != nil {
		return err
	}
	defer pool.Exec(context.Background(), fmt.Sprintf("drop schema if exists %s cascade", schema))

	driver := riverpgxv5.New(pool)
	migrator, err := rivermigrate.New(driver, &rivermigrate.Config{Schema: schema})
	if err != nil {
		return err
	}
	if _, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}

	var done atomic.Int64
	ws := river.NewWorkers()
	river.AddWorker(ws, &noopWorker{done: &done})
	client, err := river.NewClient(driver, &river.Config{
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
		Queues:  map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: workers}},
		Schema:  schema,
		Workers: ws,
	})
	if err != nil {
		return err
	}

	insertStart := time.Now()
	const batch = 2000
	for left := jobs; left > 0; left -= batch {
		n := min(batch, left)
		params := make([]river.InsertManyParams, n)
		for i := range params {
			params[i] = river.InsertManyParams{Args: noopArgs{}}
		}
		if _, err := client.InsertManyFast(ctx, params); err != nil {
			return fmt.Errorf("insert: %w", err)
		}
	}
	insertDur := time.Since(insertStart)

	workStart := time.Now()
	if err := client.Start(ctx); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Minute)
	for done.Load() < int64(jobs) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	workDur := time.Since(workStart)
	stopCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_ = client.Stop(stopCtx)
	if done.Load() < int64(jobs) {
		return fmt.Errorf("only %d of %d jobs worked in 10 minutes", done.Load(), jobs)
	}
	fmt.Printf("river v0.51.2: inserted %d jobs in %.2fs (%.0f/s, batches of %d); worked them in %.2fs (%.0f jobs/s, MaxWorkers %d)\n",
		jobs, insertDur.Seconds(), float64(jobs)/insertDur.Seconds(), batch,
		workDur.Seconds(), float64(jobs)/workDur.Seconds(), workers)
	return nil
}
