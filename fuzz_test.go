package durable_test

// Fuzz targets for what callers hand the schema: spawn params, queue and task
// names and keys, spawn options, event names and payloads, and claim
// arguments. Under plain go test each runs its seed corpus (below, and
// testdata/fuzz/FuzzXxx); make fuzz runs each for a while. Every input must
// either succeed (and be stored as given) or fail with one of our SQLSTATEs,
// having written nothing.

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/internal/testdb"
)

const fuzzQueue = "fuzzq"

// fuzzSetup creates the fuzz queue (committed) on the shared database.
func fuzzSetup(f *testing.F) {
	f.Helper()
	_, err := testdb.Shared(f).Exec(context.Background(), "select durable.create_queue($1)", fuzzQueue)
	require.NoError(f, err)
}

// inSavepoint runs call with a client on a savepoint of a fresh transaction,
// and returns the transaction, the call's error, and whether the durable
// tables saw any write when the call failed (the savepoint is rolled back
// then; writes counts rolled-back writes too).
func inSavepoint(t *testing.T, call func(c *durable.Client, db durable.DBTX) error) (pgx.Tx, error) {
	t.Helper()
	ctx := context.Background()
	tx := testdb.Tx(t)
	before := writes(t, tx)
	sp, err := tx.Begin(ctx)
	require.NoError(t, err)
	c, err := durable.New(sp, nil)
	require.NoError(t, err)
	err = call(c, sp)
	if err != nil {
		require.NoError(t, sp.Rollback(ctx))
		require.Equal(t, before, writes(t, tx), "a failed call wrote rows: %v", err)
		return tx, err
	}
	require.NoError(t, sp.Commit(ctx))
	return tx, nil
}

// requireOurError asserts err is a *durable.Error with one of codes.
func requireOurError(t *testing.T, err error, codes ...string) {
	t.Helper()
	var de *durable.Error
	if !errors.As(err, &de) {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			t.Fatalf("want one of our SQLSTATEs %v, got PostgreSQL's %s: %s", codes, pgErr.Code, pgErr.Message)
		}
		t.Fatalf("want one of our SQLSTATEs %v, got %T: %v", codes, err, err)
	}
	require.Contains(t, codes, de.Code, "%v", err)
}

// FuzzSpawnParams: any bytes as a spawn's params (json.RawMessage).
func FuzzSpawnParams(f *testing.F) {
	for _, s := range []string{
		`{}`, `null`, `[1, 2, 3]`, `"x"`, `{"a": {"b": [[[[]]]]}}`, `{"a": 1, "a": 2}`,
		`{"a": "\u0000"}`, `{"a": "\\u0000"}`, `{"a":`, "\xff", `"\ud800"`, `"\udc00\ud800"`, `"\ud83d\ude00"`,
		`1e400`, `-0`, `123456789012345678901234567890`, `{"k": "'; drop table durable.queues; --"}`,
		strings.Repeat("[", 300) + strings.Repeat("]", 300),
	} {
		f.Add([]byte(s))
	}
	fuzzSetup(f)
	f.Fuzz(func(t *testing.T, params []byte) {
		var res *durable.SpawnResult
		tx, err := inSavepoint(t, func(c *durable.Client, db durable.DBTX) error {
			var err error
			res, err = c.SpawnTx(context.Background(), db, fuzzQueue, "t", json.RawMessage(params), &durable.SpawnOptions{IdempotencyKey: "k"})
			return err
		})
		if err != nil {
			requireOurError(t, err, "QD006")
			return
		}
		var same bool
		require.NoError(t, tx.QueryRow(context.Background(),
			"select params = $2::text::jsonb from "+tableName("t_", fuzzQueue)+" where task_id = $1", res.TaskID, string(params)).Scan(&same))
		require.True(t, same, "params stored as given")
	})
}

// FuzzSpawnNames: any queue name, task name and key.
func FuzzSpawnNames(f *testing.F) {
	for _, s := range [][3]string{
		{fuzzQueue, "t", "k"}, {fuzzQueue, "", "k"}, {"", "t", ""}, {fuzzQueue, "t\x00", "k"}, {"Fuzzq", "t", "k"},
		{fuzzQueue, "t", "\xff\xfe"}, {fuzzQueue, "'; drop table durable.queues; --", "%s%I$1"}, {"a;b", "t", "k"},
		{fuzzQueue, "é", "e\u0301"}, {"fuzzq\n", "t", "k"}, {strings.Repeat("q", 49), "t", "k"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	fuzzSetup(f)
	f.Fuzz(func(t *testing.T, queue, task, key string) {
		ctx := context.Background()
		var first, second *durable.SpawnResult
		_, err := inSavepoint(t, func(c *durable.Client, db durable.DBTX) error {
			var err error
			first, err = c.SpawnTx(ctx, db, queue, task, nil, &durable.SpawnOptions{IdempotencyKey: key})
			if err != nil {
				return err
			}
			second, err = c.SpawnTx(ctx, db, queue, task, nil, &durable.SpawnOptions{IdempotencyKey: key})
			return err
		})
		if err != nil {
			requireOurError(t, err, "QD001", "QD002", "QD003", "QD004")
			return
		}
		require.True(t, first.Created)
		if key != "" {
			require.False(t, second.Created, "the key holds")
			require.Equal(t, first.TaskID, second.TaskID)
		} else {
			require.True(t, second.Created, "no key, no deduplication")
		}
	})
}

// FuzzSpawnOptions: any JSON as spawn_task's options, through SQL (and as a
// spawn_tasks element's options). Text PostgreSQL cannot read as jsonb never
// reaches the function and is skipped.
func FuzzSpawnOptions(f *testing.F) {
	for _, s := range []string{
		`{}`, `null`, `[]`, `{"max_attempts": 3}`, `{"max_attempts": -1}`, `{"max_attempts": 1e400}`,
		`{"retry_strategy": {"kind": "fixed", "base_seconds": 0.5}}`, `{"retry_strategy": {"kind": "exponential", "factor": 1e308}}`,
		`{"headers": {"a": [1]}}`, `{"available_at": "2030-01-01T00:00:00Z"}`, `{"available_at": "epoch"}`,
		`{"available_at": "10000-01-01"}`, `{"parent_task_id": "00000000-0000-0000-0000-000000000000"}`,
		`{"max_delay": 1}`, `{"max_duration": 315360001}`, `{"max_delay": 1.0}`, `{"bogus": 1}`,
	} {
		f.Add(s)
	}
	fuzzSetup(f)
	f.Fuzz(func(t *testing.T, options string) {
		ctx := context.Background()
		probe := testdb.Tx(t)
		if _, err := probe.Exec(ctx, "select $1::text::jsonb", options); err != nil {
			return
		}
		for _, sql := range []string{
			"select durable.spawn_task($1, 't', '{}', false, null, $2::text::jsonb)",
			"select durable.spawn_tasks($1, jsonb_build_array(jsonb_build_object('task_name', 't', 'options', $2::text::jsonb)))",
		} {
			_, err := inSavepoint(t, func(c *durable.Client, db durable.DBTX) error {
				_, err := db.Exec(ctx, sql, fuzzQueue, options)
				return durableError(err)
			})
			if err != nil {
				requireOurError(t, err, "QD005", "QD006", "QD020")
			}
		}
	})
}

// durableError maps a server error as the client does (through a call that
// fails the same way), so that raw SQL calls can be checked like Go ones.
func durableError(err error) error {
	var pgErr *pgconn.PgError
	if err == nil || !errors.As(err, &pgErr) || !strings.HasPrefix(pgErr.Code, "QD") {
		return err
	}
	return &durable.Error{Code: pgErr.Code, Message: pgErr.Message, Hint: pgErr.Hint}
}

// FuzzEmitEvent: any event name and payload.
func FuzzEmitEvent(f *testing.F) {
	for _, s := range []struct{ name, payload string }{
		{"ev", `{}`}, {"", `{}`}, {"$task:x", `1`}, {"ev\x00", `{}`}, {"\xff", `{}`}, {"ev", `{"a":`},
		{"ev", `"\u0000"`}, {"'; drop table durable.queues; --", `null`}, {strings.Repeat("e", 10000), `[]`},
	} {
		f.Add(s.name, []byte(s.payload))
	}
	fuzzSetup(f)
	f.Fuzz(func(t *testing.T, name string, payload []byte) {
		ctx := context.Background()
		var first, second bool
		_, err := inSavepoint(t, func(c *durable.Client, db durable.DBTX) error {
			var err error
			first, err = c.EmitEvent(ctx, fuzzQueue, name, json.RawMessage(payload))
			if err != nil {
				return err
			}
			second, err = c.EmitEvent(ctx, fuzzQueue, name, json.RawMessage(payload))
			return err
		})
		if err != nil {
			requireOurError(t, err, "QD006", "QD007")
			return
		}
		require.True(t, first)
		require.False(t, second, "the first emit wins")
	})
}

// FuzzClaimArgs: any worker id, claim timeout and qty.
func FuzzClaimArgs(f *testing.F) {
	for _, s := range []struct {
		worker         string
		timeout, count int64
	}{
		{"w", int64(30 * time.Second), 1}, {"", int64(time.Second), 1}, {"w", 0, 1}, {"w", -1, 1}, {"w", 1 << 62, 1},
		{"w", int64(time.Second), 0}, {"w", int64(time.Second), 10001}, {"w", int64(time.Second), 1 << 40},
		{"w", int64(time.Second), -1 << 40}, {"\xff", int64(time.Second), 1}, {"w\x00", int64(time.Second), 1},
	} {
		f.Add(s.worker, s.timeout, s.count)
	}
	fuzzSetup(f)
	f.Fuzz(func(t *testing.T, worker string, timeout, qty int64) {
		ctx := context.Background()
		tx := testdb.Tx(t)
		spawn(t, tx, spawnCall{queue: fuzzQueue, task: "t"})
		before := writes(t, tx)
		sp, err := tx.Begin(ctx)
		require.NoError(t, err)
		c, err := durable.New(sp, nil)
		require.NoError(t, err)
		runs, err := c.ClaimTasks(ctx, fuzzQueue, worker, time.Duration(timeout), int(qty))
		if err != nil {
			require.NoError(t, sp.Rollback(ctx))
			require.Equal(t, before, writes(t, tx), "a failed claim wrote rows: %v", err)
			requireOurError(t, err, "QD006")
			return
		}
		require.NotEmpty(t, runs)
		require.NoError(t, sp.Commit(ctx))
	})
}
