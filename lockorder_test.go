package durable_test

// Lock ordering: two calls on the same task never deadlock, whichever of them
// gets its locks first. Each race is forced: a third transaction holds one of
// the rows involved (or nothing), both calls start and block behind it in
// either order, then it lets go. Sessions run with deadlock_timeout = 100ms
// and lock_timeout = 5s, so a deadlock surfaces as 40P01 within a fraction of
// a second and a hang as 55P03. Afterwards the queue must be consistent: a
// finished task has no live run, a live one exactly one, and the children of
// a cancelled or failed parent are finished.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/internal/testdb"
)

// lockPool opens a pool on a database of the test's own whose sessions
// detect deadlocks after 100ms and give up waiting for a lock after 5s.
func lockPool(t *testing.T, maxConns int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(testdb.URL(testdb.Clone(t)))
	require.NoError(t, err)
	cfg.MaxConns = maxConns
	cfg.ConnConfig.RuntimeParams["deadlock_timeout"] = "100ms"
	cfg.ConnConfig.RuntimeParams["lock_timeout"] = "5s"
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// raceIDs are the rows a race works on.
type raceIDs struct {
	queue         string
	task, run     durable.UUID // the task both calls touch, and its live run
	child, crun   durable.UUID // its child and the child's run, when the race has one
	event         string
	childOfParent bool
}

// bind replaces the names in sql by parameters and returns their values.
func (ids raceIDs) bind(sql string) (string, []any) {
	var args []any
	for _, p := range []struct {
		name  string
		value any
	}{{":queue", ids.queue}, {":task", ids.task}, {":run", ids.run}, {":child", ids.child}, {":crun", ids.crun}, {":event", ids.event}} {
		if strings.Contains(sql, p.name) {
			args = append(args, p.value)
			sql = strings.ReplaceAll(sql, p.name, fmt.Sprintf("$%d", len(args)))
		}
	}
	return sql, args
}

// lockRace is two calls on the same task, and the rows a third transaction
// may hold while both start.
type lockRace struct {
	name  string
	setup func(t *testing.T, db dbtx, q string) raceIDs
	calls [2]string // SQL with :queue, :task, :run, :child, :crun (the child's run), :event
	// allowed are the SQLSTATEs a call may end with, besides success.
	allowed []string
}

func spawnClaimed(t *testing.T, db dbtx, q, options string) (task, run durable.UUID) {
	t.Helper()
	s := spawn(t, db, spawnCall{queue: q, task: "t", options: options})
	runs := claim(t, db, q, "w", 30, 1)
	require.Len(t, runs, 1)
	require.Equal(t, s.TaskID, runs[0].TaskID)
	return s.TaskID, runs[0].RunID
}

// parentAwaitingChild makes a parent whose run waits for its running child.
func parentAwaitingChild(t *testing.T, db dbtx, q string) raceIDs {
	t.Helper()
	parent, prun := spawnClaimed(t, db, q, "")
	child := spawn(t, db, spawnCall{queue: q, task: "child",
		options: fmt.Sprintf(`{"parent_task_id": %q}`, parent.String())})
	var status string
	require.NoError(t, db.QueryRow(context.Background(),
		"select status from durable.await_task_result($1, $2, $3, 'child', $4)", q, parent, prun, child.TaskID).Scan(&status))
	require.Equal(t, "suspended", status)
	runs := claim(t, db, q, "w", 30, 1)
	require.Len(t, runs, 1)
	require.Equal(t, child.TaskID, runs[0].TaskID)
	return raceIDs{queue: q, task: parent, run: prun, child: child.TaskID, crun: runs[0].RunID, childOfParent: true}
}

var lockRaces = []lockRace{
	{
		name: "complete vs cancel",
		setup: func(t *testing.T, db dbtx, q string) raceIDs {
			task, run := spawnClaimed(t, db, q, "")
			return raceIDs{task: task, run: run}
		},
		calls:   [2]string{"select durable.complete_run(:queue, :run, '{}')", "select durable.cancel_task(:queue, :task)"},
		allowed: []string{"QD013"},
	},
	{
		name: "fail vs cancel",
		setup: func(t *testing.T, db dbtx, q string) raceIDs {
			task, run := spawnClaimed(t, db, q, "")
			return raceIDs{task: task, run: run}
		},
		calls:   [2]string{`select durable.fail_run(:queue, :run, '{"m": 1}')`, "select durable.cancel_task(:queue, :task)"},
		allowed: []string{"QD013"},
	},
	{
		name: "extend vs cancel",
		setup: func(t *testing.T, db dbtx, q string) raceIDs {
			task, run := spawnClaimed(t, db, q, "")
			return raceIDs{task: task, run: run}
		},
		calls:   [2]string{"select durable.extend_claim(:queue, :run, 30)", "select durable.cancel_task(:queue, :task)"},
		allowed: []string{"QD013"},
	},
	{
		name: "claim vs cancel",
		setup: func(t *testing.T, db dbtx, q string) raceIDs {
			s := spawn(t, db, spawnCall{queue: q, task: "t"})
			return raceIDs{task: s.TaskID, run: s.RunID}
		},
		calls: [2]string{"select count(*) from durable.claim_task(:queue, 'w2', 30, 5)", "select durable.cancel_task(:queue, :task)"},
	},
	{
		name: "emit vs cancel of a waiting task",
		setup: func(t *testing.T, db dbtx, q string) raceIDs {
			task, run := spawnClaimed(t, db, q, "")
			mustExec(t, db, "select durable.await_event($1, $2, $3, 'wait', 'ev')", q, task, run)
			return raceIDs{task: task, run: run, event: "ev"}
		},
		calls: [2]string{"select durable.emit_event(:queue, :event, '{}')", "select durable.cancel_task(:queue, :task)"},
	},
	{
		name: "emit vs await",
		setup: func(t *testing.T, db dbtx, q string) raceIDs {
			task, run := spawnClaimed(t, db, q, "")
			return raceIDs{task: task, run: run, event: "ev"}
		},
		calls: [2]string{"select durable.emit_event(:queue, :event, '{}')", "select durable.await_event(:queue, :task, :run, 'wait', :event)"},
	},
	{
		name: "emit vs complete (another task waits for the event)",
		setup: func(t *testing.T, db dbtx, q string) raceIDs {
			task, run := spawnClaimed(t, db, q, "")
			// Another task waits for the event; the one completing holds a
			// checkpoint: both touch the same queue's wait and event rows.
			other, orun := spawnClaimed(t, db, q, "")
			mustExec(t, db, "select durable.await_event($1, $2, $3, 'wait', 'ev')", q, other, orun)
			mustExec(t, db, "select durable.set_task_checkpoint_state($1, $2, 'step', '1', $3)", q, task, run)
			return raceIDs{task: task, run: run, event: "ev"}
		},
		calls: [2]string{"select durable.emit_event(:queue, :event, '{}')", "select durable.complete_run(:queue, :run, '{}')"},
	},
	{
		name:    "cancel parent vs complete child",
		setup:   func(t *testing.T, db dbtx, q string) raceIDs { return parentAwaitingChild(t, db, q) },
		calls:   [2]string{"select durable.cancel_task(:queue, :task)", "select durable.complete_run(:queue, :crun, '{}')"},
		allowed: []string{"QD013"},
	},
	{
		name:    "cancel parent vs fail child",
		setup:   func(t *testing.T, db dbtx, q string) raceIDs { return parentAwaitingChild(t, db, q) },
		calls:   [2]string{"select durable.cancel_task(:queue, :task)", `select durable.fail_run(:queue, :crun, '{"retryable": false}')`},
		allowed: []string{"QD013"},
	},
	{
		name:    "cancel child vs cancel parent",
		setup:   func(t *testing.T, db dbtx, q string) raceIDs { return parentAwaitingChild(t, db, q) },
		calls:   [2]string{"select durable.cancel_task(:queue, :child)", "select durable.cancel_task(:queue, :task)"},
		allowed: []string{},
	},
	{
		name: "cancel parent vs spawn child",
		setup: func(t *testing.T, db dbtx, q string) raceIDs {
			task, run := spawnClaimed(t, db, q, "")
			return raceIDs{task: task, run: run}
		},
		calls: [2]string{"select durable.cancel_task(:queue, :task)",
			`select durable.spawn_task(:queue, 'child', '{}', false, null, jsonb_build_object('parent_task_id', :task::uuid))`},
		allowed: []string{"QD016"},
	},
	{
		name: "fail parent vs spawn child",
		setup: func(t *testing.T, db dbtx, q string) raceIDs {
			task, run := spawnClaimed(t, db, q, "")
			return raceIDs{task: task, run: run}
		},
		calls: [2]string{`select durable.fail_run(:queue, :run, '{"retryable": false}')`,
			`select durable.spawn_task(:queue, 'child', '{}', false, null, jsonb_build_object('parent_task_id', :task::uuid))`},
		allowed: []string{"QD016"},
	},
}

// lockHolds are the rows the third transaction may hold: none, the task's
// run, the task, the child's run, the child.
var lockHolds = []struct {
	name string
	sql  string // $1 queue-qualified table is formatted in; $2 id
}{
	{"nothing", ""},
	{"run row", "select 1 from %s where run_id = $1 for update"},
	{"task row", "select 1 from %s where task_id = $1 for update"},
	{"child's run row", "select 1 from %s where run_id = $1 for update"},
	{"child row", "select 1 from %s where task_id = $1 for update"},
}

// TestLockOrderForcedInterleavings: every race, with each row held while both
// calls start, in both orders: zero 40P01, zero 55P03, only the allowed
// errors, and a consistent queue afterwards.
func TestLockOrderForcedInterleavings(t *testing.T) {
	t.Parallel()
	for _, race := range lockRaces {
		t.Run(race.name, func(t *testing.T) {
			t.Parallel()
			pool := lockPool(t, 6)
			cases := 0
			for _, hold := range lockHolds {
				for _, first := range []int{0, 1} {
					q := newQueue(t, pool)
					ids := race.setup(t, pool, q)
					ids.queue = q
					if !ids.childOfParent && (hold.name == "child's run row" || hold.name == "child row") {
						continue
					}
					cases++
					runForcedRace(t, pool, race, ids, hold.name, hold.sql, first)
					requireConsistentQueue(t, pool, q)
				}
			}
			require.Positive(t, cases)
		})
	}
}

// runForcedRace runs race's two calls, the one numbered first starting first,
// while a third transaction holds the row hold names.
func runForcedRace(t *testing.T, pool *pgxpool.Pool, race lockRace, ids raceIDs, holdName, holdSQL string, first int) {
	t.Helper()
	ctx := context.Background()
	what := fmt.Sprintf("%s, holding %s, call %d first", race.name, holdName, first+1)
	conns := make([]*pgxpool.Conn, 3)
	for i := range conns {
		c, err := pool.Acquire(ctx)
		require.NoError(t, err)
		defer c.Release()
		conns[i] = c
	}
	holder := conns[2]
	holderPID := holder.Conn().PgConn().PID()
	_, err := holder.Exec(ctx, "begin")
	require.NoError(t, err)
	if holdSQL != "" {
		var table string
		var id durable.UUID
		switch holdName {
		case "run row":
			table, id = tableName("r_", ids.queue), ids.run
		case "task row":
			table, id = tableName("t_", ids.queue), ids.task
		case "child's run row":
			table, id = tableName("r_", ids.queue), ids.crun
		case "child row":
			table, id = tableName("t_", ids.queue), ids.child
		}
		_, err := holder.Exec(ctx, fmt.Sprintf(holdSQL, table), id)
		require.NoError(t, err, what)
	}
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for _, i := range []int{first, 1 - first} {
		c := conns[i]
		done := make(chan struct{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(done)
			sql, args := ids.bind(race.calls[i])
			_, errs[i] = c.Exec(ctx, sql, args...)
		}()
		waitBlockedOrDone(t, pool, c.Conn().PgConn().PID(), holderPID, done)
	}
	_, err = holder.Exec(ctx, "rollback")
	require.NoError(t, err)
	wg.Wait()
	for i, err := range errs {
		if err == nil {
			continue
		}
		var pgErr *pgconn.PgError
		require.True(t, errors.As(err, &pgErr), "%s: call %d: %v", what, i+1, err)
		require.NotEqual(t, "40P01", pgErr.Code, "%s: call %d deadlocked: %s", what, i+1, pgErr.Message)
		require.NotEqual(t, "55P03", pgErr.Code, "%s: call %d waited 5s for a lock: %s", what, i+1, pgErr.Message)
		require.Contains(t, race.allowed, pgErr.Code, "%s: call %d: %s", what, i+1, pgErr.Message)
	}
}

// waitBlockedOrDone waits until backend pid either waits for a lock or has
// finished its call (done closed).
func waitBlockedOrDone(t *testing.T, observer dbtx, pid, holder uint32, done <-chan struct{}) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-done:
			return
		default:
		}
		var blocked bool
		require.NoError(t, observer.QueryRow(context.Background(),
			"select cardinality(pg_blocking_pids($1)) > 0", int(pid)).Scan(&blocked))
		if blocked {
			return
		}
		require.True(t, time.Now().Before(deadline), "backend %d neither blocked nor finished", pid)
		time.Sleep(2 * time.Millisecond)
	}
}

// requireConsistentQueue checks the invariants every race must leave.
func requireConsistentQueue(t *testing.T, db dbtx, q string) {
	t.Helper()
	tk, r := tableName("t_", q), tableName("r_", q)
	checks := []struct{ what, sql string }{
		{"finished tasks with a live run", `select count(*) from ` + tk + ` t where t.state in ('completed', 'failed', 'cancelled')
		   and exists (select from ` + r + ` r where r.task_id = t.task_id and r.state in ('pending', 'running', 'sleeping'))`},
		{"live tasks without exactly one live run", `select count(*) from ` + tk + ` t where t.state not in ('completed', 'failed', 'cancelled')
		   and (select count(*) from ` + r + ` r where r.task_id = t.task_id and r.state in ('pending', 'running', 'sleeping')) <> 1`},
		{"live tasks whose state differs from their live run's", `select count(*) from ` + tk + ` t join ` + r + ` r
		   on r.task_id = t.task_id and r.state in ('pending', 'running', 'sleeping') where r.state <> t.state`},
		{"live children of cancelled or failed parents", `select count(*) from ` + tk + ` c join ` + tk + ` p on p.task_id = c.parent_task_id
		   where p.state in ('failed', 'cancelled') and c.state not in ('completed', 'failed', 'cancelled')`},
		{"finished tasks holding their key", `select count(*) from ` + tk + ` where key_held and state in ('completed', 'failed', 'cancelled')`},
	}
	for _, c := range checks {
		var n int
		require.NoError(t, db.QueryRow(context.Background(), c.sql).Scan(&n), c.what)
		if n > 0 && strings.HasPrefix(c.what, "live children") {
			var rows string
			require.NoError(t, db.QueryRow(context.Background(), `select string_agg(format('child %s %s attempts %s (%s) of parent %s %s (%s)',
			   c.task_id, c.state, c.attempts, c.failure_reason, p.task_id, p.state, p.failure_reason), E'\n')
			   from `+tk+` c join `+tk+` p on p.task_id = c.parent_task_id
			  where p.state in ('failed', 'cancelled') and c.state not in ('completed', 'failed', 'cancelled')`).Scan(&rows))
			t.Log(rows)
		}
		require.Zero(t, n, "%s in queue %s", c.what, q)
	}
}

// TestLockOrderSoak: 8 clients make random calls (spawn with one of 4 keys,
// children, claim, complete, fail, extend, cancel, emit, await, retry) on the
// same few tasks for 2 seconds: zero 40P01, zero 55P03, only the schema's
// expected refusals, and a consistent queue afterwards.
func TestLockOrderSoak(t *testing.T) {
	t.Parallel()
	const clients, duration = 8, 2 * time.Second
	pool := lockPool(t, clients+2)
	ctx := context.Background()
	q := newQueue(t, pool)

	allowed := map[string]bool{
		"QD010": true, "QD011": true, "QD012": true, "QD013": true, // the run ended under us
		"QD014": true, "QD015": true, "QD016": true, "QD020": true, // retry, parent finished, unknown task
		"40001": true, // a key changed hands too often
	}
	var mu sync.Mutex
	codes := map[string]int{}
	calls := 0
	deadline := time.Now().Add(duration)
	together(clients, func(i int) {
		rng := rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano())))
		conn, err := pool.Acquire(ctx)
		if err != nil {
			panic(err)
		}
		defer conn.Release()
		for time.Now().Before(deadline) {
			err := soakCall(ctx, conn, q, rng)
			mu.Lock()
			calls++
			if err != nil {
				var pgErr *pgconn.PgError
				if errors.As(err, &pgErr) {
					codes[pgErr.Code]++
					if pgErr.Code == "40P01" {
						t.Logf("deadlock: %s\n%s\n%s", pgErr.Message, pgErr.Detail, pgErr.Where)
					}
				} else {
					codes[err.Error()]++
				}
			}
			mu.Unlock()
		}
	})
	t.Logf("%d calls by %d clients in %s; errors by SQLSTATE: %v", calls, clients, duration, codes)
	require.Zero(t, codes["40P01"], "deadlocks")
	require.Zero(t, codes["55P03"], "lock waits over 5s")
	for code := range codes {
		require.True(t, allowed[code], "unexpected error %s (%d times)", code, codes[code])
	}
	require.Greater(t, calls, 100)
	requireConsistentQueue(t, pool, q)
}

// soakCall makes one random call on one of the queue's few tasks.
func soakCall(ctx context.Context, conn *pgxpool.Conn, q string, rng *rand.Rand) error {
	key := fmt.Sprintf("k%d", rng.IntN(4))
	event := fmt.Sprintf("ev%d-%d", rng.IntN(3), time.Now().UnixMilli()/200)
	// A random task or run of the queue (or none).
	pick := func(table, column, where string) any {
		var id *durable.UUID
		_ = conn.QueryRow(ctx, fmt.Sprintf("select %s from %s where %s order by random() limit 1", column, tableName(table, q), where)).Scan(&id)
		if id == nil {
			return durable.UUID{}
		}
		return *id
	}
	var err error
	switch rng.IntN(11) {
	case 0:
		_, err = conn.Exec(ctx, "select durable.spawn_task($1, 't', '{}', false, $2, '{\"retry_strategy\": {\"kind\": \"none\"}}')", q, key)
	case 1:
		_, err = conn.Exec(ctx, "select durable.spawn_task($1, 'child', '{}', false, null, jsonb_build_object('parent_task_id', $2::uuid))",
			q, pick("t_", "task_id", "true"))
	case 2:
		_, err = conn.Exec(ctx, "select durable.claim_task($1, 'w', 30, 2)", q)
	case 3:
		_, err = conn.Exec(ctx, "select durable.complete_run($1, $2, '{}')", q, pick("r_", "run_id", "state = 'running'"))
	case 4:
		_, err = conn.Exec(ctx, `select durable.fail_run($1, $2, '{"m": 1}')`, q, pick("r_", "run_id", "state = 'running'"))
	case 5:
		_, err = conn.Exec(ctx, "select durable.extend_claim($1, $2, 30)", q, pick("r_", "run_id", "state = 'running'"))
	case 6:
		_, err = conn.Exec(ctx, "select durable.cancel_task($1, $2)", q, pick("t_", "task_id", "true"))
	case 7:
		_, err = conn.Exec(ctx, "select durable.emit_event($1, $2, '{}')", q, event)
	case 8:
		var task, run *durable.UUID
		_ = conn.QueryRow(ctx, fmt.Sprintf("select task_id, run_id from %s where state = 'running' order by random() limit 1", tableName("r_", q))).Scan(&task, &run)
		if task == nil {
			return nil
		}
		_, err = conn.Exec(ctx, "select durable.await_event($1, $2, $3, $4, $5)", q, *task, *run, "s"+event, event)
	case 9:
		var task, run *durable.UUID
		_ = conn.QueryRow(ctx, fmt.Sprintf("select task_id, run_id from %s where state = 'running' order by random() limit 1", tableName("r_", q))).Scan(&task, &run)
		if task == nil {
			return nil
		}
		// A task awaits one of its children, as AwaitChild does. (Two tasks
		// that await each other wait forever by design; in SQL their calls
		// can also end in 40P01.)
		_, err = conn.Exec(ctx, "select durable.await_task_result($1, $2, $3, $4, $5)", q, *task, *run, "c"+event,
			pick("t_", "task_id", fmt.Sprintf("parent_task_id = '%s'", task.String())))
	case 10:
		_, err = conn.Exec(ctx, "select durable.retry_task($1, $2)", q, pick("t_", "task_id", "state in ('failed', 'cancelled')"))
	}
	return err
}

// TestLockOrderSpawnChildVsParentEnd: a child spawned in a transaction that
// is still open while its parent is cancelled (or fails) is cancelled with
// it; a parent cancelled in a transaction still open while a child is
// spawned refuses the child (QD016) or cancels it. Either way no live child
// of a finished parent remains.
func TestLockOrderSpawnChildVsParentEnd(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := lockPool(t, 6)
	spawnChild := `select durable.spawn_task(:queue, 'child', '{}', false, null, jsonb_build_object('parent_task_id', :task::uuid))`
	ends := map[string]string{
		"cancel": "select durable.cancel_task(:queue, :task)",
		"fail":   `select durable.fail_run(:queue, :run, '{"retryable": false}')`,
	}
	for endName, end := range ends {
		for _, openFirst := range []string{"spawn", "end"} {
			what := fmt.Sprintf("%s of the parent, %s's transaction open first", endName, openFirst)
			q := newQueue(t, pool)
			task, run := spawnClaimed(t, pool, q, "")
			ids := raceIDs{queue: q, task: task, run: run}
			first, second := spawnChild, end
			if openFirst == "end" {
				first, second = end, spawnChild
			}
			tx, err := pool.Begin(ctx)
			require.NoError(t, err)
			sql, args := ids.bind(first)
			_, err = tx.Exec(ctx, sql, args...)
			require.NoError(t, err, what)
			conn, err := pool.Acquire(ctx)
			require.NoError(t, err)
			done := make(chan struct{})
			var secondErr error
			go func() {
				defer close(done)
				sql, args := ids.bind(second)
				_, secondErr = conn.Exec(ctx, sql, args...)
			}()
			waitBlockedOrDone(t, pool, conn.Conn().PgConn().PID(), backendPID(t, tx), done)
			require.NoError(t, tx.Commit(ctx))
			<-done
			conn.Release()
			if secondErr != nil {
				requireSQLState(t, secondErr, "QD016")
			}
			requireConsistentQueue(t, pool, q)
		}
	}
}

// TestLockOrderSpawnVsDropQueue: a spawn (or claim) that meets a queue being
// dropped by a transaction still open waits for it and then says the queue
// does not exist (QD002), never that a table is missing.
func TestLockOrderSpawnVsDropQueue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := lockPool(t, 4)
	for _, call := range []string{
		"select durable.spawn_task($1, 't')",
		"select durable.spawn_task($1, 't', '{}', false, 'key')",
		"select durable.claim_task($1, 'w')",
		"select durable.emit_event($1, 'ev')",
	} {
		q := newQueue(t, pool)
		spawn(t, pool, spawnCall{queue: q, task: "t", key: str("key")})
		tx, err := pool.Begin(ctx)
		require.NoError(t, err)
		mustExec(t, tx, "select durable.drop_queue($1)", q)
		conn, err := pool.Acquire(ctx)
		require.NoError(t, err)
		done := make(chan struct{})
		var callErr error
		go func() {
			defer close(done)
			_, callErr = conn.Exec(ctx, call, q)
		}()
		waitBlockedOrDone(t, pool, conn.Conn().PgConn().PID(), backendPID(t, tx), done)
		require.NoError(t, tx.Commit(ctx))
		<-done
		conn.Release()
		requireSQLState(t, callErr, "QD002")
	}
}
