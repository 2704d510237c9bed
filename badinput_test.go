package durable_test

// Bad input: every argument the durable functions refuse, with the exact
// SQLSTATE and nothing written, through SQL and through the Go client.

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/internal/testdb"
)

const someUUID = "00000000-0000-4000-8000-000000000001"

// queueCalls are the calls that take a queue name, as $1.
var queueCalls = []string{
	"select durable.create_queue($1)",
	"select durable.drop_queue($1)",
	"select durable.ensure_queue_tables($1)",
	"select * from durable.spawn_task($1, 't')",
	"select * from durable.spawn_task($1, 't', '{}', true, 'k', '{}')",
	"select * from durable.claim_task($1, 'w')",
	"select durable.complete_run($1, '" + someUUID + "')",
	"select durable.fail_run($1, '" + someUUID + "', '{}')",
	"select durable.extend_claim($1, '" + someUUID + "', 30)",
	"select durable.cancel_task($1, '" + someUUID + "')",
	"select * from durable.get_task_result($1, '" + someUUID + "')",
	"select durable.register_waiter($1)",
	"select durable.unregister_waiter($1)",
}

// TestBadQueueNames: every function refuses a name that cannot be a queue
// with QD001, and writes nothing (no table, no registration).
func TestBadQueueNames(t *testing.T) {
	t.Parallel()
	names := []struct {
		name  string
		value any
	}{
		{"empty", ""},
		{"NULL", nil},
		{"49 bytes", strings.Repeat("a", 49)},
		{"starts with a digit", "1abc"},
		{"starts with _", "_abc"},
		{"starts with -", "-abc"},
		{"space", "a b"},
		{"semicolon", "a;drop"},
		{"non-ASCII letter", "é"},
		{"non-ASCII after a letter", "qé"},
		{"quoted", `"x"`},
		{"dot", "a.b"},
		{"quote", "a'b"},
		{"trailing newline", "a\n"},
		{"percent", "a%s"},
	}
	tx := testdb.Tx(t)
	for _, n := range names {
		for _, call := range queueCalls {
			e := requireFails(t, tx, "QD001", call, n.value)
			require.Contains(t, e.Message, "invalid queue name", "%s: %s", n.name, call)
			require.NotEmpty(t, e.Hint)
		}
	}
	// The limits: 48 bytes, letters, digits, '_' and '-' are fine.
	long := queueName()
	long += strings.Repeat("z", 48-len(long))
	for _, ok := range []string{long, "A-" + queueName() + "_9"} {
		mustExec(t, tx, "select durable.create_queue($1)", ok)
		spawn(t, tx, spawnCall{queue: ok, task: "t"})
		require.Contains(t, listQueues(t, tx), ok)
	}
}

// TestUnknownQueue: every function but create_queue refuses a valid name
// that is not a queue with QD002, naming it.
func TestUnknownQueue(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	q := queueName()
	for _, call := range queueCalls[1:] {
		e := requireFails(t, tx, "QD002", call, q)
		require.Contains(t, e.Message, q, call)
	}
	// A queue of the same name in other case is another queue.
	mustExec(t, tx, "select durable.create_queue($1)", strings.ToUpper(q))
	requireFails(t, tx, "QD002", "select durable.spawn_task($1, 't')", q)
}

// TestBadTaskName: an empty or NULL task name is QD003, with or without a key.
func TestBadTaskName(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	q := newQueue(t, tx)
	for _, name := range []any{"", nil} {
		for _, call := range []string{
			"select * from durable.spawn_task($1, $2)",
			"select * from durable.spawn_task($1, $2, '{}', true)",
			"select * from durable.spawn_task($1, $2, '{}', false, 'k')",
		} {
			requireFails(t, tx, "QD003", call, q, name)
		}
	}
	require.Equal(t, 0, countTasks(t, tx, q))
}

// TestBadIdempotencyKey: an empty key is QD004 (NULL means no key).
func TestBadIdempotencyKey(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	q := newQueue(t, tx)
	for _, onlyOnce := range []bool{false, true} {
		e := requireFails(t, tx, "QD004", "select * from durable.spawn_task($1, 't', '{}', $2, '')", q, onlyOnce)
		require.Contains(t, e.Message, q)
	}
	require.True(t, spawn(t, tx, spawnCall{queue: q, task: "t", key: nil}).Created)
	require.True(t, spawn(t, tx, spawnCall{queue: q, task: "t", key: nil}).Created, "a NULL key is no key")
}

// TestBadSpawnOptions: every malformed option is QD005, the message names
// the option, and nothing is written.
func TestBadSpawnOptions(t *testing.T) {
	t.Parallel()
	cases := []struct {
		options string
		names   string // what the message must mention
	}{
		{`[]`, "options"},
		{`"max_attempts"`, "options"},
		{`1`, "options"},
		{`null`, "options"},
		{`{"bogus": 1}`, "bogus"},
		{`{"bogus": null}`, "bogus"},
		{`{"MAX_ATTEMPTS": 3}`, "MAX_ATTEMPTS"},
		{`{"max_attempts": 0}`, "max_attempts"},
		{`{"max_attempts": -1}`, "max_attempts"},
		{`{"max_attempts": 1.5}`, "max_attempts"},
		{`{"max_attempts": "3"}`, "max_attempts"},
		{`{"max_attempts": 2147483648}`, "max_attempts"},
		{`{"max_attempts": 1e400}`, "max_attempts"},
		{`{"max_attempts": true}`, "max_attempts"},
		{`{"max_attempts": [3]}`, "max_attempts"},
		{`{"retry_strategy": "fixed"}`, "retry_strategy"},
		{`{"retry_strategy": []}`, "retry_strategy"},
		{`{"retry_strategy": {}}`, "retry_strategy.kind"},
		{`{"retry_strategy": {"kind": "linear"}}`, "retry_strategy.kind"},
		{`{"retry_strategy": {"kind": null}}`, "retry_strategy.kind"},
		{`{"retry_strategy": {"kind": 1}}`, "retry_strategy.kind"},
		{`{"retry_strategy": {"kind": "fixed", "factor": 2}}`, "factor"},
		{`{"retry_strategy": {"kind": "none", "base_seconds": 1}}`, "base_seconds"},
		{`{"retry_strategy": {"kind": "exponential", "base": 1}}`, "base"},
		{`{"retry_strategy": {"kind": "fixed", "base_seconds": -1}}`, "retry_strategy.base_seconds"},
		{`{"retry_strategy": {"kind": "fixed", "base_seconds": "1"}}`, "retry_strategy.base_seconds"},
		{`{"retry_strategy": {"kind": "fixed", "base_seconds": null}}`, "retry_strategy.base_seconds"},
		{`{"retry_strategy": {"kind": "fixed", "base_seconds": 31536001}}`, "retry_strategy.base_seconds"},
		{`{"retry_strategy": {"kind": "exponential", "factor": 0.5}}`, "retry_strategy.factor"},
		{`{"retry_strategy": {"kind": "exponential", "factor": 1001}}`, "retry_strategy.factor"},
		{`{"retry_strategy": {"kind": "exponential", "max_seconds": -5}}`, "retry_strategy.max_seconds"},
		{`{"headers": "trace"}`, "headers"},
		{`{"headers": []}`, "headers"},
		{`{"headers": 1}`, "headers"},
		{`{"available_at": 1893456000}`, "available_at"},
		{`{"available_at": true}`, "available_at"},
		{`{"available_at": {}}`, "available_at"},
		{`{"available_at": "garbage"}`, "available_at"},
		{`{"available_at": "2030-13-45T00:00:00Z"}`, "available_at"},
		{`{"available_at": "infinity"}`, "available_at"},
		{`{"available_at": "-infinity"}`, "available_at"},
		{`{"available_at": ""}`, "available_at"},
		{`{"max_attempts": 3, "headers": {}, "available_at": "soon"}`, "available_at"},
	}
	tx := testdb.Tx(t)
	q := newQueue(t, tx)
	for _, tc := range cases {
		for _, key := range []*string{nil, str("k")} {
			e := requireFails(t, tx, "QD005",
				"select * from durable.spawn_task($1, 't', '{}', false, $2, $3::text::jsonb)", q, key, tc.options)
			require.Contains(t, e.Message, tc.names, tc.options)
		}
	}
	require.Equal(t, 0, countTasks(t, tx, q))
}

// TestSpawnOptionsStored: valid options, at their limits or null, are stored
// with their defaults filled in.
func TestSpawnOptionsStored(t *testing.T) {
	t.Parallel()
	const defaultStrategy = `{"kind": "exponential", "base_seconds": 1, "factor": 2, "max_seconds": 3600}`
	cases := []struct {
		options     string
		maxAttempts int
		strategy    string
		headers     *string
		availableAt time.Time
	}{
		{`{}`, 5, defaultStrategy, nil, t0},
		{`{"max_attempts": null, "retry_strategy": null, "headers": null, "available_at": null}`, 5, defaultStrategy, nil, t0},
		{`{"max_attempts": 1}`, 1, defaultStrategy, nil, t0},
		{`{"max_attempts": 2147483647}`, 2147483647, defaultStrategy, nil, t0},
		{`{"max_attempts": 3.0}`, 3, defaultStrategy, nil, t0},
		{`{"retry_strategy": {"kind": "none"}}`, 5, `{"kind": "none"}`, nil, t0},
		{`{"retry_strategy": {"kind": "fixed"}}`, 5, `{"kind": "fixed", "base_seconds": 1}`, nil, t0},
		{`{"retry_strategy": {"kind": "fixed", "base_seconds": 0}}`, 5, `{"kind": "fixed", "base_seconds": 0}`, nil, t0},
		{`{"retry_strategy": {"kind": "exponential", "factor": 1, "max_seconds": 31536000}}`, 5,
			`{"kind": "exponential", "base_seconds": 1, "factor": 1, "max_seconds": 31536000}`, nil, t0},
		{`{"headers": {}}`, 5, defaultStrategy, str(`{}`), t0},
		{`{"headers": {"trace": "abc", "n": [1]}}`, 5, defaultStrategy, str(`{"trace": "abc", "n": [1]}`), t0},
		{`{"available_at": "2030-01-02T05:04:05+02:00"}`, 5, defaultStrategy, nil, t0},
		{`{"available_at": "2029-12-31"}`, 5, defaultStrategy, nil, time.Date(2029, 12, 31, 0, 0, 0, 0, time.UTC)},
	}
	tx := testdb.Tx(t)
	mustExec(t, tx, "set local timezone = 'UTC'")
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	for _, tc := range cases {
		s := spawn(t, tx, spawnCall{queue: q, task: "t", options: tc.options})
		require.Equal(t, tc.maxAttempts, mustInt(t, *taskField(t, tx, q, s.TaskID, "max_attempts")), tc.options)
		require.JSONEq(t, tc.strategy, *taskField(t, tx, q, s.TaskID, "retry_strategy"), tc.options)
		headers := taskField(t, tx, q, s.TaskID, "headers")
		if tc.headers == nil {
			require.Nil(t, headers, tc.options)
		} else {
			require.JSONEq(t, *tc.headers, *headers, tc.options)
		}
		_, _, avail := runOf(t, tx, q, s.TaskID, 1)
		requireTime(t, tc.availableAt, avail, tc.options)
	}
}

// TestBadClaimArguments: an empty worker id, a claim timeout below one
// second, or a qty outside 1..10000 is QD006, raised before the claim
// recovers any expired lease.
func TestBadClaimArguments(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		worker  any
		timeout any
		qty     any
	}{
		{"empty worker id", "", 30, 1},
		{"NULL worker id", nil, 30, 1},
		{"timeout 0", "w", 0, 1},
		{"timeout -1", "w", -1, 1},
		{"NULL timeout", "w", nil, 1},
		{"qty 0", "w", 30, 0},
		{"qty -1", "w", 30, -1},
		{"qty 10001", "w", 30, 10001},
		{"NULL qty", "w", 30, nil},
	}
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	none := `{"retry_strategy": {"kind": "none"}}`
	spawn(t, tx, spawnCall{queue: q, task: "t", options: none})
	claimOne(t, tx, q)
	spawn(t, tx, spawnCall{queue: q, task: "t", options: none})
	setNow(t, tx, t0.Add(time.Hour)) // a valid claim would now recover the lease
	for _, tc := range cases {
		requireFails(t, tx, "QD006", "select * from durable.claim_task($1, $2, $3, $4)", q, tc.worker, tc.timeout, tc.qty)
	}
	// The limits: qty 10000 and a one-second lease are fine.
	runs := claim(t, tx, q, "w", 1, 10000)
	require.Len(t, runs, 2)
	require.Equal(t, 3, runs[0].Attempt+runs[1].Attempt, "the expired run was retried")
	for _, r := range runs {
		requireTime(t, t0.Add(time.Hour+time.Second), r.ClaimExpiresAt)
	}
}

// TestBadExtendBy: extend_by below one second is QD006, and the lease is
// left as it was.
func TestBadExtendBy(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	spawn(t, tx, spawnCall{queue: q, task: "t"})
	r := claimOne(t, tx, q)
	for _, by := range []any{0, -1, nil} {
		e := requireFails(t, tx, "QD006", "select durable.extend_claim($1, $2, $3)", q, r.RunID, by)
		require.Contains(t, e.Message, "extend_by")
	}
	var expires time.Time
	require.NoError(t, tx.QueryRow(context.Background(), "select durable.extend_claim($1, $2, 1)", q, r.RunID).Scan(&expires))
	requireTime(t, t0.Add(time.Second), expires)
}

// TestNullRunAndTaskIDs: a NULL run id is an unknown run (QD010), a NULL task
// id an unknown task (QD020).
func TestNullRunAndTaskIDs(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	q := newQueue(t, tx)
	spawn(t, tx, spawnCall{queue: q, task: "t"})
	claimOne(t, tx, q)
	requireFails(t, tx, "QD010", "select durable.complete_run($1, null)", q)
	requireFails(t, tx, "QD010", "select durable.fail_run($1, null, '{}')", q)
	requireFails(t, tx, "QD010", "select durable.extend_claim($1, null, 30)", q)
	requireFails(t, tx, "QD020", "select durable.cancel_task($1, null)", q)
	requireFails(t, tx, "QD020", "select * from durable.get_task_result($1, null)", q)
}

// TestBadRetryAt: fail_run refuses a retry time that never comes (it would
// leave the task sleeping forever, holding its key).
func TestBadRetryAt(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	q := newQueue(t, tx)
	spawn(t, tx, spawnCall{queue: q, task: "t"})
	r := claimOne(t, tx, q)
	for _, at := range []string{"infinity", "-infinity"} {
		e := requireFails(t, tx, "QD006", "select durable.fail_run($1, $2, '{}', $3::timestamptz)", q, r.RunID, at)
		require.Contains(t, e.Message, "retry_at")
	}
}

// TestGoRefusesNULInJSON: a \u0000 escape anywhere in params or a result is
// refused before any round trip (jsonb cannot store it), while an escaped
// backslash followed by "u0000" is ordinary text and goes through.
func TestGoRefusesNULInJSON(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	counting := &countingDB{db: testdb.Tx(t)}
	c, err := durable.New(counting, nil)
	require.NoError(t, err)
	for _, params := range []any{
		map[string]string{"a": "x\x00y"},
		json.RawMessage(`{"deep": [1, {"k": "\u0000"}]}`),
		json.RawMessage(`["\\\\", "\u0000"]`),
	} {
		_, err := c.Spawn(ctx, "any", "t", params, nil)
		requireSentinels(t, err, "QD006", durable.ErrInvalidArgument)
	}
	require.Zero(t, counting.calls.Load(), "refused params must not reach the database")

	require.NoError(t, c.CreateQueue(ctx, "nul_ok"))
	r, err := c.Spawn(ctx, "nul_ok", "t", json.RawMessage(`{"a": "\\u0000"}`), nil)
	require.NoError(t, err)
	res, err := c.GetTaskResult(ctx, "nul_ok", r.TaskID)
	require.NoError(t, err)
	require.Equal(t, durable.StatePending, res.State)
}

// countingDB passes calls to a real database and counts them.
type countingDB struct {
	db    durable.DBTX
	calls atomic.Int64
}

func (c *countingDB) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	c.calls.Add(1)
	return c.db.Exec(ctx, sql, args...)
}

func (c *countingDB) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	c.calls.Add(1)
	return c.db.Query(ctx, sql, args...)
}

func (c *countingDB) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	c.calls.Add(1)
	return c.db.QueryRow(ctx, sql, args...)
}

var allSentinels = []error{
	durable.ErrInvalidQueueName, durable.ErrQueueNotFound, durable.ErrInvalidTaskName,
	durable.ErrInvalidIdempotencyKey, durable.ErrInvalidOptions, durable.ErrInvalidArgument,
	durable.ErrRunNotFound, durable.ErrRunNotRunning, durable.ErrLeaseLost, durable.ErrTaskCancelled,
	durable.ErrTaskNotFound,
}

// requireSentinels asserts that err is a *durable.Error with code that
// matches exactly the sentinels want.
func requireSentinels(t testing.TB, err error, code string, want ...error) *durable.Error {
	t.Helper()
	var de *durable.Error
	require.True(t, errors.As(err, &de), "want a *durable.Error, got %T %v", err, err)
	require.Equal(t, code, de.Code, "%v", err)
	for _, s := range allSentinels {
		require.Equal(t, slices.Contains(want, s), errors.Is(err, s), "errors.Is(%v, %v)", err, s)
	}
	return de
}

// TestGoRefusesBadTextBeforeRoundTrip: the client refuses invalid UTF-8 and
// NUL bytes in queue names, task names, keys and worker ids, and invalid JSON,
// without calling the database.
func TestGoRefusesBadTextBeforeRoundTrip(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var u durable.UUID
	bad := map[string]string{"invalid UTF-8": "q\xff\xfe", "NUL": "q\x00x", "lone continuation byte": "\x80"}
	type call struct {
		name string
		code string
		want error
		do   func(c *durable.Client, db durable.DBTX, s string) error
	}
	calls := []call{
		{"CreateQueue", "QD001", durable.ErrInvalidQueueName, func(c *durable.Client, db durable.DBTX, s string) error { return c.CreateQueue(ctx, s) }},
		{"DropQueue", "QD001", durable.ErrInvalidQueueName, func(c *durable.Client, db durable.DBTX, s string) error { return c.DropQueue(ctx, s) }},
		{"Spawn queue", "QD001", durable.ErrInvalidQueueName, func(c *durable.Client, db durable.DBTX, s string) error {
			_, err := c.Spawn(ctx, s, "t", nil, nil)
			return err
		}},
		{"SpawnTx queue", "QD001", durable.ErrInvalidQueueName, func(c *durable.Client, db durable.DBTX, s string) error {
			_, err := c.SpawnTx(ctx, db, s, "t", nil, nil)
			return err
		}},
		{"ClaimTasks queue", "QD001", durable.ErrInvalidQueueName, func(c *durable.Client, db durable.DBTX, s string) error {
			_, err := c.ClaimTasks(ctx, s, "w", time.Second, 1)
			return err
		}},
		{"CompleteRun queue", "QD001", durable.ErrInvalidQueueName, func(c *durable.Client, db durable.DBTX, s string) error { return c.CompleteRun(ctx, s, u, nil) }},
		{"FailRun queue", "QD001", durable.ErrInvalidQueueName, func(c *durable.Client, db durable.DBTX, s string) error {
			return c.FailRun(ctx, s, u, nil, time.Time{})
		}},
		{"ExtendClaim queue", "QD001", durable.ErrInvalidQueueName, func(c *durable.Client, db durable.DBTX, s string) error {
			_, err := c.ExtendClaim(ctx, s, u, time.Second)
			return err
		}},
		{"CancelTask queue", "QD001", durable.ErrInvalidQueueName, func(c *durable.Client, db durable.DBTX, s string) error {
			_, err := c.CancelTask(ctx, s, u)
			return err
		}},
		{"GetTaskResult queue", "QD001", durable.ErrInvalidQueueName, func(c *durable.Client, db durable.DBTX, s string) error {
			_, err := c.GetTaskResult(ctx, s, u)
			return err
		}},
		{"WaitForResult queue", "QD001", durable.ErrInvalidQueueName, func(c *durable.Client, db durable.DBTX, s string) error {
			_, err := c.WaitForResult(ctx, s, u)
			return err
		}},
		{"Spawn task name", "QD003", durable.ErrInvalidTaskName, func(c *durable.Client, db durable.DBTX, s string) error {
			_, err := c.Spawn(ctx, "q", s, nil, nil)
			return err
		}},
		{"Spawn key", "QD004", durable.ErrInvalidIdempotencyKey, func(c *durable.Client, db durable.DBTX, s string) error {
			_, err := c.Spawn(ctx, "q", "t", nil, &durable.SpawnOptions{IdempotencyKey: s})
			return err
		}},
		{"Spawn key with OnlyOnce", "QD004", durable.ErrInvalidIdempotencyKey, func(c *durable.Client, db durable.DBTX, s string) error {
			_, err := c.Spawn(ctx, "q", "t", nil, &durable.SpawnOptions{IdempotencyKey: s, OnlyOnce: true})
			return err
		}},
		{"ClaimTasks worker id", "QD006", durable.ErrInvalidArgument, func(c *durable.Client, db durable.DBTX, s string) error {
			_, err := c.ClaimTasks(ctx, "q", s, time.Second, 1)
			return err
		}},
	}
	for _, cl := range calls {
		for what, s := range bad {
			t.Run(cl.name+"/"+what, func(t *testing.T) {
				t.Parallel()
				db := &countingDB{db: testdb.Tx(t)}
				c, err := durable.New(db, nil)
				require.NoError(t, err)
				err = cl.do(c, db, s)
				de := requireSentinels(t, err, cl.code, cl.want)
				require.Nil(t, errors.Unwrap(de), "a client-side error wraps no server error")
				require.Zero(t, db.calls.Load(), "the client called the database")
			})
		}
	}
	t.Run("invalid JSON params", func(t *testing.T) {
		t.Parallel()
		db := &countingDB{db: testdb.Tx(t)}
		c, err := durable.New(db, nil)
		require.NoError(t, err)
		_, err = c.Spawn(ctx, "q", "t", []byte(`{"a":`), nil)
		requireSentinels(t, err, "QD006", durable.ErrInvalidArgument)
		_, err = c.Spawn(ctx, "q", "t", func() {}, nil)
		requireSentinels(t, err, "QD006", durable.ErrInvalidArgument)
		require.Zero(t, db.calls.Load())
	})
}

// TestGoErrorsMatchSentinels: each SQLSTATE the server raises reaches a Go
// caller as a *durable.Error that matches its sentinel (ErrLeaseLost and
// ErrTaskCancelled also match ErrRunNotRunning) and unwraps to the server's
// error.
func TestGoErrorsMatchSentinels(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cases := []struct {
		name string
		code string
		want []error
		// do gets a client on a transaction with queue q and the clock at t0.
		do func(t *testing.T, c *durable.Client, tx pgx.Tx, q string) error
	}{
		{"QD001 invalid queue name", "QD001", []error{durable.ErrInvalidQueueName},
			func(t *testing.T, c *durable.Client, tx pgx.Tx, q string) error { return c.CreateQueue(ctx, "1abc") }},
		{"QD001 empty queue name", "QD001", []error{durable.ErrInvalidQueueName},
			func(t *testing.T, c *durable.Client, tx pgx.Tx, q string) error {
				_, err := c.Spawn(ctx, "", "t", nil, nil)
				return err
			}},
		{"QD002 queue not found", "QD002", []error{durable.ErrQueueNotFound},
			func(t *testing.T, c *durable.Client, tx pgx.Tx, q string) error {
				_, err := c.Spawn(ctx, q+"x", "t", nil, nil)
				return err
			}},
		{"QD002 drop unknown queue", "QD002", []error{durable.ErrQueueNotFound},
			func(t *testing.T, c *durable.Client, tx pgx.Tx, q string) error { return c.DropQueue(ctx, q+"x") }},
		{"QD003 empty task name", "QD003", []error{durable.ErrInvalidTaskName},
			func(t *testing.T, c *durable.Client, tx pgx.Tx, q string) error {
				_, err := c.Spawn(ctx, q, "", nil, &durable.SpawnOptions{IdempotencyKey: "k"})
				return err
			}},
		{"QD005 max attempts", "QD005", []error{durable.ErrInvalidOptions},
			func(t *testing.T, c *durable.Client, tx pgx.Tx, q string) error {
				_, err := c.Spawn(ctx, q, "t", nil, &durable.SpawnOptions{MaxAttempts: -1})
				return err
			}},
		{"QD005 retry kind", "QD005", []error{durable.ErrInvalidOptions},
			func(t *testing.T, c *durable.Client, tx pgx.Tx, q string) error {
				_, err := c.Spawn(ctx, q, "t", nil, &durable.SpawnOptions{RetryStrategy: &durable.RetryStrategy{Kind: "linear"}})
				return err
			}},
		{"QD005 negative base", "QD005", []error{durable.ErrInvalidOptions},
			func(t *testing.T, c *durable.Client, tx pgx.Tx, q string) error {
				_, err := c.Spawn(ctx, q, "t", nil, &durable.SpawnOptions{
					RetryStrategy: &durable.RetryStrategy{Kind: durable.RetryFixed, Base: -time.Second}})
				return err
			}},
		{"QD005 factor below 1", "QD005", []error{durable.ErrInvalidOptions},
			func(t *testing.T, c *durable.Client, tx pgx.Tx, q string) error {
				_, err := c.Spawn(ctx, q, "t", nil, &durable.SpawnOptions{
					RetryStrategy: &durable.RetryStrategy{Kind: durable.RetryExponential, Factor: 0.5}})
				return err
			}},
		{"QD005 a field the kind does not take", "QD005", []error{durable.ErrInvalidOptions},
			func(t *testing.T, c *durable.Client, tx pgx.Tx, q string) error {
				_, err := c.Spawn(ctx, q, "t", nil, &durable.SpawnOptions{
					RetryStrategy: &durable.RetryStrategy{Kind: durable.RetryNone, Max: time.Second}})
				return err
			}},
		{"QD006 empty worker id", "QD006", []error{durable.ErrInvalidArgument},
			func(t *testing.T, c *durable.Client, tx pgx.Tx, q string) error {
				_, err := c.ClaimTasks(ctx, q, "", time.Second, 1)
				return err
			}},
		{"QD006 claim timeout 0", "QD006", []error{durable.ErrInvalidArgument},
			func(t *testing.T, c *durable.Client, tx pgx.Tx, q string) error {
				_, err := c.ClaimTasks(ctx, q, "w", 0, 1)
				return err
			}},
		{"QD006 qty 0", "QD006", []error{durable.ErrInvalidArgument},
			func(t *testing.T, c *durable.Client, tx pgx.Tx, q string) error {
				_, err := c.ClaimTasks(ctx, q, "w", time.Second, 0)
				return err
			}},
		{"QD006 extend by 0", "QD006", []error{durable.ErrInvalidArgument},
			func(t *testing.T, c *durable.Client, tx pgx.Tx, q string) error {
				run := goClaim(t, c, q)
				_, err := c.ExtendClaim(ctx, q, run.RunID, 0)
				return err
			}},
		{"QD010 run not found", "QD010", []error{durable.ErrRunNotFound},
			func(t *testing.T, c *durable.Client, tx pgx.Tx, q string) error {
				return c.CompleteRun(ctx, q, durable.UUID{7}, "x")
			}},
		{"QD011 run completed", "QD011", []error{durable.ErrRunNotRunning},
			func(t *testing.T, c *durable.Client, tx pgx.Tx, q string) error {
				run := goClaim(t, c, q)
				require.NoError(t, c.CompleteRun(ctx, q, run.RunID, "x"))
				return c.FailRun(ctx, q, run.RunID, "late", time.Time{})
			}},
		{"QD012 lease lost", "QD012", []error{durable.ErrLeaseLost, durable.ErrRunNotRunning},
			func(t *testing.T, c *durable.Client, tx pgx.Tx, q string) error {
				run := goClaim(t, c, q)
				setNow(t, tx, t0.Add(time.Minute))
				_, err := c.ExtendClaim(ctx, q, run.RunID, time.Minute)
				return err
			}},
		{"QD013 task cancelled", "QD013", []error{durable.ErrTaskCancelled, durable.ErrRunNotRunning},
			func(t *testing.T, c *durable.Client, tx pgx.Tx, q string) error {
				run := goClaim(t, c, q)
				state, err := c.CancelTask(ctx, q, run.TaskID)
				require.NoError(t, err)
				require.Equal(t, durable.StateCancelled, state)
				return c.CompleteRun(ctx, q, run.RunID, "x")
			}},
		{"QD020 task not found (result)", "QD020", []error{durable.ErrTaskNotFound},
			func(t *testing.T, c *durable.Client, tx pgx.Tx, q string) error {
				_, err := c.GetTaskResult(ctx, q, durable.UUID{8})
				return err
			}},
		{"QD020 task not found (cancel)", "QD020", []error{durable.ErrTaskNotFound},
			func(t *testing.T, c *durable.Client, tx pgx.Tx, q string) error {
				_, err := c.CancelTask(ctx, q, durable.UUID{8})
				return err
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tx := testdb.Tx(t)
			setNow(t, tx, t0)
			c, err := durable.New(tx, nil)
			require.NoError(t, err)
			q := queueName()
			require.NoError(t, c.CreateQueue(ctx, q))
			err = tc.do(t, c, tx, q)
			de := requireSentinels(t, err, tc.code, tc.want...)
			require.NotEmpty(t, de.Message)
			var pgErr *pgconn.PgError
			require.True(t, errors.As(err, &pgErr), "a server error unwraps to *pgconn.PgError")
			require.Equal(t, tc.code, pgErr.Code)
			require.Contains(t, err.Error(), tc.code)
		})
	}
}

// goClaim spawns a task through the client and claims its run.
func goClaim(t *testing.T, c *durable.Client, q string) durable.ClaimedRun {
	t.Helper()
	ctx := context.Background()
	_, err := c.Spawn(ctx, q, "t", map[string]int{"n": 1}, nil)
	require.NoError(t, err)
	runs, err := c.ClaimTasks(ctx, q, "w", 30*time.Second, 1)
	require.NoError(t, err)
	require.Len(t, runs, 1)
	return runs[0]
}
