package durable_test

// Bad input beyond names and spawn options (badinput_test.go): payload sizes
// and depths, wrong JSON types in the newer options and batch calls, numbers
// at and past their limits, unknown ids in the durable-execution calls, and
// SQL metacharacters wherever free text goes. Each case is refused with our
// SQLSTATE and writes nothing, or is accepted and stored as given; the schema
// is intact afterwards.

import (
	"context"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/internal/testdb"
)

// TestBadInputSQL: each call fails with its SQLSTATE, having written nothing
// (requireFails compares the transaction's write counters). $1 is the queue,
// $2 an id no task or run has.
func TestBadInputSQL(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, code, sql string
	}{
		// Wrong JSON types and ranges in the options added with durable execution.
		{"parent_task_id number", "QD005", `select durable.spawn_task($1, 't', '{}', false, null, '{"parent_task_id": 5}')`},
		{"parent_task_id not a uuid", "QD005", `select durable.spawn_task($1, 't', '{}', false, null, '{"parent_task_id": "nope"}')`},
		{"parent_task_id object", "QD005", `select durable.spawn_task($1, 't', '{}', false, null, '{"parent_task_id": {}}')`},
		{"parent_task_id unknown", "QD020", `select durable.spawn_task($1, 't', '{}', false, null, jsonb_build_object('parent_task_id', $2::uuid))`},
		{"max_delay string", "QD005", `select durable.spawn_task($1, 't', '{}', false, null, '{"max_delay": "1"}')`},
		{"max_delay huge", "QD005", `select durable.spawn_task($1, 't', '{}', false, null, '{"max_delay": 1e15}')`},
		{"max_delay 1e400", "QD005", `select durable.spawn_task($1, 't', '{}', false, null, '{"max_delay": 1e400}')`},
		{"max_delay zero", "QD005", `select durable.spawn_task($1, 't', '{}', false, null, '{"max_delay": 0}')`},
		{"max_duration negative", "QD005", `select durable.spawn_task($1, 't', '{}', false, null, '{"max_duration": -1}')`},
		{"max_duration past int32", "QD005", `select durable.spawn_task($1, 't', '{}', false, null, '{"max_duration": 2147483648}')`},
		{"max_duration fraction", "QD005", `select durable.spawn_task($1, 't', '{}', false, null, '{"max_duration": 1.5}')`},
		{"max_attempts tiny fraction", "QD005", `select durable.spawn_task($1, 't', '{}', false, null, '{"max_attempts": 1e-400}')`},
		{"available_at past the timestamp range", "QD005", `select durable.spawn_task($1, 't', '{}', false, null, '{"available_at": "294277-01-01"}')`},
		{"available_at with SQL", "QD005", `select durable.spawn_task($1, 't', '{}', false, null, '{"available_at": "now''); drop table durable.queues; --"}')`},
		// Batches.
		{"spawn_tasks null", "QD006", `select durable.spawn_tasks($1, 'null')`},
		{"spawn_tasks object", "QD006", `select durable.spawn_tasks($1, '{"task_name": "t"}')`},
		{"spawn_tasks element number", "QD006", `select durable.spawn_tasks($1, '[1]')`},
		{"spawn_tasks task_name number", "QD003", `select durable.spawn_tasks($1, '[{"task_name": 5}]')`},
		{"spawn_tasks bad option", "QD005", `select durable.spawn_tasks($1, '[{"task_name": "t"}, {"task_name": "t", "options": {"max_delay": "x"}}]')`},
		{"spawn_tasks 10001 elements", "QD006", `select durable.spawn_tasks($1, (select jsonb_agg(jsonb_build_object('task_name', 't')) from generate_series(1, 10001)))`},
		{"complete_runs object", "QD006", `select durable.complete_runs($1, '{"a": 1}')`},
		{"complete_runs run_id number", "QD006", `select durable.complete_runs($1, '[{"run_id": 5}]')`},
		{"complete_runs extra key", "QD006", `select durable.complete_runs($1, jsonb_build_array(jsonb_build_object('run_id', $2::uuid, 'x', 1)))`},
		// Numbers past their limits.
		{"await timeout negative", "QD006", `select durable.await_event($1, $2, $2, 's', 'ev', -1)`},
		{"retry max_attempts zero", "QD005", `select durable.retry_task($1, $2, '{"max_attempts": 0}')`},
		// Unknown ids in the durable-execution calls.
		{"checkpoint unknown run", "QD010", `select durable.set_task_checkpoint_state($1, $2, 's', '1', $2)`},
		{"checkpoints unknown run", "QD010", `select durable.get_task_checkpoint_states($1, $2, $2)`},
		{"sleep unknown run", "QD010", `select durable.sleep_until($1, $2, $2, 's', now())`},
		{"await_event unknown run", "QD010", `select durable.await_event($1, $2, $2, 's', 'ev')`},
		{"await_task_result unknown task", "QD020", `select durable.await_task_result($1, $2, $2, 's', $2)`},
		{"retry unknown task", "QD020", `select durable.retry_task($1, $2)`},
		// Event names.
		{"emit empty event", "QD007", `select durable.emit_event($1, '')`},
		{"emit NULL event", "QD007", `select durable.emit_event($1, null)`},
		{"emit reserved event", "QD007", `select durable.emit_event($1, '$task:x')`},
	}
	tx := testdb.Tx(t)
	q := newQueue(t, tx)
	for _, tc := range cases {
		args := []any{q}
		if strings.Contains(tc.sql, "$2") {
			args = append(args, "00000000-0000-4000-8000-00000000abcd")
		}
		e := requireFails(t, tx, tc.code, tc.sql, args...)
		require.NotEmpty(t, e.Message, tc.name)
	}
	require.Zero(t, countTasks(t, tx, q))
	requireSchemaIntact(t, tx)
}

// requireSchemaIntact checks that the durable schema still has its
// registry, its functions and every registered queue's tables.
func requireSchemaIntact(t *testing.T, db dbtx) {
	t.Helper()
	var missing int
	require.NoError(t, db.QueryRow(context.Background(), `
		select count(*) from durable.queues q
		 cross join unnest(array['t_', 'r_', 'c_', 'e_', 'w_']) p(prefix)
		 where to_regclass(format('durable.%I', p.prefix || q.queue_name)) is null`).Scan(&missing))
	require.Zero(t, missing, "queue tables missing")
	var functions int
	require.NoError(t, db.QueryRow(context.Background(),
		"select count(*) from pg_proc where pronamespace = 'durable'::regnamespace").Scan(&functions))
	require.Greater(t, functions, 30)
}

// TestBadInputAcceptedAsGiven: text full of SQL metacharacters in task names,
// keys, event names, step names, worker ids and payloads, deep JSON and 10 MB
// params are accepted, stored exactly, and hurt nothing.
func TestBadInputAcceptedAsGiven(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tx := testdb.Tx(t)
	c, err := durable.New(tx, nil)
	require.NoError(t, err)
	q := newQueue(t, tx)
	nasty := []string{
		`'; drop table durable.queues; --`,
		`$$; select pg_sleep(10); $$`,
		`%I %L %s %%`,
		`"quoted" \backslash\ $1 $2`,
		"tab\tnewline\nreturn\r",
		"emoji 🙂 and é and \u202e",
		strings.Repeat("x", 100_000),
	}
	for i, s := range nasty {
		res, err := c.Spawn(ctx, q, s, map[string]string{"v": s}, &durable.SpawnOptions{
			IdempotencyKey: s, Headers: map[string]any{"h": s}})
		require.NoError(t, err, "case %d", i)
		require.True(t, res.Created)
		again, err := c.Spawn(ctx, q, s, nil, &durable.SpawnOptions{IdempotencyKey: s})
		require.NoError(t, err)
		require.False(t, again.Created)
		require.Equal(t, s, *taskField(t, tx, q, res.TaskID, "task_name"))
		require.Equal(t, s, *taskField(t, tx, q, res.TaskID, "idempotency_key"))
		var v string
		require.NoError(t, tx.QueryRow(ctx, "select params->>'v' from "+tableName("t_", q)+" where task_id = $1", res.TaskID).Scan(&v))
		require.Equal(t, s, v)
		emitted, err := c.EmitEvent(ctx, q, "ev "+s, map[string]string{"v": s})
		require.NoError(t, err)
		require.True(t, emitted)
		runs, err := c.ClaimTasks(ctx, q, "worker "+s, time.Minute, 1)
		require.NoError(t, err)
		require.Len(t, runs, 1)
		mustExec(t, tx, "select durable.set_task_checkpoint_state($1, $2, $3, to_jsonb($3::text), $4)", q, runs[0].TaskID, s, runs[0].RunID)
		require.NoError(t, c.CompleteRun(ctx, q, runs[0].RunID, map[string]string{"v": s}))
	}
	require.Equal(t, len(nasty), countRows(t, tx, "t_", q, "state = 'completed'"))
	require.Equal(t, len(nasty), countRows(t, tx, "c_", q, ""))
	requireSchemaIntact(t, tx)

	// Deep JSON: 5,000 levels go through as params; past Go's limit of
	// 10,000 the client refuses them before any round trip (QD006).
	deep := strings.Repeat("[", 5000) + strings.Repeat("]", 5000)
	res, err := c.Spawn(ctx, q, "deep", json.RawMessage(deep), nil)
	require.NoError(t, err)
	var depth int
	require.NoError(t, tx.QueryRow(ctx, "select length(params::text) from "+tableName("t_", q)+" where task_id = $1", res.TaskID).Scan(&depth))
	require.Equal(t, 10000, depth)
	tooDeep := strings.Repeat("[", 10001) + strings.Repeat("]", 10001)
	_, err = c.Spawn(ctx, q, "deep", json.RawMessage(tooDeep), nil)
	requireSentinels(t, err, "QD006", durable.ErrInvalidArgument)
	_, err = c.EmitEvent(ctx, q, "deep", json.RawMessage(tooDeep))
	requireSentinels(t, err, "QD006", durable.ErrInvalidArgument)
}

// TestBadInputTenMegabyteParams: 10 MB params go through spawn, claim and
// complete intact, through Go and SQL.
func TestBadInputTenMegabyteParams(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tx := testdb.Tx(t)
	c, err := durable.New(tx, nil)
	require.NoError(t, err)
	q := newQueue(t, tx)
	blob := strings.Repeat("0123456789abcdef", 10<<20/16)
	res, err := c.Spawn(ctx, q, "big", map[string]string{"blob": blob}, &durable.SpawnOptions{IdempotencyKey: "big"})
	require.NoError(t, err)
	require.True(t, res.Created)
	again := spawn(t, tx, spawnCall{queue: q, task: "big", params: str(jsonString(t, map[string]string{"blob": blob})), key: str("big")})
	require.False(t, again.Created)
	runs, err := c.ClaimTasks(ctx, q, "w", time.Minute, 1)
	require.NoError(t, err)
	require.Len(t, runs, 1)
	var got map[string]string
	require.NoError(t, json.Unmarshal(runs[0].Params, &got))
	require.Equal(t, blob, got["blob"])
	require.NoError(t, c.CompleteRun(ctx, q, runs[0].RunID, map[string]string{"blob": blob}))
	out, err := c.GetTaskResult(ctx, q, res.TaskID)
	require.NoError(t, err)
	require.Equal(t, durable.StateCompleted, out.State)
	require.Len(t, out.Result, len(blob)+len(`{"blob": ""}`))
}

// TestBadInputGoNumbers: numbers the Go options cannot express to the schema
// are refused with ErrInvalidOptions, and nothing is written.
func TestBadInputGoNumbers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tx := testdb.Tx(t)
	c, err := durable.New(tx, nil)
	require.NoError(t, err)
	q := newQueue(t, tx)
	for i, o := range []*durable.SpawnOptions{
		{MaxAttempts: math.MaxInt64},
		{MaxAttempts: math.MinInt64},
		{MaxDelay: -time.Second},
		{MaxDuration: time.Duration(math.MaxInt64)},
		{RetryStrategy: &durable.RetryStrategy{Kind: durable.RetryExponential, Factor: math.Inf(1)}},
		{RetryStrategy: &durable.RetryStrategy{Kind: durable.RetryExponential, Factor: math.NaN()}},
		{RetryStrategy: &durable.RetryStrategy{Kind: durable.RetryFixed, Base: time.Duration(math.MaxInt64)}},
		{RetryStrategy: &durable.RetryStrategy{Kind: "'; drop table durable.queues; --"}},
		{ParentTaskID: durable.UUID{1, 2, 3}},
		{Headers: map[string]any{"f": math.Inf(-1)}},
		{Headers: map[string]any{"c": make(chan int)}},
	} {
		before := writes(t, tx)
		sp, err := tx.Begin(ctx)
		require.NoError(t, err)
		_, err = c.SpawnTx(ctx, sp, q, "t", nil, o)
		require.NoError(t, sp.Rollback(ctx))
		var de *durable.Error
		require.ErrorAs(t, err, &de, "case %d", i)
		require.Contains(t, []string{"QD005", "QD020"}, de.Code, "case %d: %v", i, err)
		require.Equal(t, before, writes(t, tx), "case %d wrote rows", i)
	}
	require.Zero(t, countTasks(t, tx, q))
	requireSchemaIntact(t, tx)
}

// TestBadInputNumericLimits: JSON numbers at and past the limits of
// PostgreSQL's numeric (jsonb's numbers): the client refuses those the server
// would refuse with 22003, before any round trip (QD006), and sends the rest.
func TestBadInputNumericLimits(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tx := testdb.Tx(t)
	c, err := durable.New(tx, nil)
	require.NoError(t, err)
	q := newQueue(t, tx)
	for n, fits := range map[string]bool{
		"1e131071": true, "1e131072": false, "0.001e131074": true, "0.001e131075": false, "123e131070": false,
		"1e-16383": true, "1e-16384": false, "1.5e-16382": true, "1.0e-16383": false, "0e-16383": true, "0e-20000": false,
		"0e1073741822": true, "0e1073741823": false, "1E200000": false, "-1e131071": true, "-0": true,
	} {
		_, err := c.Spawn(ctx, q, "n", json.RawMessage(`{"n": `+n+`}`), nil)
		if fits {
			require.NoError(t, err, n)
		} else {
			requireSentinels(t, err, "QD006", durable.ErrInvalidArgument)
		}
	}
}
