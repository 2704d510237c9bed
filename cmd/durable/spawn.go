package main

import (
	"context"
	"encoding/json"
	"time"

	"github.com/durable-go/durable"
)

func runSpawn(ctx context.Context, e *env, args []string) int {
	fs := newFlagSet(e, "spawn", "QUEUE TASK [--params JSON] [--key K | --once] [flags]", `
Enqueues a task named TASK on QUEUE with the params JSON (durable.spawn_task)
and says whether it was created or deduplicated: with --key, or --once (the
key is derived from TASK and the params), a spawn while a task holding the
same key is pending, running or sleeping returns that task and writes
nothing. --json prints {"task_id", "run_id", "attempt", "created", "state"}.`,
		`  durable spawn emails send-receipt --params '{"order": 42}' --key order-42
  durable spawn emails digest --params '{"user": 7}' --once --json
  durable spawn emails reminder --delay 1h --max-attempts 3`)
	db := addDBFlags(e, fs)
	params := fs.String("params", "{}", "the task's params, as JSON")
	key := fs.String("key", "", "idempotency key: deduplicate spawns with this key while the task is unfinished")
	once := fs.Bool("once", false, "derive the idempotency key from TASK and the params")
	maxAttempts := fs.Int("max-attempts", 0, "attempts before the task fails (0: the schema's default, 5)")
	delay := fs.Duration("delay", 0, "do not start the task before this long from now (by this machine's clock), e.g. 30s, 5m, 2h")
	headers := fs.String("headers", "", "headers handed to the worker, as a JSON object")
	pos, code, ok := parseArgs(e, fs, args, "QUEUE", "TASK")
	if !ok {
		return code
	}
	p, code, ok := jsonArg(e, fs, "params", *params)
	if !ok {
		return code
	}
	switch {
	case *key != "" && *once:
		return usageError(e, fs, "--key and --once exclude each other")
	case *maxAttempts < 0:
		return usageError(e, fs, "--max-attempts must be at least 1, got %d", *maxAttempts)
	case *delay < 0:
		return usageError(e, fs, "--delay must not be negative, got %s", *delay)
	}
	opts := &durable.SpawnOptions{IdempotencyKey: *key, OnlyOnce: *once, MaxAttempts: *maxAttempts}
	if *delay > 0 {
		opts.AvailableAt = time.Now().Add(*delay)
	}
	if *headers != "" {
		h, code, ok := jsonArg(e, fs, "headers", *headers)
		if !ok {
			return code
		}
		if err := json.Unmarshal(h, &opts.Headers); err != nil || opts.Headers == nil {
			return usageError(e, fs, "--headers must be a JSON object")
		}
	}
	c, conn, code, ok := db.connect(ctx, e, fs)
	if !ok {
		return code
	}
	defer conn.Close(context.WithoutCancel(ctx))
	r, err := c.Spawn(ctx, pos[0], pos[1], p, opts)
	if err != nil {
		return failed(e, fs, err)
	}
	return printSpawn(e, *db.json, r)
}
