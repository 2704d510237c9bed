package durable_test

// Key retention (the spawn option key_retention_seconds): a finished task
// keeps its key for the retention, and spawns with the key get it back; then
// the key is taken over, race-free. The rule is in the header of
// sql/functions/spawn_task.sql.

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/internal/testdb"
)

// endings are the three ways a task ends, each applied to a task whose only
// run is pending; they return the task's final state.
var endings = []struct {
	state string
	end   func(t testing.TB, db dbtx, queue string, task durable.UUID)
}{
	{"completed", func(t testing.TB, db dbtx, q string, task durable.UUID) {
		r := claimOne(t, db, q)
		require.Equal(t, task, r.TaskID)
		completeRun(t, db, q, r.RunID, `{"sent": true}`)
	}},
	{"failed", func(t testing.TB, db dbtx, q string, task durable.UUID) {
		r := claimOne(t, db, q)
		require.Equal(t, task, r.TaskID)
		failRun(t, db, q, r.RunID, `{"message": "no", "retryable": false}`)
	}},
	{"cancelled", func(t testing.TB, db dbtx, q string, task durable.UUID) {
		require.Equal(t, "cancelled", cancelTask(t, db, q, task))
	}},
}

// TestKeyRetentionReturnsFinishedTask: with key_retention_seconds 3600, a
// task that ended at E keeps its key until E + 1h: a spawn up to the last
// microsecond before gets the finished task (created = false, its final
// state, its result readable, nothing written); a spawn at E + 1h creates a
// new task. For each way a task ends, and each kind of key.
func TestKeyRetentionReturnsFinishedTask(t *testing.T) {
	t.Parallel()
	for _, kind := range keyKinds {
		for _, ending := range endings {
			t.Run(kind.name+"/"+ending.state, func(t *testing.T) {
				t.Parallel()
				tx := testdb.Tx(t)
				setNow(t, tx, t0)
				q := newQueue(t, tx)
				call := kind.call(q)
				call.options = `{"key_retention_seconds": 3600}`
				first := spawn(t, tx, call)
				require.True(t, first.Created)

				end := t0.Add(10 * time.Second)
				setNow(t, tx, end)
				ending.end(t, tx, q, first.TaskID)
				require.Equal(t, "true", *taskField(t, tx, q, first.TaskID, "key_held"), "the key stays held")

				for _, at := range []time.Time{end, end.Add(30 * time.Minute), end.Add(time.Hour - time.Microsecond)} {
					setNow(t, tx, at)
					before := queueSnapshot(t, tx, q)
					again := spawn(t, tx, kind.call(q)) // no options: a duplicate's options do not matter
					require.Equal(t, spawned{TaskID: first.TaskID, RunID: again.RunID, Attempt: again.Attempt,
						Created: false, State: ending.state}, again, "at %s", at)
					require.Equal(t, before, queueSnapshot(t, tx, q), "a spawn that finds the retained task writes nothing")
				}
				res := taskResult(t, tx, q, first.TaskID)
				require.Equal(t, ending.state, res.state)
				if ending.state == "completed" {
					require.JSONEq(t, `{"sent": true}`, *res.result)
				}

				setNow(t, tx, end.Add(time.Hour))
				next := spawn(t, tx, kind.call(q))
				require.True(t, next.Created, "the retention has expired: the key is free")
				require.NotEqual(t, first.TaskID, next.TaskID)
				require.Equal(t, "false", *taskField(t, tx, q, first.TaskID, "key_held"))
				require.Nil(t, taskField(t, tx, q, first.TaskID, "key_expires_at"))
				require.Equal(t, 1, countRows(t, tx, "t_", q, "key_held"))
				again := spawn(t, tx, kind.call(q))
				require.Equal(t, next.TaskID, again.TaskID)
				require.False(t, again.Created)
			})
		}
	}
}

// TestKeyRetentionDefault: without the option, or with 0, a key is freed
// when its task ends, as before retention existed.
func TestKeyRetentionDefault(t *testing.T) {
	t.Parallel()
	for _, opts := range []string{"", `{"key_retention_seconds": 0}`, `{"key_retention_seconds": 0.0}`, `{"key_retention_seconds": null}`} {
		t.Run(opts, func(t *testing.T) {
			t.Parallel()
			tx := testdb.Tx(t)
			setNow(t, tx, t0)
			q := newQueue(t, tx)
			call := spawnCall{queue: q, task: "t", params: str(`{}`), key: str("k"), options: opts}
			first := spawn(t, tx, call)
			completeRun(t, tx, q, claimOne(t, tx, q).RunID, `1`)
			require.Equal(t, "false", *taskField(t, tx, q, first.TaskID, "key_held"))
			require.Nil(t, taskField(t, tx, q, first.TaskID, "key_retention"))
			second := spawn(t, tx, call)
			require.True(t, second.Created, "the key was freed when the task ended")
		})
	}
}

// TestKeyRetentionForever: "forever" keeps the key a century later, and
// cleanup_tasks does not delete the task that holds it; a fractional
// retention ends at its exact microsecond.
func TestKeyRetentionForever(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	forever := spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`), key: str("f"),
		options: `{"key_retention_seconds": "forever"}`})
	require.Equal(t, "cancelled", cancelTask(t, tx, q, forever.TaskID))
	require.Equal(t, "infinity", *taskField(t, tx, q, forever.TaskID, "key_expires_at"))

	setNow(t, tx, t0.AddDate(100, 0, 0))
	again := spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`), key: str("f")})
	require.Equal(t, forever.TaskID, again.TaskID)
	require.False(t, again.Created)
	require.Equal(t, "cancelled", again.State)
	require.Equal(t, 0, cleanupTasks(t, tx, q, 0, 1000))
	require.Equal(t, 1, countTasks(t, tx, q))

	setNow(t, tx, t0)
	frac := spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`), key: str("half"),
		options: `{"key_retention_seconds": 0.5}`})
	require.Equal(t, "cancelled", cancelTask(t, tx, q, frac.TaskID))
	setNow(t, tx, t0.Add(500*time.Millisecond-time.Microsecond))
	require.False(t, spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`), key: str("half")}).Created)
	setNow(t, tx, t0.Add(500*time.Millisecond))
	require.True(t, spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`), key: str("half")}).Created)
}

// TestKeyRetentionBadValues: anything but a number from 0 to 315360000 or
// the string "forever" is QD005 naming the option, from spawn_task and from
// spawn_tasks (naming the element), with nothing written.
func TestKeyRetentionBadValues(t *testing.T) {
	t.Parallel()
	for _, v := range []string{`-1`, `-0.5`, `315360001`, `"1h"`, `"Forever"`, `"infinity"`, `true`, `{}`, `[]`, `"3600"`} {
		t.Run(v, func(t *testing.T) {
			t.Parallel()
			tx := testdb.Tx(t)
			q := newQueue(t, tx)
			opts := fmt.Sprintf(`{"key_retention_seconds": %s}`, v)
			pgErr := requireFails(t, tx, "QD005",
				"select * from durable.spawn_task($1, 't', '{}', false, 'k', $2::text::jsonb)", q, opts)
			require.Contains(t, pgErr.Message, "key_retention_seconds")
			batch := batchOf(t, spawnCall{task: "t", params: str(`{}`)},
				spawnCall{task: "t", params: str(`{}`), key: str("k"), options: opts})
			pgErr = requireFails(t, tx, "QD005", "select * from durable.spawn_tasks($1, $2::text::jsonb)", q, batch)
			require.Contains(t, pgErr.Message, "key_retention_seconds")
			require.Contains(t, pgErr.Message, "element 2")
			require.Equal(t, 0, countTasks(t, tx, q))
		})
	}
}

// TestKeyRetentionBatch: spawn_tasks keeps and honours retention like
// spawn_task: the finished task comes back while retained (from either kind
// of spawn), and after the expiry two elements of one batch with the key get
// one new task, created once.
func TestKeyRetentionBatch(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	keyed := spawnCall{task: "t", params: str(`{}`), key: str("k"), options: `{"key_retention_seconds": 60}`}
	rows := spawnBatch(t, tx, q, batchOf(t, keyed, spawnCall{task: "t", params: str(`{}`), onlyOnce: true,
		options: `{"key_retention_seconds": "forever"}`}))
	require.True(t, rows[0].Created)
	require.Equal(t, "60", *taskField(t, tx, q, rows[0].TaskID, "key_retention"))
	require.Equal(t, "Infinity", *taskField(t, tx, q, rows[1].TaskID, "key_retention"))
	for range rows {
		r := claimOne(t, tx, q)
		completeRun(t, tx, q, r.RunID, `"done"`)
	}

	setNow(t, tx, t0.Add(59*time.Second))
	again := spawnBatch(t, tx, q, batchOf(t, keyed, keyed, spawnCall{task: "t", params: str(`{}`), onlyOnce: true}))
	require.Equal(t, rows[0].TaskID, again[0].TaskID)
	require.Equal(t, rows[0].TaskID, again[1].TaskID)
	require.Equal(t, rows[1].TaskID, again[2].TaskID)
	for _, r := range again {
		require.False(t, r.Created)
		require.Equal(t, "completed", r.State)
	}
	single := spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`), key: str("k")})
	require.Equal(t, rows[0].TaskID, single.TaskID)

	setNow(t, tx, t0.Add(60*time.Second))
	after := spawnBatch(t, tx, q, batchOf(t, keyed, keyed, spawnCall{task: "t", params: str(`{}`), onlyOnce: true}))
	require.True(t, after[0].Created)
	require.False(t, after[1].Created)
	require.Equal(t, after[0].TaskID, after[1].TaskID)
	require.NotEqual(t, rows[0].TaskID, after[0].TaskID)
	require.Equal(t, rows[1].TaskID, after[2].TaskID, "forever is still held")
	require.Equal(t, 2, countRows(t, tx, "t_", q, "key_held"))
}

// TestKeyRetentionRetryTask: an in-place retry of a failed task that retains
// its key keeps holding it; a retry whose key another task holds (live, or
// finished and retained) is QD014 naming that task; a holder whose retention
// expired is released and the retry takes the key; spawn_new carries the
// retention over.
func TestKeyRetentionRetryTask(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	call := spawnCall{queue: q, task: "t", params: str(`{}`), key: str("k"), options: `{"key_retention_seconds": 60}`}
	retry := func(task durable.UUID, opts string) (spawned, error) { // in a savepoint
		ctx := context.Background()
		sp, err := tx.Begin(ctx)
		require.NoError(t, err)
		var s spawned
		err = sp.QueryRow(ctx,
			"select task_id, run_id, attempt, created, state from durable.retry_task($1, $2, $3::text::jsonb)",
			q, task, opts).Scan(&s.TaskID, &s.RunID, &s.Attempt, &s.Created, &s.State)
		if err != nil {
			require.NoError(t, sp.Rollback(ctx))
			return s, err
		}
		require.NoError(t, sp.Commit(ctx))
		return s, nil
	}
	failNow := func(task durable.UUID) {
		r := claimOne(t, tx, q)
		require.Equal(t, task, r.TaskID)
		failRun(t, tx, q, r.RunID, `{"retryable": false}`)
	}

	a := spawn(t, tx, call)
	failNow(a.TaskID)
	r, err := retry(a.TaskID, `{}`)
	require.NoError(t, err)
	require.Equal(t, spawned{TaskID: a.TaskID, RunID: r.RunID, Attempt: 2, Created: false, State: "pending"}, r)
	require.Equal(t, "true", *taskField(t, tx, q, a.TaskID, "key_held"))
	require.Nil(t, taskField(t, tx, q, a.TaskID, "key_expires_at"))
	dup := spawn(t, tx, call)
	require.Equal(t, a.TaskID, dup.TaskID)
	require.Equal(t, "pending", dup.State)

	// A fails again at t0+1s: retained until t0+61s, counted from this end.
	setNow(t, tx, t0.Add(time.Second))
	failNow(a.TaskID)
	setNow(t, tx, t0.Add(61*time.Second))
	b := spawn(t, tx, call)
	require.True(t, b.Created, "A's retention has expired")
	_, err = retry(a.TaskID, `{}`)
	require.Contains(t, requireSQLState(t, err, "QD014").Message, b.TaskID.String(), "B is live")

	failNow(b.TaskID) // B retains the key until t0+121s
	_, err = retry(a.TaskID, `{}`)
	require.Contains(t, requireSQLState(t, err, "QD014").Message, b.TaskID.String(), "B retains the key")

	setNow(t, tx, t0.Add(121*time.Second))
	r, err = retry(a.TaskID, `{}`)
	require.NoError(t, err, "B's retention has expired: A takes the key")
	require.Equal(t, 3, r.Attempt)
	require.Equal(t, "false", *taskField(t, tx, q, b.TaskID, "key_held"))
	require.Equal(t, a.TaskID, spawn(t, tx, call).TaskID)

	// spawn_new of a task that retains its key returns the task itself;
	// once the key is free it spawns a task with the same retention.
	setNow(t, tx, t0.Add(122*time.Second))
	failNow(a.TaskID)
	r, err = retry(a.TaskID, `{"spawn_new": true}`)
	require.NoError(t, err)
	require.Equal(t, a.TaskID, r.TaskID)
	require.False(t, r.Created)
	setNow(t, tx, t0.Add(182*time.Second))
	r, err = retry(a.TaskID, `{"spawn_new": true}`)
	require.NoError(t, err)
	require.True(t, r.Created)
	require.Equal(t, "60", *taskField(t, tx, q, r.TaskID, "key_retention"))
}

// TestKeyRetentionStorm: 64 goroutines, each on its own connection, spawn
// one key whose retained holder expires at E, while a 65th runs cleanup_tasks
// (ttl 0, clock at E), which may release the old holder or delete it:
//   - all with their clock exactly at E, half through spawn_task and half
//     through spawn_tasks: exactly 1 created = true, all 64 get its id, 0
//     errors, 1 key holder;
//   - with clocks from E - 32µs to E + 31µs: exactly 1 created = true, the
//     32 callers at or after E all get the new task, the 32 before E get the
//     new task or the old one (never another), 0 errors.
func TestKeyRetentionStorm(t *testing.T) {
	t.Parallel()
	const n = 64
	ctx := context.Background()
	pool := testdb.ClonePool(t, n+3)
	conns := acquireConns(t, pool, n+1) // the last one cleans
	opts := `{"key_retention_seconds": 10}`
	for _, spread := range []bool{false, true} {
		t.Run(fmt.Sprintf("spread=%v", spread), func(t *testing.T) {
			q := newQueue(t, pool)
			setNow(t, conns[0], t0)
			old := spawn(t, conns[0], spawnCall{queue: q, task: "t", params: str(`{}`), key: str("k"), options: opts})
			require.Equal(t, "cancelled", cancelTask(t, conns[0], q, old.TaskID))
			expiry := t0.Add(10 * time.Second)
			clock := func(i int) time.Time {
				if !spread {
					return expiry
				}
				return expiry.Add(time.Duration(i-n/2) * time.Microsecond)
			}
			for i, c := range conns[:n] {
				setNow(t, c, clock(i))
			}
			setNow(t, conns[n], expiry)
			results := make([]spawned, n)
			errs := make([]error, n+1)
			var cleaned int
			together(n+1, func(i int) {
				if i == n {
					errs[i] = conns[i].QueryRow(ctx, "select durable.cleanup_tasks($1, 0, 10)", q).Scan(&cleaned)
					return
				}
				call := spawnCall{queue: q, task: "t", params: str(fmt.Sprintf(`{"i": %d}`, i)), key: str("k"), options: opts}
				if i%2 == 0 {
					results[i], errs[i] = trySpawn(ctx, conns[i], call)
					return
				}
				b := batchOf(t, call)
				rows, err := trySpawnBatch(ctx, conns[i], q, &b)
				if errs[i] = err; err == nil {
					r := rows[0]
					results[i] = spawned{TaskID: r.TaskID, RunID: r.RunID, Attempt: r.Attempt, Created: r.Created, State: r.State}
				}
			})
			require.NoError(t, errs[n], "cleanup")
			created := 0
			var fresh durable.UUID
			for i, r := range results {
				require.NoError(t, errs[i], "goroutine %d", i)
				if r.Created {
					created++
					fresh = r.TaskID
				}
			}
			require.Equal(t, 1, created, "exactly one spawn takes the key over")
			for i, r := range results {
				if clock(i).Before(expiry) && r.TaskID == old.TaskID {
					require.Equal(t, "cancelled", r.State)
					continue
				}
				require.Equal(t, fresh, r.TaskID, "goroutine %d (clock %s)", i, clock(i))
			}
			require.Equal(t, 2-cleaned, countTasks(t, pool, q), "the new task, and the old one unless cleanup deleted it")
			require.Equal(t, 1, countRows(t, pool, "t_", q, "key_held"))
			for _, c := range conns {
				mustExec(t, c, "select set_config('durable.fake_now', '', false)")
			}
			t.Logf("cleanup deleted %d", cleaned)
		})
	}
}

// TestKeyRetentionGoOptions: SpawnOptions.KeyRetention and KeepKeyForever
// reach the server from Spawn and SpawnMany.
func TestKeyRetentionGoOptions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tx := testdb.Tx(t)
	q := newQueue(t, tx)
	client, err := durable.New(tx, nil)
	require.NoError(t, err)
	a, err := client.Spawn(ctx, q, "t", nil, &durable.SpawnOptions{IdempotencyKey: "a", KeyRetention: 90 * time.Minute})
	require.NoError(t, err)
	require.Equal(t, "5400", *taskField(t, tx, q, a.TaskID, "key_retention"))
	res, err := client.SpawnMany(ctx, q, []durable.SpawnRequest{
		{TaskName: "t", Options: &durable.SpawnOptions{IdempotencyKey: "b", KeyRetention: durable.KeepKeyForever}},
		{TaskName: "t", Options: &durable.SpawnOptions{IdempotencyKey: "c", KeyRetention: 1500 * time.Millisecond}},
	})
	require.NoError(t, err)
	require.Equal(t, "Infinity", *taskField(t, tx, q, res[0].TaskID, "key_retention"))
	require.Equal(t, "1.5", *taskField(t, tx, q, res[1].TaskID, "key_retention"))
	state, err := client.CancelTask(ctx, q, a.TaskID)
	require.NoError(t, err)
	require.Equal(t, durable.StateCancelled, state)
	again, err := client.Spawn(ctx, q, "t", nil, &durable.SpawnOptions{IdempotencyKey: "a"})
	require.NoError(t, err)
	require.Equal(t, a.TaskID, again.TaskID)
	require.False(t, again.Created)
	require.Equal(t, durable.StateCancelled, again.State)
	_, err = client.Spawn(ctx, q, "t", nil, &durable.SpawnOptions{IdempotencyKey: "d", KeyRetention: -time.Second})
	require.ErrorIs(t, err, durable.ErrInvalidOptions) // last: it aborts the transaction
}
