package durable

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// SpawnRequest is one task of a SpawnMany batch.
type SpawnRequest struct {
	// TaskName is the name the worker registered the handler under. Required.
	TaskName string
	// Params are marshalled to JSON as in Spawn (json.RawMessage and []byte
	// are taken as JSON as they are). Defaults to JSON null (when nil), as in
	// Spawn.
	Params any
	// Options tune the task as in Spawn, OnlyOnce and IdempotencyKey included.
	// Defaults to every default (when nil).
	Options *SpawnOptions
}

// SpawnMany enqueues tasks on queue in one round trip (durable.spawn_tasks)
// and returns one result per request, in the order of tasks.
//
// Each request follows Spawn's rule: with a key, the first spawn creates the
// task and, while it is unfinished, every other spawn with the same key
// returns it with Created false. Requests of one batch with the same key share
// one task, which the first of them creates (or finds). Keys are taken in a
// fixed order, so concurrent batches with overlapping keys do not deadlock.
//
// The batch is all or nothing: a bad request fails the call, naming the
// request's position from 1, and nothing is spawned. The server takes at most
// 10000 requests; an empty batch still checks the queue.
func (c *Client) SpawnMany(ctx context.Context, queue string, tasks []SpawnRequest) ([]SpawnResult, error) {
	return c.SpawnManyTx(ctx, c.db, queue, tasks)
}

// SpawnManyTx is SpawnMany on tx, typically the caller's pgx.Tx, so that the
// tasks are enqueued if and only if the caller's own writes commit.
func (c *Client) SpawnManyTx(ctx context.Context, tx DBTX, queue string, tasks []SpawnRequest) ([]SpawnResult, error) {
	if err := checkText("QD001", "queue name", queue); err != nil {
		return nil, err
	}
	batch, err := encodeSpawnRequests(tasks)
	if err != nil {
		return nil, err
	}
	rows, err := tx.Query(ctx,
		"select ordinality, task_id, run_id, attempt, created, state from durable.spawn_tasks($1, $2)",
		queue, batch)
	if err != nil {
		return nil, mapError(err)
	}
	defer rows.Close()
	results := make([]SpawnResult, len(tasks))
	n := 0
	for rows.Next() {
		var pos int
		var r SpawnResult
		if err := rows.Scan(&pos, &r.TaskID, &r.RunID, &r.Attempt, &r.Created, &r.State); err != nil {
			return nil, mapError(err)
		}
		if pos < 1 || pos > len(tasks) {
			return nil, fmt.Errorf("durable: spawn_tasks returned position %d for %d tasks", pos, len(tasks))
		}
		results[pos-1] = r
		n++
	}
	if err := rows.Err(); err != nil {
		return nil, mapError(err)
	}
	if n != len(tasks) {
		return nil, fmt.Errorf("durable: spawn_tasks returned %d rows for %d tasks", n, len(tasks))
	}
	if c.hooks.OnSpawn != nil {
		for i := range results {
			c.spawned(ctx, queue, tasks[i].TaskName, &results[i])
		}
	}
	return results, nil
}

// encodeSpawnRequests builds spawn_tasks' JSON array, refusing before any
// round trip what Spawn refuses: names and keys that are not valid UTF-8 or
// contain NUL, and params or options that are not valid JSON. Errors name the
// request's position from 1, as the server's do.
func encodeSpawnRequests(tasks []SpawnRequest) ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('[')
	for i, t := range tasks {
		at := func(err error) error {
			var e *Error
			if !errors.As(err, &e) {
				return err
			}
			return clientError(e.Code, "spawn request %d: %s", i+1, e.Message)
		}
		if err := checkText("QD003", "task name", t.TaskName); err != nil {
			return nil, at(err)
		}
		var key []byte
		onlyOnce := false
		if opts := t.Options; opts != nil {
			onlyOnce = opts.OnlyOnce
			if opts.IdempotencyKey != "" {
				if err := checkText("QD004", "idempotency key", opts.IdempotencyKey); err != nil {
					return nil, at(err)
				}
				key, _ = json.Marshal(opts.IdempotencyKey) // valid UTF-8: checked above
			}
		}
		p, err := encodeJSON("params", t.Params)
		if err != nil {
			return nil, at(err)
		}
		o, err := t.Options.optionsJSON()
		if err != nil {
			return nil, at(err)
		}
		name, _ := json.Marshal(t.TaskName) // valid UTF-8: checked above
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"task_name":`)
		b.Write(name)
		b.WriteString(`,"params":`)
		b.Write(p)
		if key != nil {
			b.WriteString(`,"idempotency_key":`)
			b.Write(key)
		}
		if onlyOnce {
			b.WriteString(`,"only_once":true`)
		}
		b.WriteString(`,"options":`)
		b.Write(o)
		b.WriteByte('}')
	}
	b.WriteByte(']')
	return b.Bytes(), nil
}
