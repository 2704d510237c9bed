package durable_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/internal/testdb"
)

// Two instances of a service receive the same order event and both spawn the
// task that sends its receipt, with the same idempotency key. The first spawn
// creates the task; the second returns it, so the receipt is sent once.
func ExampleClient_Spawn() {
	ctx := context.Background()
	pool := examplePool() // in a program: pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	client, err := durable.New(pool, nil)
	if err != nil {
		log.Fatal(err)
	}
	queue := exampleQueueName("receipts")
	if err := client.CreateQueue(ctx, queue); err != nil {
		log.Fatal(err)
	}

	opts := &durable.SpawnOptions{IdempotencyKey: "order-42-receipt"}
	params := map[string]any{"order_id": 42}
	first, err := client.Spawn(ctx, queue, "send-receipt", params, opts)
	if err != nil {
		log.Fatal(err)
	}
	second, err := client.Spawn(ctx, queue, "send-receipt", params, opts)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("first spawn created a task:", first.Created)
	fmt.Println("second spawn created a task:", second.Created)
	fmt.Println("both name the same task:", first.TaskID == second.TaskID)
	fmt.Println("its state:", second.State)
	// Output:
	// first spawn created a task: true
	// second spawn created a task: false
	// both name the same task: true
	// its state: pending
}

// ResizeParams are the params of the resize-image task.
type ResizeParams struct {
	ImageID int `json:"image_id"`
	Width   int `json:"width"`
}

// ResizeResult is the result of the resize-image task.
type ResizeResult struct {
	Path string `json:"path"`
}

// resizeImage names the task and the Go types of its params and result.
var resizeImage = durable.DefineTask[ResizeParams, ResizeResult]("resize-image")

// A typed task: spawned with ResizeParams, handled by a Worker that receives
// them decoded, and its ResizeResult read back with WaitForResult.
func ExampleDefineTask() {
	ctx := context.Background()
	// The worker logs to the client's Logger; this example keeps it quiet.
	client, err := durable.New(examplePool(), &durable.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	queue := exampleQueueName("images")
	if err := client.CreateQueue(ctx, queue); err != nil {
		log.Fatal(err)
	}

	worker, err := client.NewWorker(durable.WorkerConfig{Queue: queue, PollInterval: 20 * time.Millisecond})
	if err != nil {
		log.Fatal(err)
	}
	durable.HandleTask(worker, resizeImage, func(ctx context.Context, task *durable.Task, p ResizeParams) (ResizeResult, error) {
		return ResizeResult{Path: fmt.Sprintf("/thumbnails/%d-w%d.png", p.ImageID, p.Width)}, nil
	})
	runCtx, stopWorker := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := worker.Run(runCtx); err != nil {
			log.Print(err)
		}
	})
	defer func() {
		stopWorker() // Run drains the handlers in flight, then returns
		wg.Wait()
	}()

	spawned, err := resizeImage.Spawn(ctx, client, queue, ResizeParams{ImageID: 7, Width: 320}, nil)
	if err != nil {
		log.Fatal(err)
	}
	waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	result, err := resizeImage.WaitForResult(waitCtx, client, queue, spawned.TaskID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(result.Path)
	// Output: /thumbnails/7-w320.png
}

// SpawnTx enqueues a task in the caller's transaction: the task exists if and
// only if the caller's own writes commit. Here the order and its shipping task
// are created together, and a rolled-back order leaves no task behind.
func ExampleClient_SpawnTx() {
	ctx := context.Background()
	pool := examplePool()
	client, err := durable.New(pool, nil)
	if err != nil {
		log.Fatal(err)
	}
	queue := exampleQueueName("shipping")
	if err := client.CreateQueue(ctx, queue); err != nil {
		log.Fatal(err)
	}

	// placeOrder inserts an order into the application's own table and spawns
	// its shipping task in the same transaction, then commits or rolls back.
	placeOrder := func(item string, commit bool) durable.UUID {
		tx, err := pool.Begin(ctx)
		if err != nil {
			log.Fatal(err)
		}
		defer tx.Rollback(ctx) // a no-op once committed
		var orderID int64
		if err := tx.QueryRow(ctx, "insert into orders (item) values ($1) returning id", item).Scan(&orderID); err != nil {
			log.Fatal(err)
		}
		spawned, err := client.SpawnTx(ctx, tx, queue, "ship-order", map[string]any{"order_id": orderID},
			&durable.SpawnOptions{IdempotencyKey: fmt.Sprintf("ship-order-%d", orderID)})
		if err != nil {
			log.Fatal(err)
		}
		if commit {
			if err := tx.Commit(ctx); err != nil {
				log.Fatal(err)
			}
		}
		return spawned.TaskID
	}

	committed := placeOrder("teapot", true)
	rolledBack := placeOrder("kettle", false)

	r, err := client.GetTaskResult(ctx, queue, committed)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("committed order's task:", r.State)
	_, err = client.GetTaskResult(ctx, queue, rolledBack)
	fmt.Println("rolled-back order's task not found:", errors.Is(err, durable.ErrTaskNotFound))
	// Output:
	// committed order's task: pending
	// rolled-back order's task not found: true
}

// The examples share one migrated database, created on the test server the
// first time an example needs it. Examples have no *testing.T, so testdb's
// per-test databases are out of reach; the database is named under testdb's
// prefix (durable_test_<pid>) so that testdb.Main drops it with its own at the
// end of the run.
var (
	examplePoolOnce sync.Once
	examplePoolV    *pgxpool.Pool
	exampleSeq      atomic.Int64
)

// examplePool returns a pool on the examples' database. It panics when the
// database cannot be set up: an example has no other way to fail.
func examplePool() *pgxpool.Pool {
	examplePoolOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		name := fmt.Sprintf("durable_test_%d_examples", os.Getpid())
		admin, err := pgx.Connect(ctx, os.Getenv("DATABASE_URL"))
		if err != nil {
			panic(fmt.Sprintf("examples: connect: %v", err))
		}
		defer admin.Close(ctx)
		for _, sql := range []string{
			"drop database if exists " + name + " with (force)",
			"create database " + name,
		} {
			if _, err := admin.Exec(ctx, sql); err != nil {
				panic(fmt.Sprintf("examples: %s: %v", sql, err))
			}
		}
		conn, err := pgx.Connect(ctx, testdb.URL(name))
		if err != nil {
			panic(fmt.Sprintf("examples: connect: %v", err))
		}
		defer conn.Close(ctx)
		if err := durable.Migrate(ctx, conn, nil); err != nil {
			panic(fmt.Sprintf("examples: %v", err))
		}
		// The application table of ExampleClient_SpawnTx.
		if _, err := conn.Exec(ctx, "create table orders (id bigint generated always as identity primary key, item text not null)"); err != nil {
			panic(fmt.Sprintf("examples: %v", err))
		}
		if examplePoolV, err = pgxpool.New(ctx, testdb.URL(name)); err != nil {
			panic(fmt.Sprintf("examples: %v", err))
		}
	})
	return examplePoolV
}

// exampleQueueName returns a queue name used by no other example run, so that
// go test -count=N starts each run from an empty queue.
func exampleQueueName(base string) string {
	return fmt.Sprintf("%s_%d", base, exampleSeq.Add(1))
}

// A checkout charges a card, then waits for the warehouse's "packed" event.
// Its first attempt crashes after the charge; the retry replays the handler,
// and Step returns the recorded charge instead of charging again. While it
// waits for the event the run is suspended: the worker's slot is free, and
// the event wakes it.
func ExampleStep() {
	ctx := context.Background()
	client, err := durable.New(examplePool(), &durable.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	queue := exampleQueueName("checkout")
	if err := client.CreateQueue(ctx, queue); err != nil {
		log.Fatal(err)
	}
	worker, err := client.NewWorker(durable.WorkerConfig{Queue: queue, PollInterval: 20 * time.Millisecond})
	if err != nil {
		log.Fatal(err)
	}
	var charges atomic.Int32
	worker.Register("checkout", func(ctx context.Context, t *durable.Task) (any, error) {
		chargeID, err := durable.Step(ctx, t, "charge", func(ctx context.Context) (string, error) {
			charges.Add(1)
			return "ch_1", nil
		})
		if err != nil {
			return nil, err
		}
		if t.Attempt == 1 {
			return nil, errors.New("crashed after charging")
		}
		packed, err := t.AwaitEvent(ctx, "packed", "packed:order-9", time.Minute)
		if err != nil {
			return nil, err // ErrSuspended: the run sleeps until the event
		}
		return map[string]any{"charge": chargeID, "packed": packed}, nil
	})
	runCtx, stopWorker := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { _ = worker.Run(runCtx) })
	defer func() {
		stopWorker()
		wg.Wait()
	}()

	spawned, err := client.Spawn(ctx, queue, "checkout", nil, &durable.SpawnOptions{
		RetryStrategy: &durable.RetryStrategy{Kind: durable.RetryNone},
	})
	if err != nil {
		log.Fatal(err)
	}
	for { // wait until the second attempt is suspended on the event
		r, err := client.GetTaskResult(ctx, queue, spawned.TaskID)
		if err != nil {
			log.Fatal(err)
		}
		if r.State == durable.StateSleeping && r.FailureReason != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := client.EmitEvent(ctx, queue, "packed:order-9", map[string]string{"box": "B7"}); err != nil {
		log.Fatal(err)
	}
	waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	r, err := client.WaitForResult(waitCtx, queue, spawned.TaskID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("state:", r.State)
	fmt.Println("result:", string(r.Result))
	fmt.Println("charges made:", charges.Load())
	// Output:
	// state: completed
	// result: {"charge": "ch_1", "packed": {"box": "B7"}}
	// charges made: 1
}

// Hooks feed a program's own metrics: here, counters of spawns created and
// deduplicated, and of runs completed, read back after a worker has run.
// QueueStats then shows the queue as an autoscaler would poll it.
func ExampleHooks() {
	ctx := context.Background()
	var created, deduplicated, completed atomic.Int64
	hooks := &durable.Hooks{
		OnSpawn: func(_ context.Context, e durable.SpawnEvent) {
			if e.Created {
				created.Add(1)
			} else {
				deduplicated.Add(1)
			}
		},
		OnComplete: func(_ context.Context, e durable.RunEvent) { completed.Add(1) },
	}
	client, err := durable.New(examplePool(), &durable.Config{Hooks: hooks, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	queue := exampleQueueName("metered")
	if err := client.CreateQueue(ctx, queue); err != nil {
		log.Fatal(err)
	}
	for _, key := range []string{"a", "b", "a", "a"} {
		if _, err := client.Spawn(ctx, queue, "job", nil, &durable.SpawnOptions{IdempotencyKey: key}); err != nil {
			log.Fatal(err)
		}
	}
	stats, err := client.QueueStats(ctx, queue)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("ready now:", stats.ReadyNow, "keys held:", stats.KeysHeld)

	w, err := client.NewWorker(durable.WorkerConfig{Queue: queue, PollInterval: 10 * time.Millisecond})
	if err != nil {
		log.Fatal(err)
	}
	w.Register("job", func(ctx context.Context, t *durable.Task) (any, error) { return nil, nil })
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()
	for completed.Load() < 2 {
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	if err := <-done; err != nil {
		log.Fatal(err)
	}
	stats, err = client.QueueStats(ctx, queue)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("created:", created.Load(), "deduplicated:", deduplicated.Load(), "completed:", completed.Load())
	fmt.Println("completed per queue_stats:", *stats.Completed, "("+stats.TerminalCounts+")")
	// Output:
	// ready now: 2 keys held: 2
	// created: 2 deduplicated: 2 completed: 2
	// completed per queue_stats: 2 (exact)
}

// A payment webhook is delivered again an hour after its task finished. With
// KeyRetention, the late duplicate gets the finished task and its result back
// instead of charging twice.
func ExampleSpawnOptions_keyRetention() {
	ctx := context.Background()
	client, err := durable.New(examplePool(), nil)
	if err != nil {
		log.Fatal(err)
	}
	queue := exampleQueueName("webhooks")
	if err := client.CreateQueue(ctx, queue); err != nil {
		log.Fatal(err)
	}
	opts := &durable.SpawnOptions{IdempotencyKey: "evt_1042", KeyRetention: 24 * time.Hour}
	first, err := client.Spawn(ctx, queue, "charge", map[string]any{"amount": 1200}, opts)
	if err != nil {
		log.Fatal(err)
	}
	// A worker runs it (here by hand) and it completes.
	runs, err := client.ClaimTasks(ctx, queue, "worker-1", 30*time.Second, 1)
	if err != nil {
		log.Fatal(err)
	}
	if err := client.CompleteRun(ctx, queue, runs[0].RunID, map[string]string{"charge": "ch_77"}); err != nil {
		log.Fatal(err)
	}

	// The redelivery, within the day the key is retained.
	late, err := client.Spawn(ctx, queue, "charge", map[string]any{"amount": 1200}, opts)
	if err != nil {
		log.Fatal(err)
	}
	res, err := client.GetTaskResult(ctx, queue, late.TaskID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("late duplicate created a task:", late.Created)
	fmt.Println("same task:", late.TaskID == first.TaskID)
	fmt.Println("its state:", late.State)
	fmt.Println("its result:", string(res.Result))
	// Output:
	// late duplicate created a task: false
	// same task: true
	// its state: completed
	// its result: {"charge": "ch_77"}
}

// A queue keeps finished tasks for a week and events for a day; a scheduler
// calls CleanupAll (or, in SQL, durable.cleanup_all()) every minute.
// CleanupTasks cleans one queue now, here with a ttl of 0: every finished
// task, never a live one.
func ExampleClient_CleanupAll() {
	ctx := context.Background()
	client, err := durable.New(examplePool(), nil)
	if err != nil {
		log.Fatal(err)
	}
	queue := exampleQueueName("reports")
	if err := client.CreateQueue(ctx, queue); err != nil {
		log.Fatal(err)
	}
	err = client.SetQueueRetention(ctx, queue, &durable.RetentionPolicy{TaskTTL: 7 * 24 * time.Hour, EventTTL: 24 * time.Hour})
	if err != nil {
		log.Fatal(err)
	}
	for i := range 3 {
		if _, err := client.Spawn(ctx, queue, "report", map[string]int{"n": i}, nil); err != nil {
			log.Fatal(err)
		}
	}
	runs, err := client.ClaimTasks(ctx, queue, "worker-1", 30*time.Second, 2)
	if err != nil {
		log.Fatal(err)
	}
	for _, r := range runs {
		if err := client.CompleteRun(ctx, queue, r.RunID, nil); err != nil {
			log.Fatal(err)
		}
	}

	results, err := client.CleanupAll(ctx, 0)
	if err != nil {
		log.Fatal(err)
	}
	for _, r := range results {
		if r.Queue == queue {
			fmt.Printf("policy: tasks %v, events %v; deleted now: %d tasks\n", r.Policy.TaskTTL, r.Policy.EventTTL, r.TasksDeleted)
		}
	}
	n, err := client.CleanupTasks(ctx, queue, 0, 0)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("finished tasks deleted with ttl 0:", n)
	// Output:
	// policy: tasks 168h0m0s, events 24h0m0s; deleted now: 0 tasks
	// finished tasks deleted with ttl 0: 2
}
