package durable_test

// Helpers shared by the SQL-semantics tests (spawn_test.go, lifecycle_test.go,
// badinput_test.go). They call the durable functions through plain SQL, move
// the fake clock, and read the queue's rows (through the views durable.t_<queue>
// and durable.r_<queue>, or the shared tables) to check invariants.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable"
)

// dbtx is what the helpers run on: a pgx.Tx, *pgx.Conn, *pgxpool.Conn or
// *pgxpool.Pool.
type dbtx = durable.DBTX

// t0 is the fake "now" most lifecycle tests start from.
var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

var queueSeq atomic.Int64

// queueName returns a queue name no other test of this binary uses, so that
// parallel transactions never wait for each other on durable.queues.
func queueName() string {
	return fmt.Sprintf("q%d", queueSeq.Add(1))
}

// newQueue creates a queue with a fresh name and returns the name.
func newQueue(t testing.TB, db dbtx) string {
	t.Helper()
	name := queueName()
	mustExec(t, db, "select durable.create_queue($1)", name)
	return name
}

func mustExec(t testing.TB, db dbtx, sql string, args ...any) {
	t.Helper()
	_, err := db.Exec(context.Background(), sql, args...)
	require.NoError(t, err, sql)
}

// str returns a pointer to s, for the nullable text and JSON arguments.
func str(s string) *string { return &s }

// spawnCall holds the arguments of durable.spawn_task.
type spawnCall struct {
	queue    string
	task     string
	params   *string // JSON text; nil passes SQL NULL
	onlyOnce bool
	key      *string // nil passes SQL NULL: no explicit key
	options  string  // JSON text; "" passes '{}'
}

// spawned is a row returned by durable.spawn_task.
type spawned struct {
	TaskID  durable.UUID
	RunID   durable.UUID
	Attempt int
	Created bool
	State   string
}

func trySpawn(ctx context.Context, db dbtx, c spawnCall) (spawned, error) {
	opts := c.options
	if opts == "" {
		opts = "{}"
	}
	var s spawned
	err := db.QueryRow(ctx,
		`select task_id, run_id, attempt, created, state
		   from durable.spawn_task($1, $2, $3::text::jsonb, $4, $5, $6::text::jsonb)`,
		c.queue, c.task, c.params, c.onlyOnce, c.key, opts,
	).Scan(&s.TaskID, &s.RunID, &s.Attempt, &s.Created, &s.State)
	return s, err
}

func spawn(t testing.TB, db dbtx, c spawnCall) spawned {
	t.Helper()
	s, err := trySpawn(context.Background(), db, c)
	require.NoError(t, err, "spawn_task(%+v)", c)
	require.False(t, s.TaskID.IsZero())
	require.False(t, s.RunID.IsZero())
	return s
}

// claimedRun is a row returned by durable.claim_task.
type claimedRun struct {
	RunID          durable.UUID
	TaskID         durable.UUID
	Attempt        int
	TaskName       string
	ClaimExpiresAt time.Time
}

func tryClaim(ctx context.Context, db dbtx, queue, worker string, timeout, qty int) ([]claimedRun, error) {
	rows, err := db.Query(ctx,
		`select run_id, task_id, attempt, task_name, claim_expires_at
		   from durable.claim_task($1, $2, $3, $4)`,
		queue, worker, timeout, qty)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (claimedRun, error) {
		var r claimedRun
		err := row.Scan(&r.RunID, &r.TaskID, &r.Attempt, &r.TaskName, &r.ClaimExpiresAt)
		return r, err
	})
}

func claim(t testing.TB, db dbtx, queue, worker string, timeout, qty int) []claimedRun {
	t.Helper()
	runs, err := tryClaim(context.Background(), db, queue, worker, timeout, qty)
	require.NoError(t, err)
	return runs
}

// claimOne claims exactly one run and returns it.
func claimOne(t testing.TB, db dbtx, queue string) claimedRun {
	t.Helper()
	runs := claim(t, db, queue, "w", 30, 1)
	require.Len(t, runs, 1)
	return runs[0]
}

func completeRun(t testing.TB, db dbtx, queue string, run durable.UUID, result string) {
	t.Helper()
	mustExec(t, db, "select durable.complete_run($1, $2, $3::text::jsonb)", queue, run, result)
}

func failRun(t testing.TB, db dbtx, queue string, run durable.UUID, reason string) {
	t.Helper()
	mustExec(t, db, "select durable.fail_run($1, $2, $3::text::jsonb)", queue, run, reason)
}

func cancelTask(t testing.TB, db dbtx, queue string, task durable.UUID) string {
	t.Helper()
	var state string
	require.NoError(t, db.QueryRow(context.Background(),
		"select durable.cancel_task($1, $2)", queue, task).Scan(&state))
	return state
}

// setNow moves durable.current_time() to ts for the session (on a pgx.Tx the
// setting is undone by the rollback at cleanup).
func setNow(t testing.TB, db dbtx, ts time.Time) {
	t.Helper()
	mustExec(t, db, "select set_config('durable.fake_now', $1, false)", ts.UTC().Format(time.RFC3339Nano))
}

func requireTime(t testing.TB, want, got time.Time, msgAndArgs ...any) {
	t.Helper()
	require.True(t, want.Equal(got), "want %s, got %s %v", want.UTC(), got.UTC(), fmt.Sprint(msgAndArgs...))
}

// requireSQLState asserts that err is a server error with SQLSTATE code.
func requireSQLState(t testing.TB, err error, code string) *pgconn.PgError {
	t.Helper()
	require.Error(t, err, "want SQLSTATE %s", code)
	var pgErr *pgconn.PgError
	require.True(t, errors.As(err, &pgErr), "want SQLSTATE %s, got %v", code, err)
	require.Equal(t, code, pgErr.Code, "message: %s", pgErr.Message)
	return pgErr
}

// writes counts the rows this transaction has inserted, updated or deleted in
// the durable schema's tables and in pg_class, including the writes of
// subtransactions that were rolled back. An unchanged count across a failed
// call proves that the call wrote nothing before it raised.
func writes(t testing.TB, db dbtx) int64 {
	t.Helper()
	var n int64
	require.NoError(t, db.QueryRow(context.Background(), `
		select coalesce(sum(pg_stat_get_xact_tuples_inserted(c.oid)
		                  + pg_stat_get_xact_tuples_updated(c.oid)
		                  + pg_stat_get_xact_tuples_deleted(c.oid)), 0)::bigint
		  from pg_class c
		 where (c.relnamespace = 'durable'::regnamespace and c.relkind = 'r')
		    or c.oid = 'pg_catalog.pg_class'::regclass`).Scan(&n))
	return n
}

// requireFails runs sql in a savepoint of tx, asserts that it fails with
// SQLSTATE code having written nothing, and rolls back to the savepoint so
// that tx stays usable.
func requireFails(t testing.TB, tx pgx.Tx, code, sql string, args ...any) *pgconn.PgError {
	t.Helper()
	ctx := context.Background()
	before := writes(t, tx)
	sp, err := tx.Begin(ctx)
	require.NoError(t, err)
	_, err = sp.Exec(ctx, sql, args...)
	require.NoError(t, sp.Rollback(ctx))
	pgErr := requireSQLState(t, err, code)
	require.Equal(t, before, writes(t, tx), "%s wrote rows before raising %s", sql, code)
	return pgErr
}

func tableName(prefix, queue string) string {
	return pgx.Identifier{"durable", prefix + queue}.Sanitize()
}

// countRows counts the rows of durable.<prefix><queue> that match where.
func countRows(t testing.TB, db dbtx, prefix, queue, where string, args ...any) int {
	t.Helper()
	if where == "" {
		where = "true"
	}
	var n int
	require.NoError(t, db.QueryRow(context.Background(),
		fmt.Sprintf("select count(*) from %s where %s", tableName(prefix, queue), where), args...).Scan(&n))
	return n
}

func countTasks(t testing.TB, db dbtx, queue string) int {
	t.Helper()
	return countRows(t, db, "t_", queue, "")
}

func countRuns(t testing.TB, db dbtx, queue string) int {
	t.Helper()
	return countRows(t, db, "r_", queue, "")
}

// queueSnapshot returns every task and run row of the queue with its xmin, as
// JSON text: equal snapshots mean no row was written in between.
func queueSnapshot(t testing.TB, db dbtx, queue string) string {
	t.Helper()
	var s string
	require.NoError(t, db.QueryRow(context.Background(), `
		select jsonb_build_object(
		  'tasks', (select coalesce(jsonb_agg(jsonb_build_object('row', to_jsonb(t), 'xmin', t.xmin::text)
		                                      order by t.task_id), '[]') from durable.tasks t where t.queue_name = $1),
		  'runs', (select coalesce(jsonb_agg(jsonb_build_object('row', to_jsonb(r), 'xmin', r.xmin::text)
		                                     order by r.run_id), '[]') from durable.runs r where r.queue_name = $1))::text`,
		queue).Scan(&s))
	return s
}

// taskRows returns a task's row and its runs' rows with their xmin, as JSON
// text: equal texts mean that nothing was written to them in between.
func taskRows(t testing.TB, db dbtx, q string, task durable.UUID) string {
	t.Helper()
	var s string
	require.NoError(t, db.QueryRow(context.Background(), `
		select jsonb_build_object(
		  'task', (select jsonb_build_object('row', to_jsonb(t), 'xmin', t.xmin::text)
		             from durable.tasks t where t.task_id = $1 and t.queue_name = $2),
		  'runs', (select jsonb_agg(jsonb_build_object('row', to_jsonb(r), 'xmin', r.xmin::text) order by r.attempt)
		             from durable.runs r where r.task_id = $1 and r.queue_name = $2))::text`,
		task, q).Scan(&s))
	return s
}

// taskField reads one column of a task row as text.
func taskField(t testing.TB, db dbtx, queue string, task durable.UUID, column string) *string {
	t.Helper()
	var v *string
	require.NoError(t, db.QueryRow(context.Background(),
		fmt.Sprintf("select %s::text from %s where task_id = $1", pgx.Identifier{column}.Sanitize(), tableName("t_", queue)),
		task).Scan(&v))
	return v
}

// runOf returns the run of the task with the given attempt number.
func runOf(t testing.TB, db dbtx, queue string, task durable.UUID, attempt int) (run durable.UUID, state string, availableAt time.Time) {
	t.Helper()
	require.NoError(t, db.QueryRow(context.Background(),
		fmt.Sprintf("select run_id, state, available_at from %s where task_id = $1 and attempt = $2", tableName("r_", queue)),
		task, attempt).Scan(&run, &state, &availableAt))
	return run, state, availableAt
}

// mustUUID runs a query that returns one uuid.
func mustUUID(t testing.TB, db dbtx, sql string, args ...any) *durable.UUID {
	t.Helper()
	var u durable.UUID
	require.NoError(t, db.QueryRow(context.Background(), sql, args...).Scan(&u))
	return &u
}

// jsonString marshals v.
func jsonString(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}

// availableAtOption is a spawn options object with available_at s.
func availableAtOption(s string) string { return fmt.Sprintf(`{"available_at": %q}`, s) }

// taskOutcome is a row of durable.get_task_result.
type taskOutcome struct {
	state           string
	result, failure *string
}

// taskResult calls durable.get_task_result.
func taskResult(t testing.TB, db dbtx, queue string, task durable.UUID) taskOutcome {
	t.Helper()
	var r taskOutcome
	var id durable.UUID
	require.NoError(t, db.QueryRow(context.Background(),
		"select task_id, state, result::text, failure_reason::text from durable.get_task_result($1, $2)",
		queue, task).Scan(&id, &r.state, &r.result, &r.failure))
	require.Equal(t, task, id)
	return r
}

// jsonField returns doc's field as JSON text.
func jsonField(t testing.TB, doc, field string) string {
	t.Helper()
	var m map[string]json.RawMessage
	require.NoError(t, json.Unmarshal([]byte(doc), &m))
	return string(m[field])
}

// listQueues calls durable.list_queues.
func listQueues(t testing.TB, db dbtx) []string {
	t.Helper()
	rows, err := db.Query(context.Background(), "select queue_name from durable.list_queues()")
	require.NoError(t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return names
}

// mustInt parses a decimal integer.
func mustInt(t testing.TB, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	require.NoError(t, err)
	return n
}

// acquireConns takes n connections of pool, released at cleanup.
func acquireConns(t testing.TB, pool *pgxpool.Pool, n int) []*pgxpool.Conn {
	t.Helper()
	conns := make([]*pgxpool.Conn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		go func() { // connect in parallel: each new backend takes a while
			defer wg.Done()
			conns[i], errs[i] = pool.Acquire(context.Background())
		}()
	}
	wg.Wait()
	for i, c := range conns {
		require.NoError(t, errs[i])
		t.Cleanup(c.Release)
	}
	return conns
}

func backendPID(t testing.TB, db dbtx) uint32 {
	t.Helper()
	var pid uint32
	require.NoError(t, db.QueryRow(context.Background(), "select pg_backend_pid()").Scan(&pid))
	return pid
}

// waitBlockedBy waits until backend pid is waiting for a lock held by
// backend holder.
func waitBlockedBy(t testing.TB, observer dbtx, pid, holder uint32) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var blocked bool
		require.NoError(t, observer.QueryRow(context.Background(),
			"select $2::int = any (pg_blocking_pids($1))", int(pid), int(holder)).Scan(&blocked))
		if blocked {
			return
		}
		require.True(t, time.Now().Before(deadline), "backend %d never waited for backend %d", pid, holder)
		time.Sleep(5 * time.Millisecond)
	}
}

// together runs f(0) ... f(n-1) in n goroutines released at the same moment
// and waits for all of them.
func together(n int, f func(i int)) {
	var ready, done sync.WaitGroup
	start := make(chan struct{})
	ready.Add(n)
	done.Add(n)
	for i := 0; i < n; i++ {
		go func() {
			defer done.Done()
			ready.Done()
			<-start
			f(i)
		}()
	}
	ready.Wait()
	close(start)
	done.Wait()
}
