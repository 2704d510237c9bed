// Command worker measures durable's Go worker on no-op tasks, the way
// bench/river measures River: insert N tasks (spawn_task calls sent in
// batches of one round trip each), then work them with one Worker and report
// how fast they complete.
//
//	go run ./bench/worker -database-url $DATABASE_URL -tasks 100000
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

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/durable-go/durable"
)

func main() {
	url := flag.String("database-url", os.Getenv("DATABASE_URL"), "PostgreSQL to run on (durable migrated there)")
	tasks := flag.Int("tasks", 100000, "tasks to spawn and work")
	concurrency := flag.Int("concurrency", 1000, "worker concurrency")
	flag.Parse()
	if err := run(*url, *tasks, *concurrency); err != nil {
		fmt.Fprintln(os.Stderr, "worker bench:", err)
		os.Exit(1)
	}
}

func run(url string, tasks, concurrency int) error {
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return err
	}
	cfg.MaxConns = 20
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	client, err := durable.New(pool, &durable.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return err
	}
	if err := client.Migrate(ctx, nil); err != nil {
		return err
	}
	const queue = "worker_bench"
	_ = client.DropQueue(ctx, queue)
	if err := client.CreateQueue(ctx, queue); err != nil {
		return err
	}
	defer client.DropQueue(context.Background(), queue)

	insertStart := time.Now()
	const batchSize = 2000
	for left := tasks; left > 0; left -= batchSize {
		b := &pgx.Batch{}
		for range min(batchSize, left) {
			b.Queue("select task_id from durable.spawn_task($1, 'noop', '{}')", queue)
		}
		if err := pool.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("spawn: %w", err)
		}
	}
	insertDur := time.Since(insertStart)

	var done atomic.Int64 // tasks completed, as last counted
	w, err := client.NewWorker(durable.WorkerConfig{Queue: queue, Concurrency: concurrency})
	if err != nil {
		return err
	}
	w.Register("noop", func(ctx context.Context, t *durable.Task) (any, error) {
		return nil, nil
	})
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	finished := make(chan error, 1)
	workStart := time.Now()
	go func() { finished <- w.Run(runCtx) }()
	deadline := time.Now().Add(10 * time.Minute)
	for time.Now().Before(deadline) {
		var left int
		if err := pool.QueryRow(ctx, "select count(*) from durable.t_worker_bench where state <> 'completed'").Scan(&left); err != nil {
			return err
		}
		done.Store(int64(tasks - left))
		if left == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	workDur := time.Since(workStart)
	stop()
	<-finished
	if done.Load() < int64(tasks) {
		return fmt.Errorf("only %d of %d tasks worked in 10 minutes", done.Load(), tasks)
	}
	fmt.Printf("durable: spawned %d tasks in %.2fs (%.0f/s, batches of %d); worked them in %.2fs (%.0f tasks/s, concurrency %d)\n",
		tasks, insertDur.Seconds(), float64(tasks)/insertDur.Seconds(), batchSize,
		workDur.Seconds(), float64(tasks)/workDur.Seconds(), concurrency)
	return nil
}
