package durable_test

// durable.complete_runs: per-run outcomes in input order, the same rows as
// complete_run leaves, input validation, and its locking (it never waits for
// a run another transaction holds, so it cannot deadlock with a cancellation).

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/internal/testdb"
)

// crRow is a row of durable.complete_runs.
type crRow struct {
	Run       durable.UUID
	Completed bool
	Code      *string
}

func tryCompleteRuns(ctx context.Context, db dbtx, q, runs string) ([]crRow, error) {
	rows, err := db.Query(ctx, "select run_id, completed, error_code from durable.complete_runs($1, $2::text::jsonb)", q, runs)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (crRow, error) {
		var r crRow
		err := row.Scan(&r.Run, &r.Completed, &r.Code)
		return r, err
	})
}

func completeRuns(t testing.TB, db dbtx, q, runs string) []crRow {
	t.Helper()
	rows, err := tryCompleteRuns(context.Background(), db, q, runs)
	require.NoError(t, err)
	return rows
}

// crBatch is the p_runs array for runs, each with result (JSON text; "" for
// no "result" key).
func crBatch(runs []durable.UUID, results ...string) string {
	elems := make([]string, len(runs))
	for i, r := range runs {
		elems[i] = fmt.Sprintf(`{"run_id": %q}`, r)
		if i < len(results) && results[i] != "" {
			elems[i] = fmt.Sprintf(`{"run_id": %q, "result": %s}`, r, results[i])
		}
	}
	return "[" + strings.Join(elems, ", ") + "]"
}

// TestCompleteRunsReportsEachRun: one batch of seven runs completes the two
// that are running with a live lease and reports each other one with the code
// complete_run raises for it, in input order, leaving their rows untouched.
func TestCompleteRunsReportsEachRun(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	start := func(lease int, key *string, options string) exStarted {
		t.Helper()
		s := spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`), key: key, options: options})
		runs := claim(t, tx, q, "w", lease, 1)
		require.Len(t, runs, 1)
		require.Equal(t, s.RunID, runs[0].RunID)
		return exStarted{task: s.TaskID, run: s.RunID}
	}
	ok1 := start(60, str("k1"), `{"max_duration": 600}`)
	cancelled := start(60, nil, "")
	require.Equal(t, "cancelled", cancelTask(t, tx, q, cancelled.task))
	expired := start(1, nil, "")
	finished := start(60, nil, "")
	completeRun(t, tx, q, finished.run, `"done"`)
	failed := start(60, nil, "") // retried after 1s: sleeping, so the next start claims its own run
	failRun(t, tx, q, failed.run, `{"message": "boom"}`)
	ok2 := start(60, str("k2"), "")
	unknown := durable.UUID{9, 9, 9}
	setNow(t, tx, t0.Add(2*time.Second)) // expired's lease (1s) is over, the others' (60s) are not

	untouched := []exStarted{cancelled, expired, finished, failed}
	before := make([]string, len(untouched))
	for i, s := range untouched {
		before[i] = taskRows(t, tx, q, s.task)
	}
	rows := completeRuns(t, tx, q, crBatch(
		[]durable.UUID{ok1.run, cancelled.run, expired.run, unknown, finished.run, failed.run, ok2.run},
		`{"a": 1}`, `1`, `2`, `3`, `4`, `5`, ""))
	want := []struct {
		run  durable.UUID
		code string
	}{
		{ok1.run, ""}, {cancelled.run, "QD013"}, {expired.run, "QD012"}, {unknown, "QD010"},
		{finished.run, "QD011"}, {failed.run, "QD011"}, {ok2.run, ""},
	}
	require.Len(t, rows, len(want))
	for i, w := range want {
		require.Equal(t, w.run, rows[i].Run, "row %d", i)
		require.Equal(t, w.code == "", rows[i].Completed, "row %d", i)
		if w.code == "" {
			require.Nil(t, rows[i].Code, "row %d", i)
		} else {
			require.NotNil(t, rows[i].Code, "row %d", i)
			require.Equal(t, w.code, *rows[i].Code, "row %d", i)
		}
	}
	for i, s := range untouched {
		require.Equal(t, before[i], taskRows(t, tx, q, s.task), "task %d was written", i)
	}

	for _, c := range []struct {
		s      exStarted
		result *string
	}{{ok1, str(`{"a": 1}`)}, {ok2, nil}} {
		require.Equal(t, taskOutcome{state: "completed", result: c.result}, taskResult(t, tx, q, c.s.task))
		require.Equal(t, "false", *taskField(t, tx, q, c.s.task, "key_held"))
		require.Nil(t, taskField(t, tx, q, c.s.task, "cancel_deadline"))
		require.Equal(t, 1, countRows(t, tx, "t_", q, "task_id = $1 and finished_at = $2", c.s.task, t0.Add(2*time.Second)))
		require.Equal(t, "completed", exRun(t, tx, q, c.s.run).State)
	}
	exKeyFree(t, tx, q, "k1")

	// Again: now both are finished.
	rows = completeRuns(t, tx, q, crBatch([]durable.UUID{ok2.run, ok1.run}))
	require.Equal(t, []crRow{{ok2.run, false, str("QD011")}, {ok1.run, false, str("QD011")}}, rows)
	require.Empty(t, completeRuns(t, tx, q, `[]`))
}

// crScenario builds, on queue q, a task "t" (key, max_duration) that waited
// for an event with a timeout and runs again after it (its wait row still
// there), and a task "p" sleeping in await_task_result for "t". The clock
// goes from t0 to t0+1s. It returns t's run.
func crScenario(t *testing.T, tx pgx.Tx, q string) durable.UUID {
	setNow(t, tx, t0)
	sa := spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`), key: str("tk"), options: `{"max_duration": 600}`})
	require.Equal(t, sa.RunID, claimOne(t, tx, q).RunID)
	a := exStarted{task: sa.TaskID, run: sa.RunID}
	mustExec(t, tx, "select durable.set_task_checkpoint_state($1, $2, 'first', '1', $3)", q, a.task, a.run)
	require.Equal(t, "suspended", exAwaitEvent(t, tx, q, a, "ev", "go", exIntp(1)).Status)
	s := spawn(t, tx, spawnCall{queue: q, task: "p", params: str(`{}`), key: str("pk")})
	require.Equal(t, s.RunID, claimOne(t, tx, q).RunID)
	p := exStarted{task: s.TaskID, run: s.RunID}
	require.Equal(t, "suspended", exAwaitTask(t, tx, q, p, "child", a.task).Status)
	setNow(t, tx, t0.Add(time.Second))
	require.Equal(t, a.run, claimOne(t, tx, q).RunID)
	return a.run
}

var crUUID = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)

// crQueueRows returns every row of the queue's tables, in an order that does
// not depend on ids, with each id replaced by the order of its first
// appearance: two queues built the same way give the same text.
func crQueueRows(t testing.TB, db dbtx, q string) string {
	t.Helper()
	var s string
	require.NoError(t, db.QueryRow(context.Background(), fmt.Sprintf(`
		select jsonb_build_array(
		  (select jsonb_agg(to_jsonb(t) order by t.task_name) from %[1]s t),
		  (select jsonb_agg(to_jsonb(r) order by t.task_name, r.attempt) from %[2]s r join %[1]s t using (task_id)),
		  (select coalesce(jsonb_agg(to_jsonb(c) order by t.task_name, c.step_name), '[]') from %[3]s c join %[1]s t using (task_id)),
		  (select coalesce(jsonb_agg(to_jsonb(w) order by t.task_name, w.step_name), '[]') from %[4]s w join %[1]s t using (task_id)))::text`,
		tableName("t_", q), tableName("r_", q), tableName("c_", q), tableName("w_", q))).Scan(&s))
	ids := map[string]string{}
	return crUUID.ReplaceAllStringFunc(s, func(id string) string {
		if _, ok := ids[id]; !ok {
			ids[id] = fmt.Sprintf("id%d", len(ids)+1)
		}
		return ids[id]
	})
}

// TestCompleteRunsMatchesCompleteRun: the same scenario completed by
// complete_run on one queue and by complete_runs on another leaves the same
// rows: task completed with its result, key freed, deadline dropped, its
// waits deleted, the task waiting for it woken.
func TestCompleteRunsMatchesCompleteRun(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	single, batch := newQueue(t, tx), newQueue(t, tx)
	runSingle := crScenario(t, tx, single)
	runBatch := crScenario(t, tx, batch)
	require.Equal(t, crQueueRows(t, tx, single), crQueueRows(t, tx, batch))
	require.Equal(t, 1, countRows(t, tx, "w_", single, "task_id = (select task_id from "+tableName("r_", single)+" where run_id = $1)", runSingle))

	setNow(t, tx, t0.Add(2*time.Second))
	completeRun(t, tx, single, runSingle, `{"out": [1, 2]}`)
	rows := completeRuns(t, tx, batch, crBatch([]durable.UUID{runBatch}, `{"out": [1, 2]}`))
	require.Equal(t, []crRow{{runBatch, true, nil}}, rows)

	after := crQueueRows(t, tx, single)
	require.Equal(t, after, crQueueRows(t, tx, batch))
	require.Equal(t, 0, countRows(t, tx, "w_", batch, "task_id = (select task_id from "+tableName("r_", batch)+" where run_id = $1)", runBatch))
	require.Equal(t, 1, countRows(t, tx, "t_", batch, "task_name = 'p' and state = 'pending'"))
	require.Equal(t, 1, countRows(t, tx, "t_", batch, "task_name = 't' and state = 'completed' and not key_held and cancel_deadline is null"))
}

// TestCompleteRunsBadInput: anything but an array of {"run_id": uuid,
// "result": any} objects naming each run once is refused with QD006 before
// anything is written; every spelling uuid accepts is accepted.
func TestCompleteRunsBadInput(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	s := exStart(t, tx, q, "")
	id := `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`
	tooMany := "[" + strings.TrimSuffix(strings.Repeat(`{"run_id": `+id+`}, `, 10001), ", ") + "]"
	for _, c := range []struct {
		name, runs string
	}{
		{"SQL NULL", ""},
		{"object", `{"run_id": ` + id + `}`},
		{"string", `"x"`},
		{"JSON null", `null`},
		{"element not an object", `[` + id + `]`},
		{"element null", `[null]`},
		{"no run_id", `[{"result": 1}]`},
		{"run_id a number", `[{"run_id": 1}]`},
		{"run_id null", `[{"run_id": null}]`},
		{"run_id not a uuid", `[{"run_id": "a0eebc99"}]`},
		{"run_id with spaces", `[{"run_id": " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}]`},
		{"run_id with one brace", `[{"run_id": "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}]`},
		{"run_id with a hyphen inside a group", `[{"run_id": "a0eeb-c99-9c0b-4ef8-bb6d-6bb9bd380a11"}]`},
		{"unknown key", `[{"run_id": ` + id + `, "reslt": 1}]`},
		{"one good, one bad", fmt.Sprintf(`[{"run_id": %q}, {"run_id": "no"}]`, s.run)},
		{"same run twice", fmt.Sprintf(`[{"run_id": %q}, {"run_id": %q, "result": 2}]`, s.run, s.run)},
		{"same run in two spellings", fmt.Sprintf(`[{"run_id": %q}, {"run_id": %q}]`, s.run, strings.ToUpper(s.run.String()))},
		{"more than 10000", tooMany},
	} {
		var runs any = c.runs
		if c.runs == "" {
			runs = nil
		}
		e := requireFails(t, tx, "QD006", "select * from durable.complete_runs($1, $2::text::jsonb)", q, runs)
		require.NotEmpty(t, e.Message, c.name)
	}
	requireFails(t, tx, "QD002", "select * from durable.complete_runs('nope', '[]')")
	requireFails(t, tx, "QD001", "select * from durable.complete_runs('no pe', '[]')")
	require.Equal(t, "running", exRun(t, tx, q, s.run).State)

	spellings := []string{
		"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
		"{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12}",
		"a0eebc999c0b4ef8bb6d6bb9bd380a13",
		"a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a14",
		"{a0eebc999c0b4ef8bb6d6bb9bd380a15}",
	}
	elems := make([]string, len(spellings))
	for i, sp := range spellings {
		elems[i] = fmt.Sprintf(`{"run_id": %q}`, sp)
	}
	rows := completeRuns(t, tx, q, "["+strings.Join(elems, ",")+"]")
	require.Len(t, rows, len(spellings))
	for i, r := range rows {
		require.Equal(t, fmt.Sprintf("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1%d", i+1), r.Run.String())
		require.Equal(t, crRow{r.Run, false, str("QD010")}, r)
	}
}

// TestCompleteRunsSkipsLockedRuns forces the two orders in which a batch
// meets a cancellation, 3 times each. A batch reaching a run that an open
// cancel_task holds does not wait: it completes the others and reports the
// run with 55P03, and complete_run then gets QD013. A batch transaction that
// holds a child's run while a cancellation of the parent waits for it, and
// then reaches the parent's run, which the cancellation holds, reports 55P03
// instead of waiting: no deadlock, and the cancellation then finishes.
func TestCompleteRunsSkipsLockedRuns(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.ClonePool(t, 5)
	conns := acquireConns(t, pool, 3)
	a, b, observer := conns[0], conns[1], conns[2]
	pidB := backendPID(t, b)
	q := newQueue(t, pool)
	for i := 0; i < 3; i++ {
		r0, r1, r2 := exStart(t, pool, q, ""), exStart(t, pool, q, ""), exStart(t, pool, q, "")
		txA, err := a.Begin(ctx)
		require.NoError(t, err)
		require.Equal(t, "cancelled", cancelTask(t, txA, q, r1.task))
		callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		rows, err := tryCompleteRuns(callCtx, b, q, crBatch([]durable.UUID{r2.run, r1.run, r0.run}, `2`, `1`, `0`))
		cancel()
		require.NoError(t, err, "round %d: the batch waited for the cancellation", i)
		require.Equal(t, []crRow{{r2.run, true, nil}, {r1.run, false, str("55P03")}, {r0.run, true, nil}}, rows)
		require.NoError(t, txA.Commit(ctx))
		_, err = pool.Exec(ctx, "select durable.complete_run($1, $2, '1')", q, r1.run)
		requireSQLState(t, err, "QD013")

		p := exStart(t, pool, q, "")
		c := spawn(t, pool, spawnCall{queue: q, task: "c", params: str(`{}`),
			options: fmt.Sprintf(`{"parent_task_id": %q}`, p.task)})
		require.Equal(t, c.RunID, claimOne(t, pool, q).RunID)
		txB, err := b.Begin(ctx)
		require.NoError(t, err)
		require.Equal(t, []crRow{{c.RunID, true, nil}}, completeRuns(t, txB, q, crBatch([]durable.UUID{c.RunID})))
		var batchRows []crRow
		var batchErr error
		o := exBlockedUntil(t, observer, a, pidB, func() exOutcome {
			var state string
			err := a.QueryRow(ctx, "select durable.cancel_task($1, $2)", q, p.task).Scan(&state)
			return exOutcome{answer: exAnswer{Status: state}, err: err}
		}, func() error {
			callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			batchRows, batchErr = tryCompleteRuns(callCtx, txB, q, crBatch([]durable.UUID{p.run}))
			if batchErr != nil {
				_ = txB.Rollback(ctx)
				return nil
			}
			return txB.Commit(ctx)
		})
		require.NoError(t, batchErr, "round %d", i)
		require.Equal(t, []crRow{{p.run, false, str("55P03")}}, batchRows)
		require.NoError(t, o.err)
		require.Equal(t, "cancelled", o.answer.Status)
		require.Equal(t, "cancelled", *taskField(t, pool, q, p.task, "state"))
		require.Equal(t, "completed", *taskField(t, pool, q, c.TaskID, "state"))
	}
}

// TestCompleteRunsConcurrentBatchesAndCancels: 3 rounds of 60 parents with a
// child each, all running; 6 goroutines complete the 120 runs in shuffled
// batches of 10 while 4 goroutines cancel the parents (cascading to the
// children). 0 errors (no 40P01); every run is reported exactly once; each
// run reported locked is settled by complete_run (completed, or QD013); every
// task ends completed or cancelled as its run's report says.
func TestCompleteRunsConcurrentBatchesAndCancels(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.ClonePool(t, 12)
	q := newQueue(t, pool)
	const pairs, completers, cancellers, batchSize = 60, 6, 4, 10
	for round := 0; round < 3; round++ {
		var parents []durable.UUID
		taskOf := map[durable.UUID]durable.UUID{}
		for i := 0; i < pairs; i++ {
			p := spawn(t, pool, spawnCall{queue: q, task: "p", params: str(`{}`)})
			c := spawn(t, pool, spawnCall{queue: q, task: "c", params: str(`{}`),
				options: fmt.Sprintf(`{"parent_task_id": %q}`, p.TaskID)})
			parents = append(parents, p.TaskID)
			taskOf[p.RunID], taskOf[c.RunID] = p.TaskID, c.TaskID
		}
		require.Len(t, claim(t, pool, q, "w", 60, 2*pairs), 2*pairs)
		runs := make([]durable.UUID, 0, len(taskOf))
		for r := range taskOf {
			runs = append(runs, r)
		}
		rand.Shuffle(len(runs), func(i, j int) { runs[i], runs[j] = runs[j], runs[i] })
		rand.Shuffle(len(parents), func(i, j int) { parents[i], parents[j] = parents[j], parents[i] })

		var mu sync.Mutex
		var errs []error
		outcome := map[durable.UUID]string{} // run -> "completed" or "cancelled"
		record := func(run durable.UUID, o string, err error) {
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			if _, dup := outcome[run]; dup {
				errs = append(errs, fmt.Errorf("run %s reported twice", run))
			}
			outcome[run] = o
		}
		together(completers+cancellers, func(g int) {
			if g >= completers {
				for i := g - completers; i < len(parents); i += cancellers {
					var state string
					if err := pool.QueryRow(ctx, "select durable.cancel_task($1, $2)", q, parents[i]).Scan(&state); err != nil {
						record(durable.UUID{}, "", err)
					}
				}
				return
			}
			for start := g * batchSize; start < len(runs); start += completers * batchSize {
				batch := runs[start:min(start+batchSize, len(runs))]
				rows, err := tryCompleteRuns(ctx, pool, q, crBatch(batch))
				if err != nil {
					record(durable.UUID{}, "", err)
					continue
				}
				for _, r := range rows {
					switch {
					case r.Completed:
						record(r.Run, "completed", nil)
					case *r.Code == "QD013":
						record(r.Run, "cancelled", nil)
					case *r.Code == "55P03":
						_, err := pool.Exec(ctx, "select durable.complete_run($1, $2, null)", q, r.Run)
						var pgErr *pgconn.PgError
						switch {
						case err == nil:
							record(r.Run, "completed", nil)
						case errors.As(err, &pgErr) && pgErr.Code == "QD013":
							record(r.Run, "cancelled", nil)
						default:
							record(r.Run, "", err)
						}
					default:
						record(r.Run, "", fmt.Errorf("run %s: unexpected code %s", r.Run, *r.Code))
					}
				}
			}
		})
		require.Empty(t, errs, "round %d", round)
		require.Len(t, outcome, 2*pairs, "round %d", round)
		for run, o := range outcome {
			require.Equal(t, o, *taskField(t, pool, q, taskOf[run], "state"), "round %d, run %s", round, run)
		}
	}
}
