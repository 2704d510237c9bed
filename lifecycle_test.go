package durable_test

// Lifecycle tests: claim_task, complete_run, fail_run, extend_claim,
// cancel_task, get_task_result and the queue functions, through SQL, under
// the fake clock (durable.fake_now).

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/internal/testdb"
)

// TestClaimOrderQtyAndAvailability: claim_task hands out ready runs in order
// of available_at, at most qty of them, never one whose available_at is
// still in the future, and marks run and task running with the lease.
func TestClaimOrderQtyAndAvailability(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	spawnAt := func(name string, d time.Duration) spawned {
		return spawn(t, tx, spawnCall{queue: q, task: name, params: str(`{}`),
			options: availableAtOption(t0.Add(d).Format(time.RFC3339Nano))})
	}
	second := spawnAt("second", -2*time.Minute)
	third := spawnAt("third", -1*time.Minute)
	first := spawnAt("first", -3*time.Minute)
	future := spawnAt("future", time.Minute)
	fourth := spawnAt("fourth", 0) // available exactly now

	runs := claim(t, tx, q, "w1", 30, 2)
	require.Len(t, runs, 2)
	require.Equal(t, []durable.UUID{first.RunID, second.RunID}, []durable.UUID{runs[0].RunID, runs[1].RunID})
	require.Equal(t, "first", runs[0].TaskName)
	for _, r := range runs {
		requireTime(t, t0.Add(30*time.Second), r.ClaimExpiresAt)
		require.Equal(t, 1, r.Attempt)
	}
	var state, task, by string
	var started time.Time
	require.NoError(t, tx.QueryRow(context.Background(), fmt.Sprintf(
		`select r.state, t.state, r.claimed_by, r.started_at from %s r join %s t using (task_id) where r.run_id = $1`,
		tableName("r_", q), tableName("t_", q)), first.RunID).Scan(&state, &task, &by, &started))
	require.Equal(t, []string{"running", "running", "w1"}, []string{state, task, by})
	requireTime(t, t0, started)

	runs = claim(t, tx, q, "w2", 30, 10)
	require.Len(t, runs, 2, "the future run must not be claimed")
	require.Equal(t, []durable.UUID{third.RunID, fourth.RunID}, []durable.UUID{runs[0].RunID, runs[1].RunID})
	require.Empty(t, claim(t, tx, q, "w3", 30, 10))
	_, st, _ := runOf(t, tx, q, future.TaskID, 1)
	require.Equal(t, "pending", st)

	setNow(t, tx, t0.Add(time.Minute-time.Millisecond))
	require.Empty(t, claim(t, tx, q, "w3", 30, 10))
	setNow(t, tx, t0.Add(time.Minute))
	runs = claim(t, tx, q, "w3", 30, 10)
	require.Len(t, runs, 1)
	require.Equal(t, future.RunID, runs[0].RunID)
}

// TestClaimConcurrentSkipLocked: 8 goroutines claim 200 runs in batches of
// 7 at once: every run is claimed exactly once, none is left, 0 errors.
func TestClaimConcurrentSkipLocked(t *testing.T) {
	t.Parallel()
	const tasks, claimers, batch = 200, 8, 7
	pool := testdb.ClonePool(t, claimers+2)
	q := newQueue(t, pool)
	mustExec(t, pool, "select durable.spawn_task($1, 't', jsonb_build_object('i', i)) from generate_series(1, $2) i", q, tasks)
	conns := acquireConns(t, pool, claimers)

	got := make([][]claimedRun, claimers)
	errs := make([]error, claimers)
	together(claimers, func(i int) {
		for {
			runs, err := tryClaim(context.Background(), conns[i], q, fmt.Sprintf("w%d", i), 60, batch)
			if err != nil {
				errs[i] = err
				return
			}
			if len(runs) == 0 {
				return
			}
			got[i] = append(got[i], runs...)
		}
	})
	seen := map[durable.UUID]int{}
	for i := range got {
		require.NoError(t, errs[i])
		for _, r := range got[i] {
			seen[r.RunID]++
			require.Equal(t, 1, r.Attempt)
		}
	}
	require.Len(t, seen, tasks, "every run claimed")
	for run, n := range seen {
		require.Equal(t, 1, n, "run %s claimed %d times", run, n)
	}
	require.Equal(t, tasks, countRows(t, pool, "r_", q, "state = 'running'"))
	require.Equal(t, tasks, countRows(t, pool, "t_", q, "state = 'running'"))
	for i := range got { // each claimer's rows say it is theirs
		for _, r := range got[i] {
			require.Equal(t, 1, countRows(t, pool, "r_", q, "run_id = $1 and claimed_by = $2", r.RunID, fmt.Sprintf("w%d", i)))
		}
	}
}

// TestLeaseExpiry: a run whose lease expired is failed with reason
// claim_timeout by the next claim, and its task retries as attempt 2: the
// same task, still holding its key.
func TestLeaseExpiry(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	call := spawnCall{queue: q, task: "t", params: str(`{}`), key: str("k"),
		options: `{"max_attempts": 3, "retry_strategy": {"kind": "none"}}`}
	s := spawn(t, tx, call)
	first := claim(t, tx, q, "w1", 30, 1)
	require.Len(t, first, 1)

	setNow(t, tx, t0.Add(30*time.Second-time.Millisecond))
	require.Empty(t, claim(t, tx, q, "w2", 30, 1), "a live lease is not recovered")
	_, st, _ := runOf(t, tx, q, s.TaskID, 1)
	require.Equal(t, "running", st)

	setNow(t, tx, t0.Add(30*time.Second)) // the lease ends at claim_expires_at
	second := claim(t, tx, q, "w2", 30, 1)
	require.Len(t, second, 1)
	require.Equal(t, s.TaskID, second[0].TaskID)
	require.Equal(t, 2, second[0].Attempt)
	require.NotEqual(t, first[0].RunID, second[0].RunID)

	var reason string
	require.NoError(t, tx.QueryRow(context.Background(), fmt.Sprintf(
		"select state || ' ' || (failure_reason ->> 'name') || ' ' || (failure_reason ->> 'worker_id') from %s where run_id = $1",
		tableName("r_", q)), first[0].RunID).Scan(&reason))
	require.Equal(t, "failed claim_timeout w1", reason)
	res := taskResult(t, tx, q, s.TaskID)
	require.Equal(t, "running", res.state)
	require.JSONEq(t, `"claim_timeout"`, jsonField(t, *res.failure, "name"))
	require.Equal(t, "2", *taskField(t, tx, q, s.TaskID, "attempts"))
	require.Equal(t, "true", *taskField(t, tx, q, s.TaskID, "key_held"))

	d := spawn(t, tx, call)
	require.False(t, d.Created)
	require.Equal(t, s.TaskID, d.TaskID)
	require.Equal(t, second[0].RunID, d.RunID)
	require.Equal(t, 2, d.Attempt)
	require.Equal(t, "running", d.State)
	require.Equal(t, 1, countTasks(t, tx, q))

	requireFails(t, tx, "QD012", "select durable.complete_run($1, $2, '1')", q, first[0].RunID)
	completeRun(t, tx, q, second[0].RunID, `"ok"`)
}

// TestLeaseExpiryWithBackoff: the retry after an expired lease waits for the
// task's strategy like any failure.
func TestLeaseExpiryWithBackoff(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	s := spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`),
		options: `{"retry_strategy": {"kind": "fixed", "base_seconds": 10}}`})
	claim(t, tx, q, "w1", 5, 1)
	setNow(t, tx, t0.Add(6*time.Second))
	require.Empty(t, claim(t, tx, q, "w2", 5, 1))
	_, st, avail := runOf(t, tx, q, s.TaskID, 2)
	require.Equal(t, "sleeping", st)
	requireTime(t, t0.Add(16*time.Second), avail)
	require.Equal(t, "sleeping", *taskField(t, tx, q, s.TaskID, "state"))
}

// TestRunNotRunningErrors: complete_run, fail_run and extend_claim refuse a
// run that is not theirs to end, with the SQLSTATE that says why, and write
// nothing.
func TestRunNotRunningErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		code string
		// setup returns the run to act on; the clock starts at t0.
		setup func(t *testing.T, tx pgx.Tx, q string) durable.UUID
	}{
		{"unknown run", "QD010", func(t *testing.T, tx pgx.Tx, q string) durable.UUID {
			spawn(t, tx, spawnCall{queue: q, task: "t"})
			claimOne(t, tx, q)
			return durable.UUID{1, 2, 3}
		}},
		{"pending, never claimed", "QD011", func(t *testing.T, tx pgx.Tx, q string) durable.UUID {
			return spawn(t, tx, spawnCall{queue: q, task: "t"}).RunID
		}},
		{"completed", "QD011", func(t *testing.T, tx pgx.Tx, q string) durable.UUID {
			spawn(t, tx, spawnCall{queue: q, task: "t"})
			r := claimOne(t, tx, q)
			completeRun(t, tx, q, r.RunID, `"ok"`)
			return r.RunID
		}},
		{"failed and retried", "QD011", func(t *testing.T, tx pgx.Tx, q string) durable.UUID {
			spawn(t, tx, spawnCall{queue: q, task: "t", options: `{"retry_strategy": {"kind": "none"}}`})
			r := claimOne(t, tx, q)
			failRun(t, tx, q, r.RunID, `{"message": "boom"}`)
			claimOne(t, tx, q) // attempt 2 runs
			return r.RunID
		}},
		{"lease expired, not yet recovered", "QD012", func(t *testing.T, tx pgx.Tx, q string) durable.UUID {
			spawn(t, tx, spawnCall{queue: q, task: "t"})
			r := claimOne(t, tx, q)
			setNow(t, tx, t0.Add(30*time.Second))
			return r.RunID
		}},
		{"lease expired and recovered", "QD012", func(t *testing.T, tx pgx.Tx, q string) durable.UUID {
			spawn(t, tx, spawnCall{queue: q, task: "t", options: `{"retry_strategy": {"kind": "none"}}`})
			r := claimOne(t, tx, q)
			setNow(t, tx, t0.Add(31*time.Second))
			require.Equal(t, 2, claimOne(t, tx, q).Attempt)
			return r.RunID
		}},
		{"lease expired, task out of attempts", "QD012", func(t *testing.T, tx pgx.Tx, q string) durable.UUID {
			spawn(t, tx, spawnCall{queue: q, task: "t", options: `{"max_attempts": 1}`})
			r := claimOne(t, tx, q)
			setNow(t, tx, t0.Add(31*time.Second))
			require.Empty(t, claim(t, tx, q, "w", 30, 1))
			return r.RunID
		}},
		{"task cancelled while running", "QD013", func(t *testing.T, tx pgx.Tx, q string) durable.UUID {
			s := spawn(t, tx, spawnCall{queue: q, task: "t"})
			r := claimOne(t, tx, q)
			require.Equal(t, "cancelled", cancelTask(t, tx, q, s.TaskID))
			return r.RunID
		}},
		{"task cancelled while pending", "QD013", func(t *testing.T, tx pgx.Tx, q string) durable.UUID {
			s := spawn(t, tx, spawnCall{queue: q, task: "t"})
			require.Equal(t, "cancelled", cancelTask(t, tx, q, s.TaskID))
			return s.RunID
		}},
		{"task cancelled after its lease expired", "QD013", func(t *testing.T, tx pgx.Tx, q string) durable.UUID {
			s := spawn(t, tx, spawnCall{queue: q, task: "t"})
			r := claimOne(t, tx, q)
			setNow(t, tx, t0.Add(time.Hour))
			require.Equal(t, "cancelled", cancelTask(t, tx, q, s.TaskID))
			return r.RunID
		}},
	}
	actions := []struct {
		name string
		sql  string
	}{
		{"complete_run", "select durable.complete_run($1, $2, '\"late\"')"},
		{"fail_run", "select durable.fail_run($1, $2, '{\"message\": \"late\"}')"},
		{"fail_run with retry_at", "select durable.fail_run($1, $2, '{}', '2030-01-01T00:00:00Z')"},
		{"extend_claim", "select durable.extend_claim($1, $2, 60)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tx := testdb.Tx(t)
			setNow(t, tx, t0)
			q := newQueue(t, tx)
			run := tc.setup(t, tx, q)
			before := queueSnapshot(t, tx, q)
			for _, a := range actions {
				e := requireFails(t, tx, tc.code, a.sql, q, run)
				require.Contains(t, e.Message, run.String(), a.name)
			}
			require.Equal(t, before, queueSnapshot(t, tx, q))
		})
	}
}

// TestRetrySchedule: fail_run schedules the next attempt after the delay of
// the task's retry strategy, as r_<queue>.available_at shows; the run sleeps
// until then (or is pending when due at once) and cannot be claimed earlier.
func TestRetrySchedule(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		strategy string
		delays   []float64 // seconds after each failed attempt
	}{
		{"none", `{"kind": "none"}`, []float64{0, 0, 0}},
		{"fixed base 10", `{"kind": "fixed", "base_seconds": 10}`, []float64{10, 10, 10}},
		{"fixed default base", `{"kind": "fixed"}`, []float64{1, 1}},
		{"exponential base 2 factor 3 max 20", `{"kind": "exponential", "base_seconds": 2, "factor": 3, "max_seconds": 20}`,
			[]float64{2, 6, 18, 20, 20}},
		{"exponential fractional base", `{"kind": "exponential", "base_seconds": 0.25, "factor": 2}`, []float64{0.25, 0.5, 1, 2}},
		{"exponential base 0", `{"kind": "exponential", "base_seconds": 0}`, []float64{0, 0}},
		{"default strategy", "", []float64{1, 2, 4, 8, 16, 32, 64, 128}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tx := testdb.Tx(t)
			now := t0
			setNow(t, tx, now)
			q := newQueue(t, tx)
			opts := fmt.Sprintf(`{"max_attempts": %d}`, len(tc.delays)+1)
			if tc.strategy != "" {
				opts = fmt.Sprintf(`{"max_attempts": %d, "retry_strategy": %s}`, len(tc.delays)+1, tc.strategy)
			}
			s := spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`), options: opts})
			for i, d := range tc.delays {
				r := claimOne(t, tx, q)
				require.Equal(t, i+1, r.Attempt)
				failRun(t, tx, q, r.RunID, fmt.Sprintf(`{"attempt": %d}`, i+1))

				delay := time.Duration(d * float64(time.Second))
				_, state, avail := runOf(t, tx, q, s.TaskID, i+2)
				requireTime(t, now.Add(delay), avail, "attempt ", i+2)
				wantState := "sleeping"
				if delay == 0 {
					wantState = "pending"
				}
				require.Equal(t, wantState, state)
				require.Equal(t, wantState, *taskField(t, tx, q, s.TaskID, "state"))
				if delay > 0 {
					setNow(t, tx, now.Add(delay-time.Millisecond))
					require.Empty(t, claim(t, tx, q, "w", 30, 1), "claimed before the retry was due")
				}
				now = now.Add(delay)
				setNow(t, tx, now)
			}
			last := claimOne(t, tx, q)
			require.Equal(t, len(tc.delays)+1, last.Attempt)
			failRun(t, tx, q, last.RunID, `{"attempt": "last"}`)
			res := taskResult(t, tx, q, s.TaskID)
			require.Equal(t, "failed", res.state)
			require.JSONEq(t, `{"attempt": "last"}`, *res.failure)
			require.Equal(t, len(tc.delays)+1, countRuns(t, tx, q))
		})
	}
}

// TestRetryAtOverridesStrategy: fail_run's p_retry_at sets when the next
// attempt is due, before or after the strategy's delay, or in the past.
func TestRetryAtOverridesStrategy(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		retryAt time.Time
		state   string
	}{
		{"later than the strategy", t0.Add(5 * time.Minute), "sleeping"},
		{"sooner than the strategy", t0.Add(2 * time.Second), "sleeping"},
		{"now", t0, "pending"},
		{"in the past", t0.Add(-time.Minute), "pending"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tx := testdb.Tx(t)
			setNow(t, tx, t0)
			q := newQueue(t, tx)
			s := spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`),
				options: `{"retry_strategy": {"kind": "fixed", "base_seconds": 60}}`})
			r := claimOne(t, tx, q)
			mustExec(t, tx, "select durable.fail_run($1, $2, '{}', $3)", q, r.RunID, tc.retryAt)
			_, state, avail := runOf(t, tx, q, s.TaskID, 2)
			requireTime(t, tc.retryAt, avail)
			require.Equal(t, tc.state, state)
			if tc.state == "pending" {
				require.Equal(t, 2, claimOne(t, tx, q).Attempt)
			} else {
				require.Empty(t, claim(t, tx, q, "w", 30, 1))
				setNow(t, tx, tc.retryAt)
				require.Equal(t, 2, claimOne(t, tx, q).Attempt)
			}
		})
	}
}

// TestFailRunNotRetryable: a reason object with "retryable": false fails the
// task at once, with attempts left; any other value of the field retries.
func TestFailRunNotRetryable(t *testing.T) {
	t.Parallel()
	cases := []struct {
		reason string
		fails  bool
	}{
		{`{"retryable": false, "message": "bad input"}`, true},
		{`{"retryable": true, "message": "flaky"}`, false},
		{`{"retryable": "false"}`, false},
		{`{"message": "no field"}`, false},
		{`[{"retryable": false}]`, false},
		{`"retryable: false"`, false},
		{`null`, false},
	}
	for _, tc := range cases {
		t.Run(tc.reason, func(t *testing.T) {
			t.Parallel()
			tx := testdb.Tx(t)
			setNow(t, tx, t0)
			q := newQueue(t, tx)
			s := spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`), key: str("k"),
				options: `{"max_attempts": 5, "retry_strategy": {"kind": "none"}}`})
			failRun(t, tx, q, claimOne(t, tx, q).RunID, tc.reason)
			res := taskResult(t, tx, q, s.TaskID)
			require.JSONEq(t, tc.reason, *res.failure)
			if tc.fails {
				require.Equal(t, "failed", res.state)
				require.Equal(t, 1, countRuns(t, tx, q), "no retry run")
				require.Equal(t, "false", *taskField(t, tx, q, s.TaskID, "key_held"))
				require.Empty(t, claim(t, tx, q, "w", 30, 1))
			} else {
				require.Equal(t, "pending", res.state)
				require.Equal(t, 2, claimOne(t, tx, q).Attempt)
			}
		})
	}
}

// TestFailRunUsesUpAttempts: with max_attempts 3, the third failure fails the
// task; get_task_result shows the latest reason at every step.
func TestFailRunUsesUpAttempts(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	s := spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`),
		options: `{"max_attempts": 3, "retry_strategy": {"kind": "none"}}`})
	for i := 1; i <= 3; i++ {
		r := claimOne(t, tx, q)
		require.Equal(t, i, r.Attempt)
		failRun(t, tx, q, r.RunID, fmt.Sprintf(`{"n": %d}`, i))
		res := taskResult(t, tx, q, s.TaskID)
		require.JSONEq(t, fmt.Sprintf(`{"n": %d}`, i), *res.failure)
		require.Nil(t, res.result)
		if i < 3 {
			require.Equal(t, "pending", res.state)
		} else {
			require.Equal(t, "failed", res.state)
		}
	}
	require.Equal(t, 3, countRuns(t, tx, q))
	require.Equal(t, "3", *taskField(t, tx, q, s.TaskID, "attempts"))
	require.NotNil(t, taskField(t, tx, q, s.TaskID, "finished_at"))
	require.Empty(t, claim(t, tx, q, "w", 30, 10))
}

// TestMaxAttemptsOne: max_attempts 1 means no retry at all.
func TestMaxAttemptsOne(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	s := spawn(t, tx, spawnCall{queue: q, task: "t", options: `{"max_attempts": 1}`})
	failRun(t, tx, q, claimOne(t, tx, q).RunID, `{"message": "once"}`)
	require.Equal(t, "failed", taskResult(t, tx, q, s.TaskID).state)
	require.Equal(t, 1, countRuns(t, tx, q))
}

// TestCancelTask: cancelling a pending, sleeping or running task cancels it
// and its live run and frees its key; cancelling a finished task returns its
// state and changes nothing.
func TestCancelTask(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		bring func(t *testing.T, tx pgx.Tx, q string, s spawned)
		want  string
	}{
		{"pending", func(*testing.T, pgx.Tx, string, spawned) {}, "cancelled"},
		{"running", func(t *testing.T, tx pgx.Tx, q string, s spawned) { claimOne(t, tx, q) }, "cancelled"},
		{"sleeping", func(t *testing.T, tx pgx.Tx, q string, s spawned) {
			failRun(t, tx, q, claimOne(t, tx, q).RunID, `{}`)
		}, "cancelled"},
		{"running with an expired lease", func(t *testing.T, tx pgx.Tx, q string, s spawned) {
			claimOne(t, tx, q)
			setNow(t, tx, t0.Add(time.Hour))
		}, "cancelled"},
		{"completed", func(t *testing.T, tx pgx.Tx, q string, s spawned) {
			completeRun(t, tx, q, claimOne(t, tx, q).RunID, `"ok"`)
		}, "completed"},
		{"failed", func(t *testing.T, tx pgx.Tx, q string, s spawned) {
			failRun(t, tx, q, claimOne(t, tx, q).RunID, `{"retryable": false}`)
		}, "failed"},
		{"cancelled", func(t *testing.T, tx pgx.Tx, q string, s spawned) {
			require.Equal(t, "cancelled", cancelTask(t, tx, q, s.TaskID))
		}, "cancelled"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tx := testdb.Tx(t)
			setNow(t, tx, t0)
			q := newQueue(t, tx)
			s := spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`), key: str("k"),
				options: `{"retry_strategy": {"kind": "fixed", "base_seconds": 60}}`})
			tc.bring(t, tx, q, s)
			finished := taskResult(t, tx, q, s.TaskID).state
			setNow(t, tx, t0.Add(2*time.Hour))
			before := queueSnapshot(t, tx, q)

			require.Equal(t, tc.want, cancelTask(t, tx, q, s.TaskID))
			if finished == "completed" || finished == "failed" || finished == "cancelled" {
				require.Equal(t, before, queueSnapshot(t, tx, q), "cancelling a finished task changed it")
				return
			}
			require.Equal(t, "cancelled", taskResult(t, tx, q, s.TaskID).state)
			require.Equal(t, "false", *taskField(t, tx, q, s.TaskID, "key_held"))
			var finishedAt time.Time
			require.NoError(t, tx.QueryRow(context.Background(), fmt.Sprintf(
				"select finished_at from %s where task_id = $1", tableName("t_", q)), s.TaskID).Scan(&finishedAt))
			requireTime(t, t0.Add(2*time.Hour), finishedAt)
			require.Zero(t, countRows(t, tx, "r_", q, "state in ('pending', 'running', 'sleeping')"))
			require.Equal(t, 1, countRows(t, tx, "r_", q, "state = 'cancelled'"))
			require.Empty(t, claim(t, tx, q, "w", 30, 10))
		})
	}
}

// TestCancelAndResultOfUnknownTask: QD020 for a task id the queue does not
// have, even when another queue has it.
func TestCancelAndResultOfUnknownTask(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	q := newQueue(t, tx)
	other := newQueue(t, tx)
	s := spawn(t, tx, spawnCall{queue: other, task: "t"})
	for _, id := range []durable.UUID{{9, 9, 9}, s.TaskID} {
		e := requireFails(t, tx, "QD020", "select durable.cancel_task($1, $2)", q, id)
		require.Contains(t, e.Message, id.String())
		requireFails(t, tx, "QD020", "select * from durable.get_task_result($1, $2)", q, id)
	}
	require.Equal(t, "pending", taskResult(t, tx, other, s.TaskID).state)
}

// TestGetTaskResult: the state with the completed run's result, or the
// latest failure's reason, kept while the task waits to retry.
func TestGetTaskResult(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	opts := `{"max_attempts": 2, "retry_strategy": {"kind": "fixed", "base_seconds": 5}}`

	pending := spawn(t, tx, spawnCall{queue: q, task: "pending", options: availableAtOption("2031-01-01T00:00:00Z")})
	require.Equal(t, taskOutcome{state: "pending"}, taskResult(t, tx, q, pending.TaskID))

	done := spawn(t, tx, spawnCall{queue: q, task: "done", options: opts})
	r := claimOne(t, tx, q)
	require.Equal(t, done.TaskID, r.TaskID)
	require.Equal(t, taskOutcome{state: "running"}, taskResult(t, tx, q, done.TaskID))
	completeRun(t, tx, q, r.RunID, `{"answer": 42, "list": [1, "two"]}`)
	res := taskResult(t, tx, q, done.TaskID)
	require.Equal(t, "completed", res.state)
	require.JSONEq(t, `{"answer": 42, "list": [1, "two"]}`, *res.result)
	require.Nil(t, res.failure)

	nullResult := spawn(t, tx, spawnCall{queue: q, task: "null", options: opts})
	r = claimOne(t, tx, q)
	require.Equal(t, nullResult.TaskID, r.TaskID)
	mustExec(t, tx, "select durable.complete_run($1, $2)", q, r.RunID)
	require.Equal(t, taskOutcome{state: "completed"}, taskResult(t, tx, q, nullResult.TaskID))

	flaky := spawn(t, tx, spawnCall{queue: q, task: "flaky", options: opts})
	r = claimOne(t, tx, q)
	require.Equal(t, flaky.TaskID, r.TaskID)
	failRun(t, tx, q, r.RunID, `{"message": "first"}`)
	res = taskResult(t, tx, q, flaky.TaskID)
	require.Equal(t, "sleeping", res.state)
	require.JSONEq(t, `{"message": "first"}`, *res.failure)

	setNow(t, tx, t0.Add(5*time.Second))
	r = claimOne(t, tx, q)
	require.Equal(t, flaky.TaskID, r.TaskID)
	res = taskResult(t, tx, q, flaky.TaskID)
	require.Equal(t, "running", res.state)
	require.JSONEq(t, `{"message": "first"}`, *res.failure)
	failRun(t, tx, q, r.RunID, `{"message": "second"}`)
	res = taskResult(t, tx, q, flaky.TaskID)
	require.Equal(t, "failed", res.state)
	require.JSONEq(t, `{"message": "second"}`, *res.failure)
	require.Nil(t, res.result)
}

// TestExtendClaim: extend_claim moves the lease to now + extend_by and
// returns it; the run then outlives its first lease.
func TestExtendClaim(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	s := spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`)})
	r := claimOne(t, tx, q)
	requireTime(t, t0.Add(30*time.Second), r.ClaimExpiresAt)

	setNow(t, tx, t0.Add(20*time.Second))
	var expires time.Time
	require.NoError(t, tx.QueryRow(context.Background(), "select durable.extend_claim($1, $2, 60)", q, r.RunID).Scan(&expires))
	requireTime(t, t0.Add(80*time.Second), expires)
	var stored time.Time
	require.NoError(t, tx.QueryRow(context.Background(), fmt.Sprintf(
		"select claim_expires_at from %s where run_id = $1", tableName("r_", q)), r.RunID).Scan(&stored))
	requireTime(t, expires, stored)

	setNow(t, tx, t0.Add(31*time.Second)) // past the first lease
	require.Empty(t, claim(t, tx, q, "w2", 30, 10), "an extended lease was recovered")
	setNow(t, tx, t0.Add(80*time.Second-time.Millisecond))
	completeRun(t, tx, q, r.RunID, `"in time"`)
	require.Equal(t, "completed", taskResult(t, tx, q, s.TaskID).state)
}

// TestCreateQueueIdempotent: creating an existing queue again is no error and
// keeps its tasks and its registration.
func TestCreateQueueIdempotent(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	s := spawn(t, tx, spawnCall{queue: q, task: "t", key: str("k")})
	setNow(t, tx, t0.Add(time.Hour))
	mustExec(t, tx, "select durable.create_queue($1)", q)
	mustExec(t, tx, "select durable.create_queue($1)", q)
	require.Equal(t, 1, countTasks(t, tx, q))
	require.False(t, spawn(t, tx, spawnCall{queue: q, task: "t", key: str("k")}).Created)
	var n int
	var created time.Time
	require.NoError(t, tx.QueryRow(context.Background(),
		"select count(*) over (), created_at from durable.queues where queue_name = $1", q).Scan(&n, &created))
	require.Equal(t, 1, n)
	requireTime(t, t0, created)
	require.Equal(t, "pending", taskResult(t, tx, q, s.TaskID).state)
}

// TestCreateQueueConcurrent: 16 goroutines create one queue at once, each in
// autocommit on its own connection: 0 errors, 1 queue, its tables usable.
func TestCreateQueueConcurrent(t *testing.T) {
	t.Parallel()
	const n = 16
	pool := testdb.ClonePool(t, n+2)
	conns := acquireConns(t, pool, n)
	q := queueName()
	errs := make([]error, n)
	together(n, func(i int) {
		_, errs[i] = conns[i].Exec(context.Background(), "select durable.create_queue($1)", q)
	})
	for i, err := range errs {
		require.NoError(t, err, "goroutine %d", i)
	}
	var queues int
	require.NoError(t, pool.QueryRow(context.Background(), "select count(*) from durable.queues where queue_name = $1", q).Scan(&queues))
	require.Equal(t, 1, queues)
	require.True(t, spawn(t, pool, spawnCall{queue: q, task: "t"}).Created)
	require.Len(t, claim(t, pool, q, "w", 30, 1), 1)
}

// TestDropQueue: drop_queue drops the queue's tables and registration; the
// queue is then unknown (QD002) until created again, empty.
func TestDropQueue(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	q := newQueue(t, tx)
	spawn(t, tx, spawnCall{queue: q, task: "t", key: str("k")})
	mustExec(t, tx, "select durable.drop_queue($1)", q)

	var tTable, rTable *string
	require.NoError(t, tx.QueryRow(context.Background(), "select to_regclass($1)::text, to_regclass($2)::text",
		"durable.t_"+q, "durable.r_"+q).Scan(&tTable, &rTable))
	require.Nil(t, tTable)
	require.Nil(t, rTable)
	require.NotContains(t, listQueues(t, tx), q)
	requireFails(t, tx, "QD002", "select durable.spawn_task($1, 't')", q)
	requireFails(t, tx, "QD002", "select durable.drop_queue($1)", q)

	mustExec(t, tx, "select durable.create_queue($1)", q)
	require.Equal(t, 0, countTasks(t, tx, q))
	require.True(t, spawn(t, tx, spawnCall{queue: q, task: "t", key: str("k")}).Created)
}

// TestListQueuesSorted: list_queues returns every queue once, by name.
func TestListQueuesSorted(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	base := queueName()
	mine := []string{base + "b", base + "a", base + "c2", base + "c1"}
	for _, q := range mine {
		mustExec(t, tx, "select durable.create_queue($1)", q)
	}
	names := listQueues(t, tx)
	require.Len(t, slices.Compact(slices.Clone(names)), len(names), "a queue listed twice")
	var got []string
	for _, n := range names {
		if slices.Contains(mine, n) {
			got = append(got, n)
		}
	}
	require.Equal(t, []string{base + "a", base + "b", base + "c1", base + "c2"}, got)
}
