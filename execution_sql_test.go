package durable_test

// Durable-execution tests: checkpoints, durable sleeps, events, child tasks,
// cancellation deadlines (max_delay, max_duration) and retry_task, called
// through SQL the way a psql user calls them, mostly under the fake clock.
// Each rule is stated in the header comment of its function in
// sql/functions; the interleaving tests force the racing orders with two
// connections and pg_blocking_pids instead of hoping for them.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/internal/testdb"
)

// exStarted is a task whose first run a worker has claimed.
type exStarted struct {
	task, run durable.UUID
}

// exStart spawns a task with options (JSON text, "" for none) and claims its
// run, which must be the only ready run of the queue.
func exStart(t testing.TB, db dbtx, q, options string) exStarted {
	t.Helper()
	s := spawn(t, db, spawnCall{queue: q, task: "t", params: str(`{}`), options: options})
	r := claimOne(t, db, q)
	require.Equal(t, s.RunID, r.RunID, "claimed another task's run")
	return exStarted{task: s.TaskID, run: r.RunID}
}

// exCheckpoint is a row of durable.get_task_checkpoint_states.
type exCheckpoint struct {
	Step      string
	State     string
	Run       durable.UUID
	Attempt   int
	UpdatedAt time.Time
}

func exCheckpoints(t testing.TB, db dbtx, q string, task, run durable.UUID) []exCheckpoint {
	t.Helper()
	rows, err := db.Query(context.Background(),
		`select step_name, state::text, run_id, attempt, updated_at
		   from durable.get_task_checkpoint_states($1, $2, $3)`, q, task, run)
	require.NoError(t, err)
	cps, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (exCheckpoint, error) {
		var c exCheckpoint
		err := row.Scan(&c.Step, &c.State, &c.Run, &c.Attempt, &c.UpdatedAt)
		return c, err
	})
	require.NoError(t, err)
	return cps
}

// exStoredCheckpoint reads a step's row of durable.c_<queue> directly.
func exStoredCheckpoint(t testing.TB, db dbtx, q string, task durable.UUID, step string) (state string, run durable.UUID, attempt int) {
	t.Helper()
	require.NoError(t, db.QueryRow(context.Background(), fmt.Sprintf(
		"select state::text, run_id, attempt from %s where task_id = $1 and step_name = $2", tableName("c_", q)),
		task, step).Scan(&state, &run, &attempt))
	return state, run, attempt
}

func exSetCheckpoint(t testing.TB, db dbtx, q string, task, run durable.UUID, step, state string) {
	t.Helper()
	mustExec(t, db, "select durable.set_task_checkpoint_state($1, $2, $3, $4::text::jsonb, $5)",
		q, task, step, state, run)
}

// exAnswer is a row of durable.await_event or durable.await_task_result.
type exAnswer struct {
	Status  string
	Payload *string // JSON text, nil for SQL NULL
}

func exTryAwaitEvent(ctx context.Context, db dbtx, q string, s exStarted, step, event string, timeout *int) (exAnswer, error) {
	var a exAnswer
	err := db.QueryRow(ctx,
		"select status, payload::text from durable.await_event($1, $2, $3, $4, $5, $6)",
		q, s.task, s.run, step, event, timeout).Scan(&a.Status, &a.Payload)
	return a, err
}

func exAwaitEvent(t testing.TB, db dbtx, q string, s exStarted, step, event string, timeout *int) exAnswer {
	t.Helper()
	a, err := exTryAwaitEvent(context.Background(), db, q, s, step, event, timeout)
	require.NoError(t, err)
	return a
}

func exTryAwaitTask(ctx context.Context, db dbtx, q string, s exStarted, step string, child durable.UUID) (exAnswer, error) {
	var a exAnswer
	err := db.QueryRow(ctx,
		"select status, payload::text from durable.await_task_result($1, $2, $3, $4, $5)",
		q, s.task, s.run, step, child).Scan(&a.Status, &a.Payload)
	return a, err
}

func exAwaitTask(t testing.TB, db dbtx, q string, s exStarted, step string, child durable.UUID) exAnswer {
	t.Helper()
	a, err := exTryAwaitTask(context.Background(), db, q, s, step, child)
	require.NoError(t, err)
	return a
}

func exSleepUntil(t testing.TB, db dbtx, q string, s exStarted, step string, wake time.Time) bool {
	t.Helper()
	var suspended bool
	require.NoError(t, db.QueryRow(context.Background(),
		"select durable.sleep_until($1, $2, $3, $4, $5)", q, s.task, s.run, step, wake).Scan(&suspended))
	return suspended
}

func exEmit(t testing.TB, db dbtx, q, event, payload string) bool {
	t.Helper()
	var stored bool
	require.NoError(t, db.QueryRow(context.Background(),
		"select durable.emit_event($1, $2, $3::text::jsonb)", q, event, payload).Scan(&stored))
	return stored
}

// exRunRow is what r_<queue> says about one run.
type exRunRow struct {
	Task        durable.UUID
	State       string
	AvailableAt time.Time // zero when Forever
	Forever     bool      // available_at is 'infinity': only a wake-up makes it due
	Expires     *time.Time
}

func exRun(t testing.TB, db dbtx, q string, run durable.UUID) exRunRow {
	t.Helper()
	var r exRunRow
	var at *time.Time
	require.NoError(t, db.QueryRow(context.Background(), fmt.Sprintf(
		`select task_id, state, nullif(available_at, 'infinity'), available_at = 'infinity', claim_expires_at
		   from %s where run_id = $1`, tableName("r_", q)),
		run).Scan(&r.Task, &r.State, &at, &r.Forever, &r.Expires))
	if at != nil {
		r.AvailableAt = *at
	}
	return r
}

// exReason returns a task's failure_reason as JSON text ("" when NULL).
func exReason(t testing.TB, db dbtx, q string, task durable.UUID) string {
	t.Helper()
	if r := taskField(t, db, q, task, "failure_reason"); r != nil {
		return *r
	}
	return ""
}

func exIntp(n int) *int { return &n }

// exKeyFree asserts that no live task holds key k of task name "t" (by
// spawning a far-future task with it).
func exKeyFree(t testing.TB, db dbtx, q, k string) {
	t.Helper()
	s := spawn(t, db, spawnCall{queue: q, task: "t", params: str(`{}`), key: str(k),
		options: availableAtOption("2100-01-01T00:00:00Z")})
	require.True(t, s.Created, "key %q is still held", k)
}

// TestExecCheckpointRoundTrip: what set_task_checkpoint_state writes,
// get_task_checkpoint_states returns with the writing run and attempt; the
// same attempt overwrites its step; a later attempt reads the earlier
// attempt's steps and overwrites them as its own.
func TestExecCheckpointRoundTrip(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	s := exStart(t, tx, q, `{"retry_strategy": {"kind": "none"}}`)
	require.Empty(t, exCheckpoints(t, tx, q, s.task, s.run))

	exSetCheckpoint(t, tx, q, s.task, s.run, "fetch", `{"n": 1, "list": [1, 2]}`)
	mustExec(t, tx, "select durable.set_task_checkpoint_state($1, $2, 'nothing', null, $3)", q, s.task, s.run)
	cps := exCheckpoints(t, tx, q, s.task, s.run)
	require.Len(t, cps, 2)
	require.Equal(t, "fetch", cps[0].Step)
	require.JSONEq(t, `{"n": 1, "list": [1, 2]}`, cps[0].State)
	require.Equal(t, "nothing", cps[1].Step)
	require.Equal(t, "null", cps[1].State, "SQL NULL is stored as JSON null")
	for _, c := range cps {
		require.Equal(t, s.run, c.Run)
		require.Equal(t, 1, c.Attempt)
		requireTime(t, t0, c.UpdatedAt)
	}

	setNow(t, tx, t0.Add(time.Second))
	exSetCheckpoint(t, tx, q, s.task, s.run, "fetch", `"second write"`)
	state, run, attempt := exStoredCheckpoint(t, tx, q, s.task, "fetch")
	require.Equal(t, `"second write"`, state)
	require.Equal(t, s.run, run)
	require.Equal(t, 1, attempt)
	require.Equal(t, 2, countRows(t, tx, "c_", q, "task_id = $1", s.task), "an overwrite adds no row")

	// Attempt 2 replays: it sees attempt 1's steps, then rewrites one.
	failRun(t, tx, q, s.run, `{"message": "boom"}`)
	r2 := claimOne(t, tx, q)
	require.Equal(t, 2, r2.Attempt)
	s2 := exStarted{task: s.task, run: r2.RunID}
	cps = exCheckpoints(t, tx, q, s.task, s2.run)
	require.Len(t, cps, 2)
	require.Equal(t, []string{"nothing", "fetch"}, []string{cps[0].Step, cps[1].Step}, "ordered by updated_at")
	require.Equal(t, s.run, cps[1].Run)
	require.Equal(t, 1, cps[1].Attempt)

	setNow(t, tx, t0.Add(2*time.Second))
	exSetCheckpoint(t, tx, q, s.task, s2.run, "fetch", `"attempt 2"`)
	state, run, attempt = exStoredCheckpoint(t, tx, q, s.task, "fetch")
	require.Equal(t, `"attempt 2"`, state)
	require.Equal(t, s2.run, run)
	require.Equal(t, 2, attempt)
	// The old run may still read (a replay needs no lease), but not write.
	require.Len(t, exCheckpoints(t, tx, q, s.task, s.run), 2)
}

// TestExecCheckpointOlderAttemptNeverOverwrites: once attempt 2 has written a
// step, attempt 1's run cannot write it (nor any other step): its call is
// refused, and even a direct upsert with attempt 1 leaves attempt 2's row, by
// the guard in _write_checkpoint.
func TestExecCheckpointOlderAttemptNeverOverwrites(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		code string
		// stale ends attempt 1 so that attempt 2 is claimed, at the fake time it sets.
		stale func(t *testing.T, tx pgx.Tx, q string, run durable.UUID)
	}{
		{"lease expired and recovered", "QD012", func(t *testing.T, tx pgx.Tx, q string, run durable.UUID) {
			setNow(t, tx, t0.Add(31*time.Second))
		}},
		{"failed by fail_run", "QD011", func(t *testing.T, tx pgx.Tx, q string, run durable.UUID) {
			failRun(t, tx, q, run, `{"message": "boom"}`)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tx := testdb.Tx(t)
			setNow(t, tx, t0)
			q := newQueue(t, tx)
			s1 := exStart(t, tx, q, `{"retry_strategy": {"kind": "none"}}`)
			exSetCheckpoint(t, tx, q, s1.task, s1.run, "a", `{"by": 1}`)
			tc.stale(t, tx, q, s1.run)
			r2 := claimOne(t, tx, q)
			require.Equal(t, 2, r2.Attempt)
			exSetCheckpoint(t, tx, q, s1.task, r2.RunID, "a", `{"by": 2}`)

			for _, step := range []string{"a", "b"} {
				e := requireFails(t, tx, tc.code,
					"select durable.set_task_checkpoint_state($1, $2, $3, '{\"by\": 1}', $4)", q, s1.task, step, s1.run)
				require.Contains(t, e.Message, s1.run.String())
			}
			state, run, attempt := exStoredCheckpoint(t, tx, q, s1.task, "a")
			require.JSONEq(t, `{"by": 2}`, state)
			require.Equal(t, r2.RunID, run)
			require.Equal(t, 2, attempt)
			require.Zero(t, countRows(t, tx, "c_", q, "step_name = 'b'"))

			// The upsert itself refuses an older attempt, writing nothing.
			before := writes(t, tx)
			mustExec(t, tx, "select durable._write_checkpoint($1, $2, 'a', '{\"by\": 1}', $3, 1, $4)",
				q, s1.task, s1.run, t0.Add(time.Hour))
			require.Equal(t, before, writes(t, tx), "the upsert of an older attempt wrote")
			state, run, attempt = exStoredCheckpoint(t, tx, q, s1.task, "a")
			require.JSONEq(t, `{"by": 2}`, state)
			require.Equal(t, r2.RunID, run)
			require.Equal(t, 2, attempt)
			// ... while the same attempt still overwrites.
			mustExec(t, tx, "select durable._write_checkpoint($1, $2, 'a', '{\"by\": 2.1}', $3, 2, $4)",
				q, s1.task, r2.RunID, t0.Add(time.Hour))
			state, _, _ = exStoredCheckpoint(t, tx, q, s1.task, "a")
			require.JSONEq(t, `{"by": 2.1}`, state)
		})
	}
}

// exCalls are the durable-execution calls of a running run; $1 queue, $2
// task, $3 run, $4 step and, for await_task_result, $5 the task to await.
var exCalls = []struct {
	name      string
	sql       string
	awaitTask bool
}{
	{"set_task_checkpoint_state", "select durable.set_task_checkpoint_state($1, $2, $4, '1', $3)", false},
	{"set_task_checkpoint_state with extend", "select durable.set_task_checkpoint_state($1, $2, $4, '1', $3, 60)", false},
	{"sleep_until", "select durable.sleep_until($1, $2, $3, $4, '2100-01-01T00:00:00Z')", false},
	{"await_event", "select * from durable.await_event($1, $2, $3, $4, 'ev', 10)", false},
	{"await_task_result", "select * from durable.await_task_result($1, $2, $3, $4, $5)", true},
}

// TestExecRunMustBeRunning: checkpoints, sleeps and awaits are refused, with
// the SQLSTATE that says why and nothing written, unless the run is the
// task's running run with a live lease.
func TestExecRunMustBeRunning(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		code string
		// setup returns the task and the run to act as; the clock starts at t0.
		setup func(t *testing.T, tx pgx.Tx, q string) exStarted
	}{
		{"run of another task", "QD010", func(t *testing.T, tx pgx.Tx, q string) exStarted {
			a := exStart(t, tx, q, "")
			b := exStart(t, tx, q, "")
			return exStarted{task: a.task, run: b.run}
		}},
		{"unknown run", "QD010", func(t *testing.T, tx pgx.Tx, q string) exStarted {
			a := exStart(t, tx, q, "")
			return exStarted{task: a.task, run: durable.UUID{9, 9}}
		}},
		{"lease expired", "QD012", func(t *testing.T, tx pgx.Tx, q string) exStarted {
			a := exStart(t, tx, q, "")
			setNow(t, tx, t0.Add(30*time.Second)) // claim_expires_at is t0+30s
			return a
		}},
		{"task cancelled", "QD013", func(t *testing.T, tx pgx.Tx, q string) exStarted {
			a := exStart(t, tx, q, "")
			require.Equal(t, "cancelled", cancelTask(t, tx, q, a.task))
			return a
		}},
		{"run completed", "QD011", func(t *testing.T, tx pgx.Tx, q string) exStarted {
			a := exStart(t, tx, q, "")
			completeRun(t, tx, q, a.run, `"done"`)
			return a
		}},
		{"run pending, never claimed", "QD011", func(t *testing.T, tx pgx.Tx, q string) exStarted {
			s := spawn(t, tx, spawnCall{queue: q, task: "t"})
			return exStarted{task: s.TaskID, run: s.RunID}
		}},
		{"run sleeping", "QD011", func(t *testing.T, tx pgx.Tx, q string) exStarted {
			a := exStart(t, tx, q, "")
			require.True(t, exSleepUntil(t, tx, q, a, "nap", t0.Add(time.Hour)))
			return a
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tx := testdb.Tx(t)
			setNow(t, tx, t0)
			q := newQueue(t, tx)
			s := tc.setup(t, tx, q)
			other := spawn(t, tx, spawnCall{queue: q, task: "other", options: availableAtOption("2100-01-01T00:00:00Z")})
			before := queueSnapshot(t, tx, q)
			for _, c := range exCalls {
				args := []any{q, s.task, s.run, "fresh-step"}
				if c.awaitTask {
					args = append(args, other.TaskID)
				}
				e := requireFails(t, tx, tc.code, c.sql, args...)
				require.Contains(t, e.Message, s.run.String(), c.name)
			}
			require.Equal(t, before, queueSnapshot(t, tx, q))
			require.Zero(t, countRows(t, tx, "c_", q, "step_name = 'fresh-step'"))
			require.Zero(t, countRows(t, tx, "w_", q, ""))
		})
	}
}

// TestExecArgumentsRefused: empty steps and out-of-range arguments fail with
// QD006 (QD007 for event names, QD020 for an unknown task to await) and
// write nothing, even for a run that could write.
func TestExecArgumentsRefused(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	s := exStart(t, tx, q, "")
	other := spawn(t, tx, spawnCall{queue: q, task: "other", options: availableAtOption("2100-01-01T00:00:00Z")})
	run := []any{q, s.task, s.run}
	with := func(extra ...any) []any { return append(slices.Clone(run), extra...) }
	cases := []struct {
		name, code, sql string
		args            []any
	}{
		{"checkpoint empty step", "QD006", "select durable.set_task_checkpoint_state($1, $2, '', '1', $3)", run},
		{"checkpoint NULL step", "QD006", "select durable.set_task_checkpoint_state($1, $2, null, '1', $3)", run},
		{"checkpoint extend_claim_by 0", "QD006", "select durable.set_task_checkpoint_state($1, $2, 's', '1', $3, 0)", run},
		{"checkpoint extend_claim_by -5", "QD006", "select durable.set_task_checkpoint_state($1, $2, 's', '1', $3, -5)", run},
		{"sleep empty step", "QD006", "select durable.sleep_until($1, $2, $3, '', '2100-01-01Z')", run},
		{"sleep NULL step", "QD006", "select durable.sleep_until($1, $2, $3, null, '2100-01-01Z')", run},
		{"sleep NULL wake time", "QD006", "select durable.sleep_until($1, $2, $3, 's', null)", run},
		{"await_event empty step", "QD006", "select * from durable.await_event($1, $2, $3, '', 'ev')", run},
		{"await_event negative timeout", "QD006", "select * from durable.await_event($1, $2, $3, 's', 'ev', -1)", run},
		{"await_event empty name", "QD007", "select * from durable.await_event($1, $2, $3, 's', '')", run},
		{"await_task_result empty step", "QD006", "select * from durable.await_task_result($1, $2, $3, '', $4)", with(other.TaskID)},
		{"await_task_result NULL task", "QD006", "select * from durable.await_task_result($1, $2, $3, 's', null)", run},
		{"await_task_result negative timeout", "QD006", "select * from durable.await_task_result($1, $2, $3, 's', $4, -1)", with(other.TaskID)},
		{"await_task_result unknown task", "QD020", "select * from durable.await_task_result($1, $2, $3, 's', $4)", with(durable.UUID{4, 4})},
	}
	before := queueSnapshot(t, tx, q)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { requireFails(t, tx, tc.code, tc.sql, tc.args...) })
	}
	require.Equal(t, before, queueSnapshot(t, tx, q))
	require.Zero(t, countRows(t, tx, "c_", q, ""))

	// get_task_checkpoint_states checks the run too.
	exSetCheckpoint(t, tx, q, s.task, s.run, "s", `1`)
	requireFails(t, tx, "QD010", "select * from durable.get_task_checkpoint_states($1, $2, $3)", q, s.task, other.RunID)
	requireFails(t, tx, "QD010", "select * from durable.get_task_checkpoint_states($1, $2, $3)", q, s.task, durable.UUID{5})
	requireFails(t, tx, "QD010", "select * from durable.get_task_checkpoint_states($1, $2, $3)", q, other.TaskID, s.run)
}

// TestExecCheckpointExtendsClaim: extend_claim_by renews the lease from now,
// so the run may write past its first expiry, and no claim recovers it until
// the new expiry.
func TestExecCheckpointExtendsClaim(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	s := exStart(t, tx, q, "") // lease until t0+30s
	setNow(t, tx, t0.Add(20*time.Second))
	mustExec(t, tx, "select durable.set_task_checkpoint_state($1, $2, 'a', '1', $3, 120)", q, s.task, s.run)
	requireTime(t, t0.Add(140*time.Second), *exRun(t, tx, q, s.run).Expires)

	setNow(t, tx, t0.Add(139*time.Second))
	require.Empty(t, claim(t, tx, q, "thief", 30, 1), "a renewed lease was recovered")
	exSetCheckpoint(t, tx, q, s.task, s.run, "b", `2`)
	requireTime(t, t0.Add(140*time.Second), *exRun(t, tx, q, s.run).Expires, "a write without extend_claim_by keeps the lease")

	setNow(t, tx, t0.Add(140*time.Second))
	requireFails(t, tx, "QD012", "select durable.set_task_checkpoint_state($1, $2, 'c', '3', $3, 120)", q, s.task, s.run)
	require.Zero(t, countRows(t, tx, "c_", q, "step_name = 'c'"))
}

// TestExecCheckpointManyStepsAndLargeState: 60 steps come back in the order
// they were written (not by name), and a 1 MB state round-trips intact.
func TestExecCheckpointManyStepsAndLargeState(t *testing.T) {
	t.Parallel()
	const steps = 60
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	s := exStart(t, tx, q, `{"retry_strategy": {"kind": "none"}}`)
	var want []string
	for i := 0; i < steps; i++ {
		setNow(t, tx, t0.Add(time.Duration(i)*time.Millisecond))
		step := fmt.Sprintf("step-%03d", steps-i) // names sort opposite to write order
		exSetCheckpoint(t, tx, q, s.task, s.run, step, fmt.Sprintf(`{"i": %d}`, i))
		want = append(want, step)
	}
	blob := strings.Repeat("0123456789abcdef", 1<<16) // 1 MiB
	big := fmt.Sprintf(`{"blob": %q, "tail": [1, 2, 3]}`, blob)
	setNow(t, tx, t0.Add(time.Second))
	exSetCheckpoint(t, tx, q, s.task, s.run, "big", big)
	want = append(want, "big")

	// A later attempt reads them all.
	failRun(t, tx, q, s.run, `{}`)
	r2 := claimOne(t, tx, q)
	cps := exCheckpoints(t, tx, q, s.task, r2.RunID)
	require.Len(t, cps, steps+1)
	var got []string
	for i, c := range cps {
		got = append(got, c.Step)
		if i < steps {
			require.JSONEq(t, fmt.Sprintf(`{"i": %d}`, i), c.State)
		}
	}
	require.Equal(t, want, got)
	require.JSONEq(t, big, cps[steps].State)
	require.Len(t, jsonField(t, cps[steps].State, "blob"), len(blob)+2)
}

// TestExecSleepUntil: a sleep in the future suspends the run (run and task
// sleeping, lease released), the task keeps its key, the same run is claimed
// again at the wake time, and its replay keeps the first recorded wake time.
// A wake time already passed suspends nothing.
func TestExecSleepUntil(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	call := spawnCall{queue: q, task: "t", params: str(`{}`), key: str("k")}
	sp := spawn(t, tx, call)
	r := claimOne(t, tx, q)
	s := exStarted{task: sp.TaskID, run: r.RunID}
	wake := t0.Add(time.Hour)

	require.True(t, exSleepUntil(t, tx, q, s, "nap", wake))
	run := exRun(t, tx, q, s.run)
	require.Equal(t, "sleeping", run.State)
	requireTime(t, wake, run.AvailableAt)
	require.Nil(t, run.Expires, "the lease is released")
	require.Equal(t, "sleeping", *taskField(t, tx, q, s.task, "state"))
	state, _, _ := exStoredCheckpoint(t, tx, q, s.task, "nap")
	requireTime(t, wake, exTime(t, jsonField(t, state, "wake_at")))

	d := spawn(t, tx, call)
	require.False(t, d.Created, "a sleeping task holds its key")
	require.Equal(t, s.task, d.TaskID)
	require.Equal(t, s.run, d.RunID)
	require.Equal(t, "sleeping", d.State)

	setNow(t, tx, wake.Add(-time.Millisecond))
	require.Empty(t, claim(t, tx, q, "w", 30, 1))
	setNow(t, tx, wake)
	again := claimOne(t, tx, q)
	require.Equal(t, s.run, again.RunID, "the same run wakes")
	require.Equal(t, 1, again.Attempt)

	// The replay passes a later time (say, now + 1h again): the recorded one wins.
	require.False(t, exSleepUntil(t, tx, q, s, "nap", wake.Add(time.Hour)))
	state, _, _ = exStoredCheckpoint(t, tx, q, s.task, "nap")
	requireTime(t, wake, exTime(t, jsonField(t, state, "wake_at")))
	require.Equal(t, "running", exRun(t, tx, q, s.run).State)

	// Wake times not after now suspend nothing.
	before := exRun(t, tx, q, s.run)
	for i, at := range []time.Time{wake.Add(-time.Minute), wake} {
		require.False(t, exSleepUntil(t, tx, q, s, fmt.Sprintf("past-%d", i), at))
	}
	require.Equal(t, before, exRun(t, tx, q, s.run))
	require.Equal(t, "running", *taskField(t, tx, q, s.task, "state"))
	completeRun(t, tx, q, s.run, `"rested"`)
}

// TestExecSleepReplayBeforeWakeTime: a later attempt that replays a sleep
// before its recorded wake time sleeps until that time, not until the time
// it passes now.
func TestExecSleepReplayBeforeWakeTime(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	s := exStart(t, tx, q, "")
	wake := t0.Add(time.Hour)
	require.True(t, exSleepUntil(t, tx, q, s, "nap", wake))
	require.Equal(t, "cancelled", cancelTask(t, tx, q, s.task))

	setNow(t, tx, t0.Add(10*time.Minute))
	var r2 durable.UUID
	require.NoError(t, tx.QueryRow(context.Background(), "select run_id from durable.retry_task($1, $2)", q, s.task).Scan(&r2))
	require.Equal(t, r2, claimOne(t, tx, q).RunID)
	s2 := exStarted{task: s.task, run: r2}
	require.True(t, exSleepUntil(t, tx, q, s2, "nap", t0.Add(70*time.Minute)))
	requireTime(t, wake, exRun(t, tx, q, r2).AvailableAt)
}

// exTime parses a JSON string holding a timestamp.
func exTime(t testing.TB, js string) time.Time {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, strings.Trim(js, `"`))
	require.NoError(t, err)
	return ts
}

// TestExecEventBeforeAwait: an event emitted before the wait is received at
// once, and the answer is the step's checkpoint.
func TestExecEventBeforeAwait(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	require.True(t, exEmit(t, tx, q, "paid", `{"amount": 42}`))
	s := exStart(t, tx, q, "")
	a := exAwaitEvent(t, tx, q, s, "wait-paid", "paid", exIntp(10))
	require.Equal(t, "received", a.Status)
	require.JSONEq(t, `{"amount": 42}`, *a.Payload)
	state, run, attempt := exStoredCheckpoint(t, tx, q, s.task, "wait-paid")
	require.JSONEq(t, `{"status": "received", "payload": {"amount": 42}}`, state)
	require.Equal(t, s.run, run)
	require.Equal(t, 1, attempt)
	require.Equal(t, "running", exRun(t, tx, q, s.run).State)
	require.Zero(t, countRows(t, tx, "w_", q, ""))

	// A JSON null payload (SQL NULL too) is an event like any other.
	require.True(t, exEmit(t, tx, q, "nothing", `null`))
	mustExec(t, tx, "select durable.emit_event($1, 'sql-null', null)", q)
	for _, ev := range []string{"nothing", "sql-null"} {
		a = exAwaitEvent(t, tx, q, s, "wait-"+ev, ev, nil)
		require.Equal(t, "received", a.Status)
		require.Equal(t, "null", *a.Payload)
	}
	require.Equal(t, "running", exRun(t, tx, q, s.run).State)
}

// TestExecAwaitThenEmit: a wait for an event not yet emitted suspends the run
// until the emit, which makes it claimable at once; its replay receives the
// payload. The first emit wins: later ones return false and change nothing.
func TestExecAwaitThenEmit(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	s := exStart(t, tx, q, "")
	a := exAwaitEvent(t, tx, q, s, "step", "go", nil)
	require.Equal(t, exAnswer{Status: "suspended"}, a)
	run := exRun(t, tx, q, s.run)
	require.Equal(t, "sleeping", run.State)
	require.True(t, run.Forever, "no timeout: only the event wakes it")
	require.Nil(t, run.Expires)
	require.Equal(t, "sleeping", *taskField(t, tx, q, s.task, "state"))
	require.Equal(t, 1, countRows(t, tx, "w_", q, "run_id = $1 and event_name = 'go'", s.run))
	require.Zero(t, countRows(t, tx, "c_", q, ""), "a suspension is not an answer")

	setNow(t, tx, t0.Add(5*time.Second))
	require.Empty(t, claim(t, tx, q, "w", 30, 1))
	require.True(t, exEmit(t, tx, q, "go", `{"v": "first"}`))
	run = exRun(t, tx, q, s.run)
	require.Equal(t, "pending", run.State)
	requireTime(t, t0.Add(5*time.Second), run.AvailableAt)
	require.Equal(t, "pending", *taskField(t, tx, q, s.task, "state"))

	require.False(t, exEmit(t, tx, q, "go", `{"v": "second"}`))
	require.Equal(t, 1, countRows(t, tx, "e_", q, "event_name = 'go' and payload = '{\"v\": \"first\"}'"))
	requireTime(t, t0.Add(5*time.Second), exRun(t, tx, q, s.run).AvailableAt, "a losing emit wakes nothing again")

	require.Equal(t, s.run, claimOne(t, tx, q).RunID)
	a = exAwaitEvent(t, tx, q, s, "step", "go", nil)
	require.Equal(t, "received", a.Status)
	require.JSONEq(t, `{"v": "first"}`, *a.Payload)
	require.Zero(t, countRows(t, tx, "w_", q, ""), "the answered wait is gone")
	state, _, _ := exStoredCheckpoint(t, tx, q, s.task, "step")
	require.JSONEq(t, `{"status": "received", "payload": {"v": "first"}}`, state)
	// Replays keep answering from the checkpoint.
	a = exAwaitEvent(t, tx, q, s, "step", "go", nil)
	require.JSONEq(t, `{"v": "first"}`, *a.Payload)
}

// TestExecEventWakesEveryWaiter: one emit wakes all 5 runs waiting for the
// event and none waiting for another.
func TestExecEventWakesEveryWaiter(t *testing.T) {
	t.Parallel()
	const waiters = 5
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	var ss []exStarted
	for i := 0; i < waiters; i++ {
		s := exStart(t, tx, q, "")
		require.Equal(t, "suspended", exAwaitEvent(t, tx, q, s, "step", "open", nil).Status)
		ss = append(ss, s)
	}
	bystander := exStart(t, tx, q, "")
	require.Equal(t, "suspended", exAwaitEvent(t, tx, q, bystander, "step", "other", nil).Status)

	require.True(t, exEmit(t, tx, q, "open", `"now"`))
	require.Equal(t, "sleeping", exRun(t, tx, q, bystander.run).State)
	runs := claim(t, tx, q, "w", 30, 100)
	require.Len(t, runs, waiters)
	woken := map[durable.UUID]bool{}
	for _, r := range runs {
		woken[r.RunID] = true
	}
	for _, s := range ss {
		require.True(t, woken[s.run])
		a := exAwaitEvent(t, tx, q, s, "step", "open", nil)
		require.Equal(t, exAnswer{Status: "received", Payload: str(`"now"`)}, a)
	}
}

// TestExecAwaitTimeout: a wait with a timeout wakes when it passes; the replay
// says timed_out, records it, and keeps saying so after a later emit.
func TestExecAwaitTimeout(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	s := exStart(t, tx, q, "")
	require.Equal(t, "suspended", exAwaitEvent(t, tx, q, s, "step", "late", exIntp(10)).Status)
	requireTime(t, t0.Add(10*time.Second), exRun(t, tx, q, s.run).AvailableAt)

	setNow(t, tx, t0.Add(10*time.Second-time.Millisecond))
	require.Empty(t, claim(t, tx, q, "w", 30, 1))
	setNow(t, tx, t0.Add(11*time.Second))
	require.Equal(t, s.run, claimOne(t, tx, q).RunID)
	// The replay passes the same timeout; it counts from the first wait.
	a := exAwaitEvent(t, tx, q, s, "step", "late", exIntp(10))
	require.Equal(t, exAnswer{Status: "timed_out"}, a)
	state, _, _ := exStoredCheckpoint(t, tx, q, s.task, "step")
	require.JSONEq(t, `{"status": "timed_out"}`, state)
	require.Zero(t, countRows(t, tx, "w_", q, ""))

	require.True(t, exEmit(t, tx, q, "late", `"too late"`))
	require.Equal(t, exAnswer{Status: "timed_out"}, exAwaitEvent(t, tx, q, s, "step", "late", exIntp(10)))
	require.Equal(t, "running", exRun(t, tx, q, s.run).State)
}

// TestExecAwaitTimeoutCountsFromFirstWait: while the task lives, the timeout
// counts from the step's first wait, whichever attempt replays it: an attempt
// that starts after it passed gets timed_out at once. A task that ended and is
// revived by retry_task starts its waits afresh (its wait rows ended with it),
// and the new attempt's wait is woken by an emit.
func TestExecAwaitTimeoutCountsFromFirstWait(t *testing.T) {
	t.Parallel()
	t.Run("lease lost between the wake-up and the replay", func(t *testing.T) {
		t.Parallel()
		tx := testdb.Tx(t)
		setNow(t, tx, t0)
		q := newQueue(t, tx)
		s := exStart(t, tx, q, `{"retry_strategy": {"kind": "none"}}`)
		require.Equal(t, "suspended", exAwaitEvent(t, tx, q, s, "step", "ev", exIntp(100)).Status)
		setNow(t, tx, t0.Add(100*time.Second))
		require.Equal(t, s.run, claimOne(t, tx, q).RunID) // woken by the timeout; the worker dies
		setNow(t, tx, t0.Add(130*time.Second))
		r2 := claimOne(t, tx, q)
		require.Equal(t, 2, r2.Attempt)
		s2 := exStarted{task: s.task, run: r2.RunID}
		require.Equal(t, exAnswer{Status: "timed_out"}, exAwaitEvent(t, tx, q, s2, "step", "ev", exIntp(100)))
		require.Zero(t, countRows(t, tx, "w_", q, ""))
	})
	t.Run("cancelled, then retried in place", func(t *testing.T) {
		t.Parallel()
		tx := testdb.Tx(t)
		setNow(t, tx, t0)
		q := newQueue(t, tx)
		s := exStart(t, tx, q, "")
		require.Equal(t, "suspended", exAwaitEvent(t, tx, q, s, "step", "ev", exIntp(100)).Status)
		require.Equal(t, "cancelled", cancelTask(t, tx, q, s.task))
		require.Zero(t, countRows(t, tx, "w_", q, ""), "the cancelled task kept its wait")
		setNow(t, tx, t0.Add(20*time.Second))
		var r2 durable.UUID
		require.NoError(t, tx.QueryRow(context.Background(), "select run_id from durable.retry_task($1, $2)", q, s.task).Scan(&r2))
		require.Equal(t, r2, claimOne(t, tx, q).RunID)
		s2 := exStarted{task: s.task, run: r2}
		require.Equal(t, "suspended", exAwaitEvent(t, tx, q, s2, "step", "ev", exIntp(100)).Status)
		requireTime(t, t0.Add(120*time.Second), exRun(t, tx, q, r2).AvailableAt)
		require.Equal(t, 1, countRows(t, tx, "w_", q, "task_id = $1", s.task), "one wait per step")

		setNow(t, tx, t0.Add(50*time.Second))
		require.True(t, exEmit(t, tx, q, "ev", `"in time"`))
		require.Equal(t, "pending", exRun(t, tx, q, r2).State, "the new attempt's run was not woken")
		require.Equal(t, r2, claimOne(t, tx, q).RunID)
		a := exAwaitEvent(t, tx, q, s2, "step", "ev", exIntp(100))
		require.Equal(t, exAnswer{Status: "received", Payload: str(`"in time"`)}, a)
	})
}

// TestExecAwaitReplayNeedsRunningRun: a recorded answer is given only to the
// task's running run, like every durable-execution call: a cancelled run's
// replay gets QD013, another task's run QD010.
func TestExecAwaitReplayNeedsRunningRun(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	require.True(t, exEmit(t, tx, q, "ev", `1`))
	s := exStart(t, tx, q, "")
	child := spawn(t, tx, spawnCall{queue: q, task: "c", params: str(`{}`)})
	require.Equal(t, child.RunID, claimOne(t, tx, q).RunID)
	completeRun(t, tx, q, child.RunID, `2`)
	require.Equal(t, "received", exAwaitEvent(t, tx, q, s, "ev-step", "ev", nil).Status)
	require.Equal(t, "received", exAwaitTask(t, tx, q, s, "child-step", child.TaskID).Status)

	other := exStart(t, tx, q, "")
	requireFails(t, tx, "QD010", "select * from durable.await_event($1, $2, $3, 'ev-step', 'ev')", q, s.task, other.run)
	requireFails(t, tx, "QD010", "select * from durable.await_task_result($1, $2, $3, 'child-step', $4)", q, s.task, other.run, child.TaskID)
	require.Equal(t, "cancelled", cancelTask(t, tx, q, s.task))
	requireFails(t, tx, "QD013", "select * from durable.await_event($1, $2, $3, 'ev-step', 'ev')", q, s.task, s.run)
	requireFails(t, tx, "QD013", "select * from durable.await_task_result($1, $2, $3, 'child-step', $4)", q, s.task, s.run, child.TaskID)
}

// TestExecAwaitWithoutTimeoutWaitsForever: a NULL timeout is not claimable a
// year later; the emit still wakes it.
func TestExecAwaitWithoutTimeoutWaitsForever(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	s := exStart(t, tx, q, "")
	require.Equal(t, "suspended", exAwaitEvent(t, tx, q, s, "step", "never", nil).Status)
	require.True(t, exRun(t, tx, q, s.run).Forever)
	setNow(t, tx, t0.AddDate(1, 0, 0))
	require.Empty(t, claim(t, tx, q, "w", 30, 10))
	require.True(t, exEmit(t, tx, q, "never", `1`))
	require.Equal(t, s.run, claimOne(t, tx, q).RunID)
}

// TestExecInvalidEventNames: the empty name, NULL and names starting with
// '$' (the queue's own wake-ups) are refused by emit and await alike, with
// QD007.
func TestExecInvalidEventNames(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	s := exStart(t, tx, q, "")
	child := spawn(t, tx, spawnCall{queue: q, task: "c", options: availableAtOption("2100-01-01T00:00:00Z")})
	for _, name := range []*string{str(""), nil, str("$x"), str("$task:" + child.TaskID.String())} {
		e := requireFails(t, tx, "QD007", "select durable.emit_event($1, $2, '1')", q, name)
		require.NotEmpty(t, e.Hint)
		requireFails(t, tx, "QD007", "select * from durable.await_event($1, $2, $3, 's', $4)", q, s.task, s.run, name)
	}
	require.Zero(t, countRows(t, tx, "e_", q, ""))
	require.Zero(t, countRows(t, tx, "w_", q, ""))
	require.Equal(t, "running", exRun(t, tx, q, s.run).State)
	require.Equal(t, "pending", *taskField(t, tx, q, child.TaskID, "state"))
}

// exOutcome is what a goroutine's call returned.
type exOutcome struct {
	answer exAnswer
	stored bool
	err    error
}

// exBlockedUntil runs call on conn in a goroutine, asserts that it waits for
// a lock of backend holder (and has not returned), runs release, and returns
// what call returned then.
func exBlockedUntil(t *testing.T, observer dbtx, conn dbtx, holder uint32, call func() exOutcome, release func() error) exOutcome {
	t.Helper()
	pid := backendPID(t, conn)
	done := make(chan exOutcome, 1)
	go func() { done <- call() }()
	waitBlockedBy(t, observer, pid, holder)
	select {
	case o := <-done:
		t.Fatalf("the call returned while it should wait: %+v", o)
	default:
	}
	require.NoError(t, release())
	select {
	case o := <-done:
		return o
	case <-time.After(10 * time.Second):
		t.Fatal("the call did not return after the lock holder committed")
		return exOutcome{}
	}
}

// TestExecEventNoLostWakeUp forces both orders of a wait racing an emit, 4
// times each: an emit waits for an open await_event transaction and then wakes
// its run; an await waits for an open emit transaction and then receives it.
func TestExecEventNoLostWakeUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.ClonePool(t, 5)
	conns := acquireConns(t, pool, 3)
	a, b, observer := conns[0], conns[1], conns[2]
	pidA, pidB := backendPID(t, a), backendPID(t, b)
	q := newQueue(t, pool)
	for i := 0; i < 4; i++ {
		event := fmt.Sprintf("await-first-%d", i)
		s := exStart(t, pool, q, "")
		txA, err := a.Begin(ctx)
		require.NoError(t, err)
		require.Equal(t, "suspended", exAwaitEvent(t, txA, q, s, "step", event, nil).Status)
		o := exBlockedUntil(t, observer, b, pidA, func() exOutcome {
			var o exOutcome
			o.err = b.QueryRow(ctx, "select durable.emit_event($1, $2, $3)", q, event, fmt.Sprintf(`{"i": %d}`, i)).Scan(&o.stored)
			return o
		}, func() error { return txA.Commit(ctx) })
		require.NoError(t, o.err)
		require.True(t, o.stored)
		require.Equal(t, "pending", exRun(t, pool, q, s.run).State, "round %d: the wake-up was lost", i)
		require.Equal(t, s.run, claimOne(t, pool, q).RunID)
		ans := exAwaitEvent(t, pool, q, s, "step", event, nil)
		require.Equal(t, "received", ans.Status)
		require.JSONEq(t, fmt.Sprintf(`{"i": %d}`, i), *ans.Payload)
		completeRun(t, pool, q, s.run, `1`)

		event = fmt.Sprintf("emit-first-%d", i)
		s = exStart(t, pool, q, "")
		txB, err := b.Begin(ctx)
		require.NoError(t, err)
		require.True(t, exEmit(t, txB, q, event, fmt.Sprintf(`{"j": %d}`, i)))
		o = exBlockedUntil(t, observer, a, pidB, func() exOutcome {
			ans, err := exTryAwaitEvent(ctx, a, q, s, "step", event, nil)
			return exOutcome{answer: ans, err: err}
		}, func() error { return txB.Commit(ctx) })
		require.NoError(t, o.err)
		require.Equal(t, "received", o.answer.Status, "round %d", i)
		require.JSONEq(t, fmt.Sprintf(`{"j": %d}`, i), *o.answer.Payload)
		require.Equal(t, "running", exRun(t, pool, q, s.run).State)
		completeRun(t, pool, q, s.run, `2`)
	}
	require.Zero(t, countRows(t, pool, "w_", q, ""))
}

// TestExecChildSpawnOptions: parent_task_id must name a task of the queue
// (QD020) and be a UUID string (QD005); the child records its parent.
func TestExecChildSpawnOptions(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	parent := spawn(t, tx, spawnCall{queue: q, task: "p"})
	other := newQueue(t, tx)
	elsewhere := spawn(t, tx, spawnCall{queue: other, task: "p"})
	for _, opts := range []string{
		fmt.Sprintf(`{"parent_task_id": %q}`, durable.UUID{1, 2, 3}),
		fmt.Sprintf(`{"parent_task_id": %q}`, elsewhere.TaskID), // another queue's task
	} {
		e := requireFails(t, tx, "QD020", "select * from durable.spawn_task($1, 'c', '{}', false, null, $2::text::jsonb)", q, opts)
		require.Contains(t, e.Message, "parent")
	}
	for _, opts := range []string{`{"parent_task_id": "not-a-uuid"}`, `{"parent_task_id": 12}`, `{"parent_task_id": ""}`,
		`{"parent_task_id": ["` + parent.TaskID.String() + `"]}`} {
		e := requireFails(t, tx, "QD005", "select * from durable.spawn_task($1, 'c', '{}', false, 'k', $2::text::jsonb)", q, opts)
		require.Contains(t, e.Message, "parent_task_id")
	}
	c := spawn(t, tx, spawnCall{queue: q, task: "c", options: fmt.Sprintf(`{"parent_task_id": %q}`, parent.TaskID)})
	require.Equal(t, parent.TaskID.String(), *taskField(t, tx, q, c.TaskID, "parent_task_id"))
	require.Equal(t, 2, countTasks(t, tx, q))

	// A failed or cancelled parent takes no new children (QD016): the cascade
	// that cancels children has already run.
	q2 := newQueue(t, tx)
	failed := spawn(t, tx, spawnCall{queue: q2, task: "p", options: `{"max_attempts": 1}`})
	failRun(t, tx, q2, claimOne(t, tx, q2).RunID, `{"message": "boom"}`)
	cancelled := spawn(t, tx, spawnCall{queue: q2, task: "p"})
	require.Equal(t, "cancelled", cancelTask(t, tx, q2, cancelled.TaskID))
	done := spawn(t, tx, spawnCall{queue: q2, task: "p"})
	completeRun(t, tx, q2, claimOne(t, tx, q2).RunID, `1`)
	for _, p := range []durable.UUID{cancelled.TaskID, failed.TaskID} {
		e := requireFails(t, tx, "QD016", "select * from durable.spawn_task($1, 'c', '{}', false, null, $2::text::jsonb)",
			q2, fmt.Sprintf(`{"parent_task_id": %q}`, p))
		require.Contains(t, e.Message, p.String())
	}
	spawn(t, tx, spawnCall{queue: q2, task: "c", options: fmt.Sprintf(`{"parent_task_id": %q}`, done.TaskID)}) // a completed parent may
}

// TestExecRetryRestartsMaxDuration: an in-place retry is a new start, so the
// task's max_duration counts again from the retry's first claim.
func TestExecRetryRestartsMaxDuration(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	s := exStart(t, tx, q, `{"max_duration": 60, "max_attempts": 1}`)
	failRun(t, tx, q, s.run, `{"message": "boom"}`)
	require.Equal(t, "failed", taskResult(t, tx, q, s.task).state)

	setNow(t, tx, t0.Add(time.Hour))
	mustExec(t, tx, "select * from durable.retry_task($1, $2)", q, s.task)
	claimed := claim(t, tx, q, "w1", 600, 1)
	require.Len(t, claimed, 1)
	r := claimed[0]
	setNow(t, tx, t0.Add(time.Hour+59*time.Second))
	claim(t, tx, q, "sweeper", 30, 1)
	require.Equal(t, "running", taskResult(t, tx, q, s.task).state, "cancelled before its new deadline")
	setNow(t, tx, t0.Add(time.Hour+61*time.Second))
	claim(t, tx, q, "sweeper", 30, 1)
	require.Equal(t, "cancelled", taskResult(t, tx, q, s.task).state, "the retry had no max_duration deadline")
	require.Equal(t, `"max_duration"`, jsonField(t, exReason(t, tx, q, s.task), "name"))
	require.Equal(t, "cancelled", exRun(t, tx, q, r.RunID).State)
}

// TestExecFinishedTaskLeavesNoWaits: however a waiting task ends, its wait
// rows go with it.
func TestExecFinishedTaskLeavesNoWaits(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	a := exStart(t, tx, q, "")
	require.Equal(t, "suspended", exAwaitEvent(t, tx, q, a, "wait", "never", nil).Status)
	b := exStart(t, tx, q, "")
	require.Equal(t, "suspended", exAwaitEvent(t, tx, q, b, "wait", "never", nil).Status)
	require.Equal(t, 2, countRows(t, tx, "w_", q, ""))
	require.Equal(t, "cancelled", cancelTask(t, tx, q, a.task))
	require.Equal(t, 1, countRows(t, tx, "w_", q, ""))
	require.Equal(t, 1, countRows(t, tx, "w_", q, "task_id = $1", b.task))
}

// TestExecChildOutcomeWakesParent: however the awaited child ends (completed,
// failed with its attempts used up, cancelled), the waiting parent is woken
// and its replay receives the child's outcome; a child already ended is
// received without suspending.
func TestExecChildOutcomeWakesParent(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name           string
		endBeforeAwait bool
		claimed        bool // the child's run is claimed before the parent awaits
		// end finishes the child, whose run is run.
		end  func(t *testing.T, tx pgx.Tx, q string, child durable.UUID, run durable.UUID)
		want string // the payload, with CHILD for the child's id
	}{
		{"completed", false, true, func(t *testing.T, tx pgx.Tx, q string, child, run durable.UUID) {
			completeRun(t, tx, q, run, `{"total": 7}`)
		}, `{"task_id": "CHILD", "state": "completed", "result": {"total": 7}, "failure_reason": null}`},
		{"failed, attempts used up", false, true, func(t *testing.T, tx pgx.Tx, q string, child, run durable.UUID) {
			failRun(t, tx, q, run, `{"message": "boom"}`)
		}, `{"task_id": "CHILD", "state": "failed", "result": null, "failure_reason": {"message": "boom"}}`},
		{"cancelled", false, false, func(t *testing.T, tx pgx.Tx, q string, child, run durable.UUID) {
			require.Equal(t, "cancelled", cancelTask(t, tx, q, child))
		}, `{"task_id": "CHILD", "state": "cancelled", "result": null,
		     "failure_reason": {"name": "cancelled", "message": "cancelled by cancel_task"}}`},
		{"completed before the await", true, true, func(t *testing.T, tx pgx.Tx, q string, child, run durable.UUID) {
			completeRun(t, tx, q, run, `"early"`)
		}, `{"task_id": "CHILD", "state": "completed", "result": "early", "failure_reason": null}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tx := testdb.Tx(t)
			setNow(t, tx, t0)
			q := newQueue(t, tx)
			p := exStart(t, tx, q, "")
			child := spawn(t, tx, spawnCall{queue: q, task: "c", params: str(`{}`),
				options: fmt.Sprintf(`{"parent_task_id": %q, "max_attempts": 1}`, p.task)})
			want := strings.ReplaceAll(tc.want, "CHILD", child.TaskID.String())
			if tc.claimed {
				require.Equal(t, child.RunID, claimOne(t, tx, q).RunID)
			}
			if tc.endBeforeAwait {
				tc.end(t, tx, q, child.TaskID, child.RunID)
				a := exAwaitTask(t, tx, q, p, "child", child.TaskID)
				require.Equal(t, "received", a.Status)
				require.JSONEq(t, want, *a.Payload)
				require.Equal(t, "running", exRun(t, tx, q, p.run).State)
				return
			}

			a := exAwaitTask(t, tx, q, p, "child", child.TaskID)
			require.Equal(t, exAnswer{Status: "suspended"}, a)
			require.Equal(t, "sleeping", exRun(t, tx, q, p.run).State)
			require.True(t, exRun(t, tx, q, p.run).Forever)
			require.Equal(t, "sleeping", *taskField(t, tx, q, p.task, "state"))

			setNow(t, tx, t0.Add(10*time.Second)) // within the child's lease
			tc.end(t, tx, q, child.TaskID, child.RunID)
			run := exRun(t, tx, q, p.run)
			require.Equal(t, "pending", run.State, "the parent was not woken")
			requireTime(t, t0.Add(10*time.Second), run.AvailableAt)
			require.Equal(t, "pending", *taskField(t, tx, q, p.task, "state"))
			require.Equal(t, p.run, claimOne(t, tx, q).RunID)
			a = exAwaitTask(t, tx, q, p, "child", child.TaskID)
			require.Equal(t, "received", a.Status)
			require.JSONEq(t, want, *a.Payload)
			state, _, _ := exStoredCheckpoint(t, tx, q, p.task, "child")
			require.JSONEq(t, fmt.Sprintf(`{"status": "received", "payload": %s}`, want), state)
		})
	}
}

// TestExecParentEndCancelsChildren: when a parent is cancelled or fails, its
// unfinished children (pending, running, sleeping) and their unfinished
// children are cancelled with a reason naming their own parent; finished
// children and their children, and unrelated tasks, are untouched.
func TestExecParentEndCancelsChildren(t *testing.T) {
	t.Parallel()
	later := availableAtOption("2100-01-01T00:00:00Z")
	cases := []struct {
		name  string
		state string // the parent's end
		end   func(t *testing.T, tx pgx.Tx, q string, parent exStarted)
	}{
		{"cancelled", "cancelled", func(t *testing.T, tx pgx.Tx, q string, p exStarted) {
			require.Equal(t, "cancelled", cancelTask(t, tx, q, p.task))
		}},
		{"failed", "failed", func(t *testing.T, tx pgx.Tx, q string, p exStarted) {
			failRun(t, tx, q, p.run, `{"message": "parent broke"}`)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tx := testdb.Tx(t)
			setNow(t, tx, t0)
			q := newQueue(t, tx)
			p := exStart(t, tx, q, `{"max_attempts": 1}`)
			childOf := func(parent durable.UUID, key string, extra string) spawned {
				opts := fmt.Sprintf(`{"parent_task_id": %q%s}`, parent, extra)
				c := spawnCall{queue: q, task: "t", params: str(`{}`), options: opts}
				if key != "" {
					c.key = str(key)
				}
				return spawn(t, tx, c)
			}
			pendingChild := childOf(p.task, "k-pending", `, "available_at": "2100-01-01T00:00:00Z"`)
			runningChild := childOf(p.task, "k-running", "")
			require.Equal(t, runningChild.RunID, claimOne(t, tx, q).RunID)
			sleepingChild := childOf(p.task, "", "")
			sc := exStarted{task: sleepingChild.TaskID, run: claimOne(t, tx, q).RunID}
			require.Equal(t, sleepingChild.RunID, sc.run)
			require.True(t, exSleepUntil(t, tx, q, sc, "nap", t0.Add(time.Hour)))
			doneChild := childOf(p.task, "", "")
			require.Equal(t, doneChild.RunID, claimOne(t, tx, q).RunID)
			completeRun(t, tx, q, doneChild.RunID, `"kept"`)
			grandchild := childOf(pendingChild.TaskID, "", `, "available_at": "2100-01-01T00:00:00Z"`)
			greatGrandchild := childOf(grandchild.TaskID, "", `, "available_at": "2100-01-01T00:00:00Z"`)
			orphanOfDone := childOf(doneChild.TaskID, "", `, "available_at": "2100-01-01T00:00:00Z"`)
			unrelated := spawn(t, tx, spawnCall{queue: q, task: "t", options: later})
			doneBefore := taskRows(t, tx, q, doneChild.TaskID)

			setNow(t, tx, t0.Add(10*time.Second)) // within the parent's lease
			tc.end(t, tx, q, p)
			require.Equal(t, tc.state, *taskField(t, tx, q, p.task, "state"))

			reasonName := "parent_" + tc.state
			for _, c := range []struct {
				task, parent durable.UUID
			}{
				{pendingChild.TaskID, p.task}, {runningChild.TaskID, p.task}, {sleepingChild.TaskID, p.task},
				{grandchild.TaskID, pendingChild.TaskID}, {greatGrandchild.TaskID, grandchild.TaskID},
			} {
				require.Equal(t, "cancelled", *taskField(t, tx, q, c.task, "state"))
				reason := exReason(t, tx, q, c.task)
				want := reasonName
				if c.parent != p.task {
					want = "parent_cancelled" // a cascaded child was cancelled, whatever its root did
				}
				require.JSONEq(t, fmt.Sprintf("%q", want), jsonField(t, reason, "name"))
				require.JSONEq(t, fmt.Sprintf("%q", c.parent), jsonField(t, reason, "parent_task_id"))
				require.Contains(t, jsonField(t, reason, "message"), c.parent.String())
				require.Zero(t, countRows(t, tx, "r_", q, "task_id = $1 and state in ('pending', 'running', 'sleeping')", c.task))
				require.Equal(t, "false", *taskField(t, tx, q, c.task, "key_held"))
			}
			require.Equal(t, doneBefore, taskRows(t, tx, q, doneChild.TaskID), "a finished child was touched")
			require.Equal(t, "pending", *taskField(t, tx, q, orphanOfDone.TaskID, "state"))
			require.Equal(t, "pending", *taskField(t, tx, q, unrelated.TaskID, "state"))
			requireFails(t, tx, "QD013", "select durable.complete_run($1, $2, '1')", q, runningChild.RunID)
			exKeyFree(t, tx, q, "k-pending")
			exKeyFree(t, tx, q, "k-running")
		})
	}
}

// TestExecChildFoundByKey: a child spawn whose key a live task holds returns
// that task (created=false, not re-parented), and the parent's await on it
// completes when it ends, whoever created it.
func TestExecChildFoundByKey(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	holder := spawn(t, tx, spawnCall{queue: q, task: "report", params: str(`{"day": 1}`), key: str("day-1")})
	p := exStart(t, tx, q, availableAtOption("2029-01-01T00:00:00Z")) // claimed before the holder
	c := spawn(t, tx, spawnCall{queue: q, task: "report", params: str(`{"day": 1}`), key: str("day-1"),
		options: fmt.Sprintf(`{"parent_task_id": %q}`, p.task)})
	require.False(t, c.Created)
	require.Equal(t, holder.TaskID, c.TaskID)
	require.Nil(t, taskField(t, tx, q, holder.TaskID, "parent_task_id"))

	require.Equal(t, "suspended", exAwaitTask(t, tx, q, p, "report", c.TaskID).Status)
	require.Equal(t, holder.RunID, claimOne(t, tx, q).RunID)
	completeRun(t, tx, q, holder.RunID, `"the report"`)
	require.Equal(t, "pending", exRun(t, tx, q, p.run).State)
	require.Equal(t, p.run, claimOne(t, tx, q).RunID)
	a := exAwaitTask(t, tx, q, p, "report", c.TaskID)
	require.Equal(t, "received", a.Status)
	require.JSONEq(t, fmt.Sprintf(`{"task_id": %q, "state": "completed", "result": "the report", "failure_reason": null}`,
		holder.TaskID), *a.Payload)
}

// TestExecChildNoLostWakeUp forces both orders of a parent's await racing its
// child's completion, 4 times each: the completion waits for the open
// await_task_result transaction (its share lock on the child) and then wakes
// the parent; an await waits for an open completion and then receives it. No
// deadlock, no lost wake-up.
func TestExecChildNoLostWakeUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.ClonePool(t, 5)
	conns := acquireConns(t, pool, 3)
	a, b, observer := conns[0], conns[1], conns[2]
	pidA, pidB := backendPID(t, a), backendPID(t, b)
	q := newQueue(t, pool)
	startPair := func() (exStarted, exStarted) {
		p := exStart(t, pool, q, "")
		c := spawn(t, pool, spawnCall{queue: q, task: "c", params: str(`{}`),
			options: fmt.Sprintf(`{"parent_task_id": %q}`, p.task)})
		require.Equal(t, c.RunID, claimOne(t, pool, q).RunID)
		return p, exStarted{task: c.TaskID, run: c.RunID}
	}
	for i := 0; i < 4; i++ {
		p, c := startPair()
		txA, err := a.Begin(ctx)
		require.NoError(t, err)
		require.Equal(t, "suspended", exAwaitTask(t, txA, q, p, "child", c.task).Status)
		o := exBlockedUntil(t, observer, b, pidA, func() exOutcome {
			_, err := b.Exec(ctx, "select durable.complete_run($1, $2, $3)", q, c.run, fmt.Sprintf(`{"i": %d}`, i))
			return exOutcome{err: err}
		}, func() error { return txA.Commit(ctx) })
		require.NoError(t, o.err)
		require.Equal(t, "pending", exRun(t, pool, q, p.run).State, "round %d: the wake-up was lost", i)
		require.Equal(t, p.run, claimOne(t, pool, q).RunID)
		ans := exAwaitTask(t, pool, q, p, "child", c.task)
		require.Equal(t, "received", ans.Status)
		require.JSONEq(t, fmt.Sprintf(`{"i": %d}`, i), jsonField(t, *ans.Payload, "result"))
		completeRun(t, pool, q, p.run, `1`)

		p, c = startPair()
		txB, err := b.Begin(ctx)
		require.NoError(t, err)
		_, err = txB.Exec(ctx, "select durable.complete_run($1, $2, $3)", q, c.run, fmt.Sprintf(`{"j": %d}`, i))
		require.NoError(t, err)
		o = exBlockedUntil(t, observer, a, pidB, func() exOutcome {
			ans, err := exTryAwaitTask(ctx, a, q, p, "child", c.task)
			return exOutcome{answer: ans, err: err}
		}, func() error { return txB.Commit(ctx) })
		require.NoError(t, o.err)
		require.Equal(t, "received", o.answer.Status, "round %d", i)
		require.JSONEq(t, `"completed"`, jsonField(t, *o.answer.Payload, "state"))
		require.JSONEq(t, fmt.Sprintf(`{"j": %d}`, i), jsonField(t, *o.answer.Payload, "result"))
		require.Equal(t, "running", exRun(t, pool, q, p.run).State)
		completeRun(t, pool, q, p.run, `2`)
	}
}

// TestExecParentAwaitVersusCancel forces a parent's await_task_result to
// start while a transaction cancelling the parent holds the parent's run (as
// cancel_task does first), 3 times: the cancellation cascades to the child
// without waiting for the await, and the await then gets QD013. No deadlock.
func TestExecParentAwaitVersusCancel(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.ClonePool(t, 5)
	conns := acquireConns(t, pool, 3)
	a, b, observer := conns[0], conns[1], conns[2]
	pidB := backendPID(t, b)
	q := newQueue(t, pool)
	for i := 0; i < 3; i++ {
		p := exStart(t, pool, q, "")
		c := spawn(t, pool, spawnCall{queue: q, task: "c", params: str(`{}`),
			options: fmt.Sprintf(`{"parent_task_id": %q, "available_at": "2100-01-01T00:00:00Z"}`, p.task)})
		txB, err := b.Begin(ctx)
		require.NoError(t, err)
		_, err = txB.Exec(ctx, "select durable.extend_claim($1, $2, 60)", q, p.run) // locks the parent's run
		require.NoError(t, err)
		var cancelErr error
		o := exBlockedUntil(t, observer, a, pidB, func() exOutcome {
			ans, err := exTryAwaitTask(ctx, a, q, p, "child", c.TaskID)
			return exOutcome{answer: ans, err: err}
		}, func() error {
			var state string
			if cancelErr = txB.QueryRow(ctx, "select durable.cancel_task($1, $2)", q, p.task).Scan(&state); cancelErr != nil {
				_ = txB.Rollback(ctx)
				return nil
			}
			return txB.Commit(ctx)
		})
		require.NoError(t, cancelErr, "round %d: the cancellation failed", i)
		requireSQLState(t, o.err, "QD013")
		require.Equal(t, "cancelled", *taskField(t, pool, q, c.TaskID, "state"))
		require.JSONEq(t, `"parent_cancelled"`, jsonField(t, exReason(t, pool, q, c.TaskID), "name"))
	}
}

// TestExecMaxDelay: a task not started within max_delay seconds of its
// available_at is cancelled by the next claim (reason max_delay) and frees its
// key; one claimed in time loses the deadline (or gets its max_duration one).
func TestExecMaxDelay(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name        string
		options     string
		claimAt     time.Duration // after t0
		wantClaimed bool
		// wantDeadline is the deadline after the claim, after t0; 0 for none.
		wantDeadline time.Duration
	}{
		{"claimed just in time", `{"max_delay": 10}`, 10*time.Second - time.Millisecond, true, 0},
		{"deadline reached", `{"max_delay": 10}`, 10 * time.Second, false, 0},
		{"long past the deadline", `{"max_delay": 10}`, time.Hour, false, 0},
		{"counted from a later available_at, in time", `{"max_delay": 10, "available_at": "2030-01-02T03:05:05Z"}`,
			69 * time.Second, true, 0},
		{"counted from a later available_at, too late", `{"max_delay": 10, "available_at": "2030-01-02T03:05:05Z"}`,
			70 * time.Second, false, 0},
		{"in time, then max_duration counts", `{"max_delay": 10, "max_duration": 100}`, 5 * time.Second, true, 105 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tx := testdb.Tx(t)
			setNow(t, tx, t0)
			q := newQueue(t, tx)
			s := spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`), key: str("k"), options: tc.options})
			require.NotNil(t, taskField(t, tx, q, s.TaskID, "cancel_deadline"))

			setNow(t, tx, t0.Add(tc.claimAt))
			runs := claim(t, tx, q, "w", 30, 10)
			if tc.wantClaimed {
				require.Len(t, runs, 1)
				require.Equal(t, s.RunID, runs[0].RunID)
				require.Equal(t, "running", *taskField(t, tx, q, s.TaskID, "state"))
				deadline := taskField(t, tx, q, s.TaskID, "cancel_deadline")
				if tc.wantDeadline == 0 {
					require.Nil(t, deadline, "the max_delay deadline was kept after the start")
				} else {
					var got time.Time
					require.NoError(t, tx.QueryRow(context.Background(), fmt.Sprintf(
						"select cancel_deadline from %s where task_id = $1", tableName("t_", q)), s.TaskID).Scan(&got))
					requireTime(t, t0.Add(tc.wantDeadline), got)
				}
				return
			}
			require.Empty(t, runs)
			res := taskResult(t, tx, q, s.TaskID)
			require.Equal(t, "cancelled", res.state)
			require.JSONEq(t, `"max_delay"`, jsonField(t, *res.failure, "name"))
			require.Equal(t, "cancelled", exRun(t, tx, q, s.RunID).State)
			require.Nil(t, taskField(t, tx, q, s.TaskID, "cancel_deadline"))
			require.Nil(t, taskField(t, tx, q, s.TaskID, "first_started_at"))
			exKeyFree(t, tx, q, "k")
		})
	}
}

// TestExecMaxDuration: a task not finished max_duration seconds after its
// first start is cancelled by the next claim of any worker (reason
// max_duration), whatever it is doing; its worker learns it from
// extend_claim (QD013). A task that completes in time is untouched.
func TestExecMaxDuration(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		// setup acts on the task, claimed at t0 by w1 for 600 s, and leaves
		// the clock before t0+60s; it returns the task's live run.
		setup         func(t *testing.T, tx pgx.Tx, q string, s exStarted) durable.UUID
		wantCancelled bool
	}{
		{"running", func(t *testing.T, tx pgx.Tx, q string, s exStarted) durable.UUID { return s.run }, true},
		{"sleeping in sleep_until", func(t *testing.T, tx pgx.Tx, q string, s exStarted) durable.UUID {
			require.True(t, exSleepUntil(t, tx, q, s, "nap", t0.Add(time.Hour)))
			return s.run
		}, true},
		{"awaiting an event", func(t *testing.T, tx pgx.Tx, q string, s exStarted) durable.UUID {
			require.Equal(t, "suspended", exAwaitEvent(t, tx, q, s, "step", "ev", nil).Status)
			return s.run
		}, true},
		{"second attempt: the deadline counts from the first start", func(t *testing.T, tx pgx.Tx, q string, s exStarted) durable.UUID {
			setNow(t, tx, t0.Add(30*time.Second))
			failRun(t, tx, q, s.run, `{"message": "boom"}`)
			r := claim(t, tx, q, "w1", 600, 1)
			require.Len(t, r, 1)
			require.Equal(t, 2, r[0].Attempt)
			return r[0].RunID
		}, true},
		{"completed in time", func(t *testing.T, tx pgx.Tx, q string, s exStarted) durable.UUID {
			setNow(t, tx, t0.Add(59*time.Second))
			completeRun(t, tx, q, s.run, `"in time"`)
			return s.run
		}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tx := testdb.Tx(t)
			setNow(t, tx, t0)
			q := newQueue(t, tx)
			sp := spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`), key: str("k"),
				options: `{"max_duration": 60, "retry_strategy": {"kind": "none"}}`})
			r := claim(t, tx, q, "w1", 600, 1)
			require.Len(t, r, 1)
			s := exStarted{task: sp.TaskID, run: r[0].RunID}
			run := tc.setup(t, tx, q, s)

			setNow(t, tx, t0.Add(60*time.Second-time.Millisecond))
			before := queueSnapshot(t, tx, q)
			require.Empty(t, claim(t, tx, q, "w2", 30, 10))
			require.Equal(t, before, queueSnapshot(t, tx, q), "cancelled before the deadline")

			setNow(t, tx, t0.Add(60*time.Second))
			require.Empty(t, claim(t, tx, q, "w2", 30, 10))
			if !tc.wantCancelled {
				require.Equal(t, before, queueSnapshot(t, tx, q))
				res := taskResult(t, tx, q, s.task)
				require.Equal(t, "completed", res.state)
				require.Nil(t, res.failure)
				return
			}
			res := taskResult(t, tx, q, s.task)
			require.Equal(t, "cancelled", res.state)
			require.JSONEq(t, `"max_duration"`, jsonField(t, *res.failure, "name"))
			require.Equal(t, "cancelled", exRun(t, tx, q, run).State)
			requireFails(t, tx, "QD013", "select durable.extend_claim($1, $2, 60)", q, run)
			requireFails(t, tx, "QD013", "select durable.complete_run($1, $2, '1')", q, run)
			exKeyFree(t, tx, q, "k")
		})
	}
}

// TestExecDeadlineSweepUsesIndex: the deadline sweep of claim_task, planned
// as claim_task plans it (a generic plan, with claim_task's settings), reads
// the partial index tasks_deadline for the queue, in deadline order, not the
// 2,000 tasks without deadlines.
func TestExecDeadlineSweepUsesIndex(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	q := newQueue(t, tx)
	mustExec(t, tx, "select durable.spawn_task($1, 't', jsonb_build_object('i', i)) from generate_series(1, 2000) i", q)
	mustExec(t, tx, `select durable.spawn_task($1, 't', jsonb_build_object('i', i), false, null,
	                   jsonb_build_object('max_delay', i * 10)) from generate_series(1, 5) i`, q)
	mustExec(t, tx, "analyze durable.tasks")
	var settings []string
	require.NoError(t, tx.QueryRow(context.Background(),
		"select proconfig from pg_proc where oid = 'durable.claim_task(text, text, integer, integer)'::regprocedure").Scan(&settings))
	for _, setting := range settings {
		name, value, _ := strings.Cut(setting, "=")
		mustExec(t, tx, "select set_config($1, $2, true)", name, value)
	}
	require.Contains(t, settings, "plan_cache_mode=force_generic_plan")
	stmt := "deadline_sweep_" + q
	mustExec(t, tx, "prepare "+stmt+` (text, timestamptz) as
		select t.task_id, t.first_started_at from durable.tasks t
		 where t.queue_name = $1 and t.cancel_deadline <= $2 order by t.cancel_deadline limit 100`)
	t.Cleanup(func() { _, _ = tx.Exec(context.Background(), "deallocate "+stmt) })
	rows, err := tx.Query(context.Background(), "explain execute "+stmt+"('"+q+"', now())")
	require.NoError(t, err)
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	plan := strings.Join(lines, "\n")
	require.Contains(t, plan, "Index Scan using tasks_deadline", plan)
	require.Contains(t, plan, "Index Cond: ((queue_name = $1) AND (cancel_deadline <= $2))", plan)
	require.NotContains(t, plan, "Seq Scan", plan)
	require.NotContains(t, plan, "Sort", plan) // the index gives the order
}

// TestExecCancellationOptionsRefused: max_delay and max_duration take whole
// seconds from 1; anything else is QD005, naming the option, with nothing
// written.
func TestExecCancellationOptionsRefused(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	q := newQueue(t, tx)
	for _, opt := range []string{"max_delay", "max_duration"} {
		for _, v := range []string{`0`, `-1`, `1.5`, `"10"`, `true`, `{}`, `315360001`, `1e400`} {
			opts := fmt.Sprintf(`{%q: %s}`, opt, v)
			e := requireFails(t, tx, "QD005", "select * from durable.spawn_task($1, 't', '{}', false, null, $2::text::jsonb)", q, opts)
			require.Contains(t, e.Message, opt, opts)
		}
		for _, v := range []string{`1`, `10.0`, `315360000`, `null`} {
			spawn(t, tx, spawnCall{queue: q, task: "t", options: fmt.Sprintf(`{%q: %s}`, opt, v)})
		}
	}
	require.Equal(t, 8, countTasks(t, tx, q))
	require.Equal(t, 2, countRows(t, tx, "t_", q, "max_duration is not null and max_duration in (1, 10)"))
}

// TestExecRetryInPlace: a failed or cancelled task retried in place gets a new
// run (attempt n+1) of the same task, pending now, keeps its checkpoints and
// takes its key again; max_attempts grows by one when used up, or takes the
// option.
func TestExecRetryInPlace(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		spawnOp string
		// end makes the task failed or cancelled after its first run wrote a checkpoint.
		end             func(t *testing.T, tx pgx.Tx, q string, s exStarted)
		retryOpts       string
		wantAttempt     int
		wantMaxAttempts int
		wantSteps       int
	}{
		{"failed, attempts used up", `{"max_attempts": 2, "retry_strategy": {"kind": "none"}}`,
			func(t *testing.T, tx pgx.Tx, q string, s exStarted) {
				failRun(t, tx, q, s.run, `{"n": 1}`)
				failRun(t, tx, q, claimOne(t, tx, q).RunID, `{"n": 2}`)
			}, `{}`, 3, 3, 1},
		{"failed, not retryable", `{"max_attempts": 5}`, func(t *testing.T, tx pgx.Tx, q string, s exStarted) {
			failRun(t, tx, q, s.run, `{"retryable": false}`)
		}, `{}`, 2, 5, 1},
		{"failed, option max_attempts", `{"max_attempts": 1}`, func(t *testing.T, tx pgx.Tx, q string, s exStarted) {
			failRun(t, tx, q, s.run, `{}`)
		}, `{"max_attempts": 10}`, 2, 10, 1},
		{"cancelled while running", `{"max_attempts": 3}`, func(t *testing.T, tx pgx.Tx, q string, s exStarted) {
			require.Equal(t, "cancelled", cancelTask(t, tx, q, s.task))
		}, `{"spawn_new": false}`, 2, 3, 1},
		{"cancelled while sleeping", `{"max_attempts": 1}`, func(t *testing.T, tx pgx.Tx, q string, s exStarted) {
			require.True(t, exSleepUntil(t, tx, q, s, "nap", t0.Add(time.Hour)))
			require.Equal(t, "cancelled", cancelTask(t, tx, q, s.task))
		}, `{}`, 2, 2, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tx := testdb.Tx(t)
			setNow(t, tx, t0)
			q := newQueue(t, tx)
			call := spawnCall{queue: q, task: "t", params: str(`{"p": 1}`), key: str("k"), options: tc.spawnOp}
			sp := spawn(t, tx, call)
			s := exStarted{task: sp.TaskID, run: claimOne(t, tx, q).RunID}
			exSetCheckpoint(t, tx, q, s.task, s.run, "done-step", `"kept"`)
			tc.end(t, tx, q, s)
			require.Equal(t, "false", *taskField(t, tx, q, s.task, "key_held"))

			setNow(t, tx, t0.Add(time.Hour))
			var r spawned
			require.NoError(t, tx.QueryRow(context.Background(),
				"select task_id, run_id, attempt, created, state from durable.retry_task($1, $2, $3::text::jsonb)",
				q, s.task, tc.retryOpts).Scan(&r.TaskID, &r.RunID, &r.Attempt, &r.Created, &r.State))
			require.Equal(t, s.task, r.TaskID)
			require.False(t, r.Created)
			require.Equal(t, "pending", r.State)
			require.Equal(t, tc.wantAttempt, r.Attempt)
			run, state, avail := runOf(t, tx, q, s.task, tc.wantAttempt)
			require.Equal(t, r.RunID, run)
			require.Equal(t, "pending", state)
			requireTime(t, t0.Add(time.Hour), avail)
			res := taskResult(t, tx, q, s.task)
			require.Equal(t, "pending", res.state)
			require.Nil(t, res.result)
			require.Equal(t, fmt.Sprint(tc.wantAttempt), *taskField(t, tx, q, s.task, "attempts"))
			require.Equal(t, fmt.Sprint(tc.wantMaxAttempts), *taskField(t, tx, q, s.task, "max_attempts"))
			require.Equal(t, r.RunID.String(), *taskField(t, tx, q, s.task, "last_attempt_run"))
			require.Nil(t, taskField(t, tx, q, s.task, "finished_at"))
			require.Equal(t, 1, countTasks(t, tx, q))

			d := spawn(t, tx, call)
			require.False(t, d.Created, "the retried task holds its key again")
			require.Equal(t, s.task, d.TaskID)
			require.Equal(t, r.RunID, d.RunID)

			claimed := claimOne(t, tx, q)
			require.Equal(t, r.RunID, claimed.RunID)
			require.Equal(t, tc.wantAttempt, claimed.Attempt)
			cps := exCheckpoints(t, tx, q, s.task, claimed.RunID)
			require.Len(t, cps, tc.wantSteps)
			state, _, _ = exStoredCheckpoint(t, tx, q, s.task, "done-step")
			require.Equal(t, `"kept"`, state)
			completeRun(t, tx, q, claimed.RunID, `"second life"`)
			require.Equal(t, "completed", taskResult(t, tx, q, s.task).state)
		})
	}
}

// TestExecRetryRefused: retry_task refuses tasks that are not failed or
// cancelled (QD015), unknown tasks (QD020) and bad options (QD005), writing
// nothing.
func TestExecRetryRefused(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	failed := spawn(t, tx, spawnCall{queue: q, task: "t", options: `{"max_attempts": 1}`})
	failRun(t, tx, q, claimOne(t, tx, q).RunID, `{}`)
	completed := exStart(t, tx, q, "")
	completeRun(t, tx, q, completed.run, `1`)
	running := exStart(t, tx, q, "")
	sleeping := exStart(t, tx, q, "")
	require.True(t, exSleepUntil(t, tx, q, sleeping, "nap", t0.Add(time.Hour)))
	pending := spawn(t, tx, spawnCall{queue: q, task: "t"})

	before := queueSnapshot(t, tx, q)
	for name, task := range map[string]durable.UUID{"completed": completed.task, "running": running.task,
		"sleeping": sleeping.task, "pending": pending.TaskID} {
		e := requireFails(t, tx, "QD015", "select * from durable.retry_task($1, $2)", q, task)
		require.Contains(t, e.Message, name)
		requireFails(t, tx, "QD015", `select * from durable.retry_task($1, $2, '{"spawn_new": true}')`, q, task)
	}
	requireFails(t, tx, "QD020", "select * from durable.retry_task($1, $2)", q, durable.UUID{3})
	for _, opts := range []string{`[]`, `"x"`, `1`, `{"spawn_new": "yes"}`, `{"spawn_new": null}`, `{"max_attempts": 0}`,
		`{"max_attempts": 1.5}`, `{"max_attempts": "3"}`, `{"max_attempts": 2147483648}`, `{"bogus": 1}`} {
		requireFails(t, tx, "QD005", "select * from durable.retry_task($1, $2, $3::text::jsonb)", q, failed.TaskID, opts)
	}
	require.Equal(t, before, queueSnapshot(t, tx, q))
}

// TestExecRetryKeyHeld: an in-place retry of a task whose key a newer live
// task holds fails with QD014 naming the holder, writing nothing; with
// spawn_new it returns the holder, or spawns a new task once the key is free.
func TestExecRetryKeyHeld(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	call := spawnCall{queue: q, task: "t", params: str(`{"p": 1}`), key: str("k"),
		options: `{"max_attempts": 2, "retry_strategy": {"kind": "none"}, "headers": {"h": 1}}`}
	old := spawn(t, tx, call)
	require.Equal(t, "cancelled", cancelTask(t, tx, q, old.TaskID))
	holder := spawn(t, tx, call)
	require.True(t, holder.Created)

	before := queueSnapshot(t, tx, q)
	e := requireFails(t, tx, "QD014", "select * from durable.retry_task($1, $2)", q, old.TaskID)
	require.Contains(t, e.Message, holder.TaskID.String())
	require.Contains(t, e.Message, old.TaskID.String())
	require.NotEmpty(t, e.Hint)
	require.Equal(t, before, queueSnapshot(t, tx, q))

	retryNew := func() spawned {
		var r spawned
		require.NoError(t, tx.QueryRow(context.Background(),
			`select task_id, run_id, attempt, created, state from durable.retry_task($1, $2, '{"spawn_new": true}')`,
			q, old.TaskID).Scan(&r.TaskID, &r.RunID, &r.Attempt, &r.Created, &r.State))
		return r
	}
	r := retryNew()
	require.Equal(t, spawned{TaskID: holder.TaskID, RunID: holder.RunID, Attempt: 1, Created: false, State: "pending"}, r)
	require.Equal(t, before, queueSnapshot(t, tx, q))

	require.Equal(t, holder.RunID, claimOne(t, tx, q).RunID)
	completeRun(t, tx, q, holder.RunID, `1`)
	r = retryNew()
	require.True(t, r.Created)
	require.NotEqual(t, old.TaskID, r.TaskID)
	require.NotEqual(t, holder.TaskID, r.TaskID)
	var same bool
	require.NoError(t, tx.QueryRow(context.Background(), fmt.Sprintf(`
		select n.task_name = o.task_name and n.params = o.params and n.headers = o.headers
		   and n.retry_strategy = o.retry_strategy and n.max_attempts = o.max_attempts
		   and n.idempotency_key = o.idempotency_key and n.key_hash = o.key_hash and n.key_held
		  from %[1]s n, %[1]s o where n.task_id = $1 and o.task_id = $2`, tableName("t_", q)),
		r.TaskID, old.TaskID).Scan(&same))
	require.True(t, same, "spawn_new copies the task's name, params, key and options")
	require.Equal(t, "cancelled", *taskField(t, tx, q, old.TaskID, "state"), "spawn_new leaves the old task alone")

	e = requireFails(t, tx, "QD014", "select * from durable.retry_task($1, $2)", q, old.TaskID)
	require.Contains(t, e.Message, r.TaskID.String())

	// Without a key, spawn_new always creates.
	nokey := spawn(t, tx, spawnCall{queue: q, task: "n", params: str(`{}`)})
	require.Equal(t, "cancelled", cancelTask(t, tx, q, nokey.TaskID))
	for i := 0; i < 2; i++ {
		var created bool
		require.NoError(t, tx.QueryRow(context.Background(),
			`select created from durable.retry_task($1, $2, '{"spawn_new": true}')`, q, nokey.TaskID).Scan(&created))
		require.True(t, created)
	}
	require.Equal(t, 3, countRows(t, tx, "t_", q, "task_name = 'n'"))
}

// TestExecRetryRace: 16 goroutines race 8 in-place retries of one failed
// keyed task against 8 spawns of its key, 8 rounds: each round exactly one
// call takes the key (a retry or a created spawn), every spawn returns the
// one holder, and the only errors are QD014 and QD015.
func TestExecRetryRace(t *testing.T) {
	t.Parallel()
	const goroutines, rounds = 16, 8
	ctx := context.Background()
	pool := testdb.ClonePool(t, goroutines+2)
	q := newQueue(t, pool)
	conns := acquireConns(t, pool, goroutines)
	for round := 0; round < rounds; round++ {
		key := fmt.Sprintf("k%d", round)
		call := spawnCall{queue: q, task: "t", params: str(`{}`), key: str(key),
			options: `{"max_attempts": 1, "available_at": "2100-01-01T00:00:00Z"}`}
		old := spawn(t, pool, spawnCall{queue: q, task: "t", params: str(`{}`), key: str(key), options: `{"max_attempts": 1}`})
		require.Equal(t, old.RunID, claimOne(t, pool, q).RunID)
		failRun(t, pool, q, old.RunID, `{"message": "boom"}`)
		require.Equal(t, "failed", taskResult(t, pool, q, old.TaskID).state)

		results := make([]spawned, goroutines)
		errs := make([]error, goroutines)
		together(goroutines, func(i int) {
			if i%2 == 0 {
				var r spawned
				errs[i] = conns[i].QueryRow(ctx,
					"select task_id, run_id, attempt, created, state from durable.retry_task($1, $2)", q, old.TaskID,
				).Scan(&r.TaskID, &r.RunID, &r.Attempt, &r.Created, &r.State)
				results[i] = r
			} else {
				results[i], errs[i] = trySpawn(ctx, conns[i], call)
			}
		})
		var holders []durable.UUID
		require.NoError(t, pool.QueryRow(ctx, fmt.Sprintf(
			"select coalesce(array_agg(task_id), '{}') from %s where idempotency_key = $1 and state in ('pending', 'running', 'sleeping')",
			tableName("t_", q)), key).Scan(&holders))
		require.Len(t, holders, 1, "round %d: live tasks of the key", round)
		require.Equal(t, 1, countRows(t, pool, "t_", q, "idempotency_key = $1 and key_held", key))
		retried, created := 0, 0
		for i, err := range errs {
			if err != nil {
				var pgErr *pgconn.PgError
				require.True(t, errors.As(err, &pgErr), "round %d: %v", round, err)
				require.Contains(t, []string{"QD014", "QD015"}, pgErr.Code, "round %d: %v", round, err)
				require.Zero(t, i%2, "a spawn failed: %v", err)
				if pgErr.Code == "QD014" {
					require.Contains(t, pgErr.Message, holders[0].String())
				}
				continue
			}
			require.Equal(t, holders[0], results[i].TaskID, "round %d goroutine %d", round, i)
			if i%2 == 0 {
				retried++
			} else if results[i].Created {
				created++
			}
		}
		require.Equal(t, 1, retried+created, "round %d: calls that took the key", round)
		require.Equal(t, holders[0] == old.TaskID, retried == 1, "round %d: the holder is the retried task iff a retry won", round)
		require.Equal(t, "cancelled", cancelTask(t, pool, q, holders[0])) // leaves no ready run for the next round
	}
}

// execSentinels are all the sentinels, the execution ones included.
var execSentinels = []error{
	durable.ErrInvalidQueueName, durable.ErrQueueNotFound, durable.ErrInvalidTaskName,
	durable.ErrInvalidIdempotencyKey, durable.ErrInvalidOptions, durable.ErrInvalidArgument,
	durable.ErrInvalidEventName, durable.ErrRunNotFound, durable.ErrRunNotRunning, durable.ErrLeaseLost,
	durable.ErrTaskCancelled, durable.ErrKeyHeld, durable.ErrTaskNotRetryable, durable.ErrTaskNotFound,
}

// TestExecGoSentinels: QD007, QD014 and QD015 reach Go callers of EmitEvent
// and RetryTask as *durable.Error values that match exactly their sentinel
// and unwrap to the server's error.
func TestExecGoSentinels(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cases := []struct {
		name string
		code string
		want error
		do   func(t *testing.T, c *durable.Client, tx pgx.Tx, q string) error
	}{
		{"QD007 event name with $", "QD007", durable.ErrInvalidEventName, func(t *testing.T, c *durable.Client, tx pgx.Tx, q string) error {
			_, err := c.EmitEvent(ctx, q, "$x", map[string]int{"a": 1})
			return err
		}},
		{"QD007 empty event name", "QD007", durable.ErrInvalidEventName, func(t *testing.T, c *durable.Client, tx pgx.Tx, q string) error {
			_, err := c.EmitEvent(ctx, q, "", nil)
			return err
		}},
		{"QD014 key held", "QD014", durable.ErrKeyHeld, func(t *testing.T, c *durable.Client, tx pgx.Tx, q string) error {
			old, err := c.Spawn(ctx, q, "t", nil, &durable.SpawnOptions{IdempotencyKey: "k"})
			require.NoError(t, err)
			_, err = c.CancelTask(ctx, q, old.TaskID)
			require.NoError(t, err)
			holder, err := c.Spawn(ctx, q, "t", nil, &durable.SpawnOptions{IdempotencyKey: "k"})
			require.NoError(t, err)
			r, err := c.RetryTask(ctx, q, old.TaskID, &durable.RetryOptions{SpawnNew: true})
			require.NoError(t, err)
			require.Equal(t, holder.TaskID, r.TaskID)
			require.False(t, r.Created)
			_, err = c.RetryTask(ctx, q, old.TaskID, nil) // last: the error aborts tx
			require.ErrorContains(t, err, holder.TaskID.String())
			return err
		}},
		{"QD015 completed task", "QD015", durable.ErrTaskNotRetryable, func(t *testing.T, c *durable.Client, tx pgx.Tx, q string) error {
			run := goClaim(t, c, q)
			require.NoError(t, c.CompleteRun(ctx, q, run.RunID, "x"))
			_, err := c.RetryTask(ctx, q, run.TaskID, nil)
			return err
		}},
		{"QD020 retry of an unknown task", "QD020", durable.ErrTaskNotFound, func(t *testing.T, c *durable.Client, tx pgx.Tx, q string) error {
			_, err := c.RetryTask(ctx, q, durable.UUID{6}, nil)
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
			var de *durable.Error
			require.True(t, errors.As(err, &de), "want a *durable.Error, got %T %v", err, err)
			require.Equal(t, tc.code, de.Code)
			for _, s := range execSentinels {
				require.Equal(t, s == tc.want, errors.Is(err, s), "errors.Is(%v, %v)", err, s)
			}
			var pgErr *pgconn.PgError
			require.True(t, errors.As(err, &pgErr), "a server error unwraps to *pgconn.PgError")
			require.Equal(t, tc.code, pgErr.Code)
		})
	}

	t.Run("EmitEvent first wins", func(t *testing.T) {
		t.Parallel()
		tx := testdb.Tx(t)
		c, err := durable.New(tx, nil)
		require.NoError(t, err)
		q := queueName()
		require.NoError(t, c.CreateQueue(ctx, q))
		for i, want := range []bool{true, false} {
			stored, err := c.EmitEvent(ctx, q, "ev", map[string]int{"i": i})
			require.NoError(t, err)
			require.Equal(t, want, stored)
		}
		require.Equal(t, 1, countRows(t, tx, "e_", q, `payload = '{"i": 0}'`))
	})
}
