// Command latency measures how long a task spawned on an idle queue waits
// before durable's Go worker starts it: it spawns tasks one at a time, each
// after the previous one started and a random pause shorter than the poll
// interval (so that spawns land anywhere in the worker's polling cycle), and
// reports percentiles of the time from the spawn call to the handler's start,
// once with LISTEN/NOTIFY wake-ups and once with polling alone.
//
//	go run ./bench/latency -database-url $DATABASE_URL -spawns 500
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/durable-go/durable"
)

func main() {
	url := flag.String("database-url", os.Getenv("DATABASE_URL"), "PostgreSQL to run on (durable migrated there)")
	spawns := flag.Int("spawns", 500, "tasks to spawn, one at a time, per mode")
	poll := flag.Duration("poll-interval", 250*time.Millisecond, "the worker's PollInterval (its default is 250ms)")
	mode := flag.String("mode", "both", "notify, poll or both")
	flag.Parse()
	if err := run(*url, *spawns, *poll, *mode); err != nil {
		fmt.Fprintln(os.Stderr, "latency bench:", err)
		os.Exit(1)
	}
}

func run(url string, spawns int, poll time.Duration, mode string) error {
	var modes []bool // DisableNotify of each measurement
	switch mode {
	case "both":
		modes = []bool{false, true}
	case "notify":
		modes = []bool{false}
	case "poll":
		modes = []bool{true}
	default:
		return fmt.Errorf("-mode must be notify, poll or both, got %q", mode)
	}
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, url)
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
	const queue = "latency_bench"
	_ = client.DropQueue(ctx, queue)
	if err := client.CreateQueue(ctx, queue); err != nil {
		return err
	}
	defer client.DropQueue(context.Background(), queue)

	fmt.Printf("durable spawn-to-start latency: %d spawns one at a time on an idle queue, PollInterval %s\n", spawns, poll)
	for _, disable := range modes {
		lat, err := measure(ctx, client, queue, spawns, poll, disable)
		if err != nil {
			return err
		}
		name := "notify"
		if disable {
			name = "poll only"
		}
		slices.Sort(lat)
		fmt.Printf("  %-9s p50 %8s  p90 %8s  p99 %8s  max %8s\n", name,
			pct(lat, 50), pct(lat, 90), pct(lat, 99), lat[len(lat)-1].Round(10*time.Microsecond))
	}
	return nil
}

// measure runs a worker (with notifications unless disableNotify) and returns
// the spawn-to-start latency of each of n tasks spawned one at a time.
func measure(ctx context.Context, client *durable.Client, queue string, n int, poll time.Duration, disableNotify bool) ([]time.Duration, error) {
	w, err := client.NewWorker(durable.WorkerConfig{Queue: queue, PollInterval: poll, DisableNotify: disableNotify})
	if err != nil {
		return nil, err
	}
	type start struct {
		task durable.UUID
		at   time.Time
	}
	started := make(chan start, 1)
	w.Register("noop", func(ctx context.Context, t *durable.Task) (any, error) {
		started <- start{task: t.TaskID, at: time.Now()}
		return nil, nil
	})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()
	defer func() {
		stop()
		<-done
	}()
	time.Sleep(time.Second) // the worker connects and, with notifications, listens

	lat := make([]time.Duration, 0, n)
	for range n {
		time.Sleep(rand.N(poll))
		sent := time.Now()
		r, err := client.Spawn(ctx, queue, "noop", nil, nil)
		if err != nil {
			return nil, err
		}
		select {
		case s := <-started:
			if s.task != r.TaskID {
				return nil, fmt.Errorf("task %s started while waiting for %s", s.task, r.TaskID)
			}
			lat = append(lat, s.at.Sub(sent))
		case <-time.After(max(10*poll, 10*time.Second)):
			return nil, fmt.Errorf("task %s did not start", r.TaskID)
		}
	}
	return lat, nil
}

// pct returns the p-th percentile of sorted durations (nearest rank).
func pct(sorted []time.Duration, p int) time.Duration {
	i := (len(sorted)*p + 99) / 100
	return sorted[max(i-1, 0)].Round(10 * time.Microsecond)
}
