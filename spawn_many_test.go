package durable_test

// Tests for durable.spawn_tasks and Client.SpawnMany: every element follows
// spawn_task's rule (see the header of sql/functions/spawn_tasks.sql), the
// results keep the input order, a bad element fails the whole batch naming
// its position, and concurrent batches and single spawns of the same keys
// make exactly one task per key without errors or deadlocks.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/internal/testdb"
)

// batchRow is a row returned by durable.spawn_tasks.
type batchRow struct {
	Ord     int
	TaskID  durable.UUID
	RunID   durable.UUID
	Attempt int
	Created bool
	State   string
}

// trySpawnBatch calls durable.spawn_tasks with tasks as JSON text (nil passes
// SQL NULL).
func trySpawnBatch(ctx context.Context, db dbtx, queue string, tasks *string) ([]batchRow, error) {
	rows, err := db.Query(ctx,
		`select ordinality, task_id, run_id, attempt, created, state
		   from durable.spawn_tasks($1, $2::text::jsonb)`, queue, tasks)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (batchRow, error) {
		var r batchRow
		err := row.Scan(&r.Ord, &r.TaskID, &r.RunID, &r.Attempt, &r.Created, &r.State)
		return r, err
	})
}

// spawnBatch spawns the batch and checks that it returned one row per element,
// in input order.
func spawnBatch(t testing.TB, db dbtx, queue, tasks string) []batchRow {
	t.Helper()
	rows, err := trySpawnBatch(context.Background(), db, queue, &tasks)
	require.NoError(t, err, "spawn_tasks(%s)", truncate(tasks))
	var elems []json.RawMessage
	require.NoError(t, json.Unmarshal([]byte(tasks), &elems))
	require.Len(t, rows, len(elems))
	for i, r := range rows {
		require.Equal(t, i+1, r.Ord, "rows out of input order")
		require.False(t, r.TaskID.IsZero())
		require.False(t, r.RunID.IsZero())
	}
	return rows
}

func truncate(s string) string {
	if len(s) > 300 {
		return s[:300] + "..."
	}
	return s
}

// elemOf is the spawn_tasks element equivalent to the spawn_task call c (its
// queue aside): SQL NULL params are JSON null, a NULL key is left out.
func elemOf(c spawnCall) map[string]any {
	e := map[string]any{"task_name": c.task, "params": nil}
	if c.params != nil {
		e["params"] = json.RawMessage(*c.params)
	}
	if c.onlyOnce {
		e["only_once"] = true
	}
	if c.key != nil {
		e["idempotency_key"] = *c.key
	}
	if c.options != "" {
		e["options"] = json.RawMessage(c.options)
	}
	return e
}

// batchOf is the JSON array of the elements of calls.
func batchOf(t testing.TB, calls ...spawnCall) string {
	t.Helper()
	elems := make([]map[string]any, len(calls))
	for i, c := range calls {
		elems[i] = elemOf(c)
	}
	return jsonString(t, elems)
}

// rowsWithoutIDs returns the task and run rows of task as JSON, without
// the columns that hold ids, so that two spawns of the same thing compare
// equal.
func rowsWithoutIDs(t testing.TB, db dbtx, queue string, task durable.UUID) string {
	t.Helper()
	var s string
	require.NoError(t, db.QueryRow(context.Background(), fmt.Sprintf(`
		select jsonb_build_object(
		  'task', (select to_jsonb(t) - 'task_id' - 'last_attempt_run' - 'parent_task_id' from %s t where t.task_id = $1),
		  'runs', (select jsonb_agg(to_jsonb(r) - 'run_id' - 'task_id' order by r.attempt) from %s r where r.task_id = $1))::text`,
		tableName("t_", queue), tableName("r_", queue)), task).Scan(&s))
	return s
}

// TestSpawnManyMatchesSpawnTask: a batch stores, element by element, exactly
// what the same spawn_task calls made one after the other store (defaults,
// options, keys, the run), returns the same created flags, and its elements
// share a task exactly where the single spawns do: the first element of a
// key creates it, the later ones get it with created = false.
func TestSpawnManyMatchesSpawnTask(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	single, batch := newQueue(t, tx), newQueue(t, tx)
	const parentMark = "00000000-0000-0000-0000-0000000000aa"
	parents := map[string]durable.UUID{}
	for _, q := range []string{single, batch} {
		parents[q] = spawn(t, tx, spawnCall{queue: q, task: "parent", params: str(`{}`)}).TaskID
	}
	allOptions := `{"max_attempts": 3, "headers": {"trace": "x"}, "available_at": "2030-01-02T03:05:00Z",
	                "retry_strategy": {"kind": "fixed", "base_seconds": 7}, "max_delay": 60, "max_duration": 600}`
	calls := []spawnCall{
		{task: "plain"},                    // params JSON null
		{task: "plain", params: str(`{}`)}, // params {}
		{task: "plain", params: str(`{"b": 2, "a": [1, 2]}`), options: allOptions},
		{task: "keyed", params: str(`{"n": 1}`), key: str("k1"), options: allOptions},
		{task: "once", params: str(`{"a": 1, "b": 2}`), onlyOnce: true},
		{task: "keyed", params: str(`{"n": 2}`), key: str("k1")},        // duplicate of element 4
		{task: "once", params: str(`{"b": 2, "a": 1}`), onlyOnce: true}, // duplicate of element 5 (same jsonb)
		{task: "once", params: str(`{"a": 1, "b": 2}`), key: str("k1")}, // the explicit key wins
		{task: "plain", options: `{"parent_task_id": "` + parentMark + `"}`},
		{task: "keyed", key: str("k2"), options: `{"parent_task_id": "` + parentMark + `", "max_attempts": 1}`},
		{task: "once", params: str(`{"a": 1, "b": 2}`), onlyOnce: true, options: `{"max_attempts": 9}`}, // duplicate of 5
		{task: "plain", params: str(`[1, "two", null]`), options: `{"max_attempts": null, "headers": null}`},
	}
	forQueue := func(q string, c spawnCall) spawnCall {
		c.queue = q
		c.options = strings.ReplaceAll(c.options, parentMark, parents[q].String())
		return c
	}
	var want []spawned
	batchCalls := make([]spawnCall, len(calls))
	for i, c := range calls {
		want = append(want, spawn(t, tx, forQueue(single, c)))
		batchCalls[i] = forQueue(batch, c)
	}
	got := spawnBatch(t, tx, batch, batchOf(t, batchCalls...))

	for i := range calls {
		require.Equal(t, want[i].Created, got[i].Created, "element %d", i+1)
		require.Equal(t, want[i].Attempt, got[i].Attempt, "element %d", i+1)
		require.Equal(t, want[i].State, got[i].State, "element %d", i+1)
		require.Equal(t, rowsWithoutIDs(t, tx, single, want[i].TaskID), rowsWithoutIDs(t, tx, batch, got[i].TaskID),
			"element %d is stored differently from its spawn_task", i+1)
		for j := range calls {
			require.Equal(t, want[i].TaskID == want[j].TaskID, got[i].TaskID == got[j].TaskID,
				"elements %d and %d: sharing a task differs from spawn_task", i+1, j+1)
			if got[i].TaskID == got[j].TaskID {
				require.Equal(t, got[i].RunID, got[j].RunID)
			}
		}
	}
	for _, i := range []int{8, 9} {
		require.Equal(t, parents[batch].String(), *taskField(t, tx, batch, got[i].TaskID, "parent_task_id"))
	}
	require.Equal(t, countTasks(t, tx, single), countTasks(t, tx, batch))
	require.Equal(t, countRuns(t, tx, single), countRuns(t, tx, batch))
	require.Equal(t, 9+1, countTasks(t, tx, batch)) // 12 elements, 3 duplicates, and the parent

	// The defaults, spelled out for the first element.
	require.Equal(t, "null", *taskField(t, tx, batch, got[0].TaskID, "params"))
	require.Equal(t, "5", *taskField(t, tx, batch, got[0].TaskID, "max_attempts"))
	require.JSONEq(t, `{"kind": "exponential", "base_seconds": 1, "factor": 2, "max_seconds": 3600}`,
		*taskField(t, tx, batch, got[0].TaskID, "retry_strategy"))
	require.Nil(t, taskField(t, tx, batch, got[0].TaskID, "headers"))
	require.Nil(t, taskField(t, tx, batch, got[0].TaskID, "key_hash"))
	_, state, at := runOf(t, tx, batch, got[0].TaskID, 1)
	require.Equal(t, "pending", state)
	requireTime(t, t0, at)
}

// TestSpawnManyDefaults: a missing field and one set to JSON null take
// spawn_task's defaults (params: {} when missing, JSON null when null).
func TestSpawnManyDefaults(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	q := newQueue(t, tx)
	rows := spawnBatch(t, tx, q, `[
		{"task_name": "a"},
		{"task_name": "a", "params": null, "only_once": null, "idempotency_key": null, "options": null},
		{"task_name": "a", "only_once": false, "options": {}},
		{"task_name": "a"}]`)
	for _, r := range rows {
		require.True(t, r.Created)
		require.Equal(t, 1, r.Attempt)
		require.Equal(t, "pending", r.State)
		require.Nil(t, taskField(t, tx, q, r.TaskID, "key_hash"), "no key by default")
		require.Equal(t, "5", *taskField(t, tx, q, r.TaskID, "max_attempts"))
		require.Equal(t, r.RunID.String(), *taskField(t, tx, q, r.TaskID, "last_attempt_run"))
		_, _, at := runOf(t, tx, q, r.TaskID, 1)
		requireTime(t, t0, at)
	}
	require.Equal(t, "{}", *taskField(t, tx, q, rows[0].TaskID, "params"))
	require.Equal(t, "null", *taskField(t, tx, q, rows[1].TaskID, "params"))
	require.Equal(t, "{}", *taskField(t, tx, q, rows[2].TaskID, "params"))
	require.NotEqual(t, rows[0].TaskID, rows[3].TaskID, "no key: every element creates a task")
	require.Equal(t, 4, countTasks(t, tx, q))
	require.Equal(t, 4, countRuns(t, tx, q))
}

// TestSpawnManyKeepsInputOrder: 500 elements, keyed and unkeyed, with
// duplicates, in an order unrelated to their keys: row i is element i's task.
func TestSpawnManyKeepsInputOrder(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	q := newQueue(t, tx)
	r := rand.New(rand.NewPCG(1, 2))
	elems := make([]map[string]any, 500)
	for i := range elems {
		e := map[string]any{"task_name": fmt.Sprintf("t%d", r.IntN(3)), "params": map[string]int{"i": i}}
		switch r.IntN(3) {
		case 0:
			e["idempotency_key"] = fmt.Sprintf("k%d", r.IntN(100))
		case 1:
			e["only_once"] = true
		}
		elems[i] = e
	}
	rows := spawnBatch(t, tx, q, jsonString(t, elems))
	firstOf := map[string]int{}
	for i, row := range rows {
		e := elems[i]
		name := *taskField(t, tx, q, row.TaskID, "task_name")
		require.Equal(t, e["task_name"], name, "element %d", i+1)
		if k, ok := e["idempotency_key"]; ok {
			id := fmt.Sprintf("%s/%s", e["task_name"], k)
			first, seen := firstOf[id]
			if !seen {
				firstOf[id] = i
				first = i
			}
			require.Equal(t, !seen, row.Created, "element %d", i+1)
			require.Equal(t, rows[first].TaskID, row.TaskID, "element %d", i+1)
			require.JSONEq(t, fmt.Sprintf(`{"i": %d}`, first), *taskField(t, tx, q, row.TaskID, "params"),
				"the first element of a key creates its task")
		} else {
			require.True(t, row.Created, "element %d", i+1)
			require.JSONEq(t, fmt.Sprintf(`{"i": %d}`, i), *taskField(t, tx, q, row.TaskID, "params"), "element %d", i+1)
		}
	}
}

// TestSpawnManyDuplicatesInBatch: elements with the same key (explicit, or
// only_once with params equal as JSON) make one task, created by the first in
// input order; later elements get it with created = false, whatever the key
// order. The same key under another task name is another key.
func TestSpawnManyDuplicatesInBatch(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	q := newQueue(t, tx)
	rows := spawnBatch(t, tx, q, `[
		{"task_name": "t", "params": {"v": 1}, "idempotency_key": "zzz"},
		{"task_name": "t", "params": {"v": 2}, "idempotency_key": "aaa"},
		{"task_name": "t", "params": {"v": 3}, "idempotency_key": "zzz"},
		{"task_name": "t", "params": {"v": 4}, "idempotency_key": "aaa", "options": {"max_attempts": 9}},
		{"task_name": "o", "params": {"a": 1, "b": [1, 2]}, "only_once": true},
		{"task_name": "o", "params": {"b": [1, 2], "a": 1}, "only_once": true},
		{"task_name": "u", "params": {"v": 5}, "idempotency_key": "zzz"},
		{"task_name": "t", "params": {"v": 6}, "idempotency_key": "zzz"}]`)
	created := []bool{true, true, false, false, true, false, true, false}
	same := [][]int{{0, 2, 7}, {1, 3}, {4, 5}, {6}}
	for i, r := range rows {
		require.Equal(t, created[i], r.Created, "element %d", i+1)
		require.Equal(t, 1, r.Attempt)
		require.Equal(t, "pending", r.State)
	}
	for _, group := range same {
		for _, i := range group {
			require.Equal(t, rows[group[0]].TaskID, rows[i].TaskID, "element %d", i+1)
			require.Equal(t, rows[group[0]].RunID, rows[i].RunID, "element %d", i+1)
		}
	}
	require.Equal(t, 4, countTasks(t, tx, q))
	require.Equal(t, 4, countRuns(t, tx, q))
	require.JSONEq(t, `{"v": 1}`, *taskField(t, tx, q, rows[0].TaskID, "params"))
	require.JSONEq(t, `{"v": 2}`, *taskField(t, tx, q, rows[1].TaskID, "params"))
	require.Equal(t, "5", *taskField(t, tx, q, rows[1].TaskID, "max_attempts"), "a duplicate's options are ignored")
	require.NotEqual(t, rows[0].TaskID, rows[6].TaskID, "keys are scoped to the task name")
}

// TestSpawnManyFindsExistingHolder: an element whose key a live task holds
// returns that task with its current run, attempt and state, created =
// false, and writes nothing; once the holder has finished, the next batch
// creates a new task.
func TestSpawnManyFindsExistingHolder(t *testing.T) {
	t.Parallel()
	for _, kind := range keyKinds {
		t.Run(kind.name, func(t *testing.T) {
			t.Parallel()
			tx := testdb.Tx(t)
			setNow(t, tx, t0)
			q := newQueue(t, tx)
			call := kind.call(q)
			call.options = `{"retry_strategy": {"kind": "none"}}`
			holder := spawn(t, tx, call)
			failRun(t, tx, q, claimOne(t, tx, q).RunID, `{"message": "boom"}`)
			run := claimOne(t, tx, q) // attempt 2, running
			require.Equal(t, 2, run.Attempt)
			before := queueSnapshot(t, tx, q)
			writesBefore := writes(t, tx)

			dup := call
			dup.options = `{"max_attempts": 1}`
			rows := spawnBatch(t, tx, q, batchOf(t, dup, dup))
			for _, r := range rows {
				require.False(t, r.Created)
				require.Equal(t, holder.TaskID, r.TaskID)
				require.Equal(t, run.RunID, r.RunID)
				require.Equal(t, 2, r.Attempt)
				require.Equal(t, "running", r.State)
			}
			require.Equal(t, writesBefore, writes(t, tx), "a batch of held keys wrote rows")
			require.Equal(t, before, queueSnapshot(t, tx, q))

			completeRun(t, tx, q, run.RunID, `"done"`)
			rows = spawnBatch(t, tx, q, batchOf(t, call, call))
			require.True(t, rows[0].Created, "a finished task must not hold its key")
			require.False(t, rows[1].Created)
			require.NotEqual(t, holder.TaskID, rows[0].TaskID)
			require.Equal(t, rows[0].TaskID, rows[1].TaskID)
			require.Equal(t, 2, countTasks(t, tx, q))
		})
	}
}

// TestSpawnManySharesKeysWithSpawnTask: batches and single spawns derive the
// same keys (the golden hashes of TestSpawnGoldenKeyHash), so each finds the
// task the other created, in both orders.
func TestSpawnManySharesKeysWithSpawnTask(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	q := newQueue(t, tx)
	explicit := spawnCall{queue: q, task: "t", params: str(`{"ignored": true}`), key: str("abc")}
	once := spawnCall{queue: q, task: "t", params: str(`{ "a" : 1 }`), onlyOnce: true}
	rows := spawnBatch(t, tx, q, batchOf(t, explicit, once))
	golden := []string{
		"cbbf00e084eb4016e5e80bc147b150dd297ef3f2948b196db7f75bd59fd953c6", // sha256('k:abc')
		"52e9cd9b8a22f63161c29f1cc22d3507db1f4d4f35be20c3780d5b86ab08c985", // sha256('o:["t", {"a": 1}]')
	}
	for i, r := range rows {
		require.True(t, r.Created)
		require.Equal(t, `\x`+golden[i], *taskField(t, tx, q, r.TaskID, "key_hash"))
	}
	require.Equal(t, "abc", *taskField(t, tx, q, rows[0].TaskID, "idempotency_key"))
	require.Nil(t, taskField(t, tx, q, rows[1].TaskID, "idempotency_key"))

	// A single spawn finds what the batch created.
	for i, c := range []spawnCall{explicit, once} {
		s := spawn(t, tx, c)
		require.False(t, s.Created)
		require.Equal(t, rows[i].TaskID, s.TaskID)
	}
	once.params = str(`{"a": 1}`)
	s := spawn(t, tx, once)
	require.False(t, s.Created)
	require.Equal(t, rows[1].TaskID, s.TaskID)

	// And a batch finds what single spawns created.
	a := spawn(t, tx, spawnCall{queue: q, task: "u", params: str(`{}`), key: str("k")})
	b := spawn(t, tx, spawnCall{queue: q, task: "u", params: str(`{"x": [1, {"y": 2, "z": 3}]}`), onlyOnce: true})
	rows = spawnBatch(t, tx, q, `[{"task_name": "u", "idempotency_key": "k", "params": {"other": 1}},
		{"task_name": "u", "only_once": true, "params": {"x": [1, {"z": 3, "y": 2}]}}]`)
	require.False(t, rows[0].Created)
	require.Equal(t, a.TaskID, rows[0].TaskID)
	require.False(t, rows[1].Created)
	require.Equal(t, b.TaskID, rows[1].TaskID)
	require.Equal(t, 4, countTasks(t, tx, q))
}

// TestSpawnManyKeyScope: a key is scoped to one queue and one task name, and
// explicit and derived keys never collide.
func TestSpawnManyKeyScope(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	q, other := newQueue(t, tx), newQueue(t, tx)
	spawn(t, tx, spawnCall{queue: other, task: "t", params: str(`{}`), key: str("k")})
	spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`), key: str("k")})
	rows := spawnBatch(t, tx, q, `[
		{"task_name": "u", "idempotency_key": "k"},
		{"task_name": "T", "idempotency_key": "k"},
		{"task_name": "t", "idempotency_key": "o:[\"t\", {}]"},
		{"task_name": "t", "only_once": true, "params": {}},
		{"task_name": "t", "only_once": true, "params": "k:k"},
		{"task_name": "t", "idempotency_key": "k"}]`)
	for i, r := range rows[:5] {
		require.True(t, r.Created, "element %d", i+1)
	}
	require.False(t, rows[5].Created, "the same queue, name and key")
	require.Equal(t, 1+5, countTasks(t, tx, q))
	require.Equal(t, 1, countTasks(t, tx, other))

	rows = spawnBatch(t, tx, other, `[{"task_name": "u", "idempotency_key": "k"}, {"task_name": "t", "idempotency_key": "k"}]`)
	require.True(t, rows[0].Created)
	require.False(t, rows[1].Created)
	require.Equal(t, 2, countTasks(t, tx, other))
}

// TestSpawnManyBadInput: a bad element fails the whole batch with the
// SQLSTATE spawn_task would raise, a message naming the first bad element's
// position, and nothing written, even when valid keyed and unkeyed elements
// come first.
func TestSpawnManyBadInput(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	q := newQueue(t, tx)
	parent := spawn(t, tx, spawnCall{queue: q, task: "p", params: str(`{}`)})
	cancelled := spawn(t, tx, spawnCall{queue: q, task: "p", params: str(`{}`)})
	cancelTask(t, tx, q, cancelled.TaskID)
	// Valid elements put before the bad one.
	valid := `{"task_name": "ok"}, {"task_name": "ok", "idempotency_key": "k"}, {"task_name": "ok", "only_once": true},
	          {"task_name": "ok", "options": {"max_attempts": 2, "parent_task_id": "` + parent.TaskID.String() + `"}}`
	const at = 5 // the bad element's position after valid
	cases := []struct {
		name, elem, code, message string
	}{
		{"empty task name", `{"task_name": ""}`, "QD003", "task name"},
		{"no task name", `{"params": {}}`, "QD003", "task name"},
		{"null task name", `{"task_name": null}`, "QD003", "task name"},
		{"task name not a string", `{"task_name": 7}`, "QD003", "task name"},
		{"empty key", `{"task_name": "t", "idempotency_key": ""}`, "QD004", "idempotency key"},
		{"empty key with only_once", `{"task_name": "t", "idempotency_key": "", "only_once": true}`, "QD004", "idempotency key"},
		{"key not a string", `{"task_name": "t", "idempotency_key": 123}`, "QD004", "idempotency key"},
		{"unknown option", `{"task_name": "t", "options": {"max_attempt": 3}}`, "QD005", "unknown spawn option 'max_attempt'"},
		{"unknown option set to null", `{"task_name": "t", "options": {"bogus": null}}`, "QD005", "unknown spawn option 'bogus'"},
		{"bad option value", `{"task_name": "t", "options": {"max_attempts": 0}}`, "QD005", "max_attempts"},
		{"bad retry strategy", `{"task_name": "t", "options": {"retry_strategy": {"kind": "sometimes"}}}`, "QD005", "retry_strategy"},
		{"options not an object", `{"task_name": "t", "options": [1]}`, "QD005", "spawn options must be a JSON object"},
		{"bad option on a keyed element", `{"task_name": "t", "idempotency_key": "k2", "options": {"max_delay": -1}}`, "QD005", "max_delay"},
		{"unknown field", `{"task_name": "t", "idempotencykey": "k"}`, "QD006", "unknown field 'idempotencykey'"},
		{"element not an object", `"t"`, "QD006", "not a JSON object"},
		{"element null", `null`, "QD006", "not a JSON object"},
		{"only_once not a boolean", `{"task_name": "t", "only_once": "yes"}`, "QD006", "only_once"},
		{"parent not found", `{"task_name": "t", "options": {"parent_task_id": "00000000-0000-0000-0000-000000000001"}}`, "QD020", "not found"},
		{"parent cancelled", `{"task_name": "t", "options": {"parent_task_id": "` + cancelled.TaskID.String() + `"}}`, "QD016", "cancelled"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			batch := "[" + valid + ", " + tc.elem + ", {\"task_name\": \"after\"}]"
			e := requireFails(t, tx, tc.code, "select * from durable.spawn_tasks($1, $2::text::jsonb)", q, batch)
			require.Contains(t, e.Message, fmt.Sprintf("element %d", at))
			require.Contains(t, e.Message, tc.message)
		})
	}
	require.Equal(t, 2, countTasks(t, tx, q), "a failed batch left tasks behind")

	t.Run("the first bad element is named", func(t *testing.T) {
		e := requireFails(t, tx, "QD005", "select * from durable.spawn_tasks($1, $2::text::jsonb)", q,
			`[{"task_name": "ok"}, {"task_name": "t", "options": {"bogus": 1}}, {"task_name": ""}, {"task_name": 1}]`)
		require.Contains(t, e.Message, "element 2")
		require.Contains(t, e.Hint, "Known options", "the option's hint is kept")
		e = requireFails(t, tx, "QD003", "select * from durable.spawn_tasks($1, $2::text::jsonb)", q,
			`[{"task_name": "ok"}, {"task_name": ""}, {"task_name": "t", "options": {"bogus": 1}}]`)
		require.Contains(t, e.Message, "element 2")
	})
	t.Run("queue and array", func(t *testing.T) {
		for _, c := range []struct{ queue, batch, code string }{
			{"bad name!", `[{"task_name": "t"}]`, "QD001"},
			{"bad name!", `[]`, "QD001"},
			{"no_such_queue", `[{"task_name": "t"}]`, "QD002"},
			{"no_such_queue", `[]`, "QD002"},
			{q, `{"task_name": "t"}`, "QD006"},
			{q, `"t"`, "QD006"},
			{q, `null`, "QD006"},
		} {
			requireFails(t, tx, c.code, "select * from durable.spawn_tasks($1, $2::text::jsonb)", c.queue, c.batch)
		}
		requireFails(t, tx, "QD006", "select * from durable.spawn_tasks($1, null)", q)
	})
	require.Equal(t, 2, countTasks(t, tx, q))
}

// TestSpawnManySizes: an empty batch returns no rows; 10000 elements are
// spawned; 10001 are refused (QD006) and nothing is written.
func TestSpawnManySizes(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	q := newQueue(t, tx)
	rows := spawnBatch(t, tx, q, `[]`)
	require.Empty(t, rows)
	require.Equal(t, 0, countTasks(t, tx, q))

	elems := func(n int) string {
		var b strings.Builder
		b.WriteByte('[')
		for i := 0; i < n; i++ {
			if i > 0 {
				b.WriteByte(',')
			}
			if i%2 == 0 {
				fmt.Fprintf(&b, `{"task_name": "t", "params": {"i": %d}}`, i)
			} else {
				fmt.Fprintf(&b, `{"task_name": "t", "params": {"i": %d}, "idempotency_key": "k%d"}`, i, i%1001)
			}
		}
		b.WriteByte(']')
		return b.String()
	}
	e := requireFails(t, tx, "QD006", "select * from durable.spawn_tasks($1, $2::text::jsonb)", q, elems(10001))
	require.Contains(t, e.Message, "10000")
	require.Equal(t, 0, countTasks(t, tx, q))

	rows = spawnBatch(t, tx, q, elems(10000))
	require.Len(t, rows, 10000)
	keys := map[int]bool{}
	for i := 1; i < 10000; i += 2 {
		keys[i%1001] = true
	}
	require.Equal(t, 5000+len(keys), countTasks(t, tx, q))
	require.Equal(t, 5000+len(keys), countRuns(t, tx, q))
}

// TestSpawnManyConcurrentSameKeys: 16 goroutines, each on its own connection,
// spawn batches of the same 50 keys (explicit and only_once, each batch
// shuffled and with a duplicate) at the same moment, in autocommit and in
// open transactions that commit (or every other one rolls back): exactly 50
// tasks and 50 runs, 0 errors (no 40P01, no 23505), and among the batches
// that count exactly one created each key and all got its task.
func TestSpawnManyConcurrentSameKeys(t *testing.T) {
	t.Parallel()
	const n, keys = 16, 50
	ctx := context.Background()
	pool := testdb.ClonePool(t, n+2)
	conns := acquireConns(t, pool, n)
	batchFor := func(i int) ([]int, string) {
		order := rand.Perm(keys)
		order = append(order, order[rand.IntN(keys)]) // a duplicate inside the batch
		elems := make([]map[string]any, len(order))
		for j, k := range order {
			if k%2 == 0 {
				elems[j] = map[string]any{"task_name": "t", "params": map[string]int{"g": i}, "idempotency_key": fmt.Sprintf("key-%d", k)}
			} else {
				elems[j] = map[string]any{"task_name": "t", "params": map[string]int{"k": k}, "only_once": true}
			}
		}
		return order, jsonString(t, elems)
	}
	cases := []struct {
		name    string
		tx      bool
		commits func(i int) bool
	}{
		{"autocommit", false, nil},
		{"transactions", true, func(int) bool { return true }},
		{"transactions, half roll back", true, func(i int) bool { return i%2 == 0 }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			q := newQueue(t, pool)
			orders := make([][]int, n)
			batches := make([]string, n)
			for i := range batches {
				orders[i], batches[i] = batchFor(i)
			}
			results := make([][]batchRow, n)
			errs := make([]error, n)
			together(n, func(i int) {
				if !tc.tx {
					results[i], errs[i] = trySpawnBatch(ctx, conns[i], q, &batches[i])
					return
				}
				tx, err := conns[i].Begin(ctx)
				if err != nil {
					errs[i] = err
					return
				}
				if results[i], errs[i] = trySpawnBatch(ctx, tx, q, &batches[i]); errs[i] != nil {
					_ = tx.Rollback(ctx)
					return
				}
				time.Sleep(time.Duration(rand.IntN(5)) * time.Millisecond)
				if tc.commits(i) {
					errs[i] = tx.Commit(ctx)
				} else {
					errs[i] = tx.Rollback(ctx)
				}
			})
			for i, err := range errs {
				require.NoError(t, err, "goroutine %d", i)
			}
			require.Equal(t, keys, countTasks(t, pool, q))
			require.Equal(t, keys, countRuns(t, pool, q))
			created := map[int]int{}
			ids := map[int]durable.UUID{}
			for i, rows := range results {
				if tc.commits != nil && !tc.commits(i) {
					continue
				}
				require.Len(t, rows, keys+1)
				seen := map[int]bool{}
				for j, r := range rows {
					k := orders[i][j]
					if r.Created {
						require.False(t, seen[k], "goroutine %d created key %d twice", i, k)
						created[k]++
					}
					seen[k] = true
					if id, ok := ids[k]; ok {
						require.Equal(t, id, r.TaskID, "goroutine %d, key %d", i, k)
					}
					ids[k] = r.TaskID
				}
			}
			require.Len(t, ids, keys)
			for k := 0; k < keys; k++ {
				require.Equal(t, 1, created[k], "key %d: exactly one batch creates its task", k)
				require.Equal(t, 1, countRows(t, pool, "t_", q, "task_id = $1", ids[k]))
			}
		})
	}
}

// TestSpawnManyRacesSingleSpawns: 8 goroutines spawning batches and 8
// spawning the same 20 keys one by one, at the same moment, in autocommit:
// 20 tasks, 0 errors, exactly one creator per key, and everyone got its task.
func TestSpawnManyRacesSingleSpawns(t *testing.T) {
	t.Parallel()
	const n, keys = 16, 20
	ctx := context.Background()
	pool := testdb.ClonePool(t, n+2)
	conns := acquireConns(t, pool, n)
	q := newQueue(t, pool)
	type got struct {
		key     int
		id      durable.UUID
		created bool
	}
	results := make([][]got, n)
	errs := make([]error, n)
	key := func(k int) spawnCall {
		if k%2 == 0 {
			return spawnCall{queue: q, task: "t", params: str(`{}`), key: str(fmt.Sprintf("key-%d", k))}
		}
		return spawnCall{queue: q, task: "t", params: str(fmt.Sprintf(`{"k": %d}`, k)), onlyOnce: true}
	}
	together(n, func(i int) {
		order := rand.Perm(keys)
		if i%2 == 0 {
			calls := make([]spawnCall, keys)
			for j, k := range order {
				calls[j] = key(k)
			}
			b := batchOf(t, calls...)
			rows, err := trySpawnBatch(ctx, conns[i], q, &b)
			if errs[i] = err; err != nil {
				return
			}
			for j, r := range rows {
				results[i] = append(results[i], got{order[j], r.TaskID, r.Created})
			}
			return
		}
		for _, k := range order {
			s, err := trySpawn(ctx, conns[i], key(k))
			if err != nil {
				errs[i] = err
				return
			}
			results[i] = append(results[i], got{k, s.TaskID, s.Created})
		}
	})
	for i, err := range errs {
		require.NoError(t, err, "goroutine %d", i)
	}
	require.Equal(t, keys, countTasks(t, pool, q))
	require.Equal(t, keys, countRuns(t, pool, q))
	created := map[int]int{}
	ids := map[int]durable.UUID{}
	for i, rs := range results {
		require.Len(t, rs, keys, "goroutine %d", i)
		for _, r := range rs {
			if r.created {
				created[r.key]++
			}
			if id, ok := ids[r.key]; ok {
				require.Equal(t, id, r.id, "goroutine %d, key %d", i, r.key)
			}
			ids[r.key] = r.id
		}
	}
	for k := 0; k < keys; k++ {
		require.Equal(t, 1, created[k], "key %d", k)
	}
}

// waitBlocked waits until backend pid waits for a lock.
func waitBlocked(t testing.TB, observer dbtx, pid uint32) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var blocked bool
		require.NoError(t, observer.QueryRow(context.Background(),
			"select cardinality(pg_blocking_pids($1)) > 0", int(pid)).Scan(&blocked))
		if blocked {
			return
		}
		require.True(t, time.Now().Before(deadline), "backend %d never waited", pid)
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSpawnManyOppositeOrders (DEDUP_HARD_CASES 9): two transactions spawn
// batches of the same keys in opposite input orders, x g y and y g x, while a
// third holds g uncommitted, so both are inside their inserts when it ends.
// Taken in input order, each would hold one of x and y and wait for the other
// (40P01); taken in key order, one waits for the other. Both succeed, one
// task per key.
func TestSpawnManyOppositeOrders(t *testing.T) {
	t.Parallel()
	for _, gate := range []string{"commit", "rollback"} {
		t.Run("gate "+gate, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			pool := testdb.ClonePool(t, 5)
			q := newQueue(t, pool)
			conns := acquireConns(t, pool, 3)
			call := func(k string) spawnCall { return spawnCall{queue: q, task: "t", params: str(`{}`), key: str(k)} }

			holder, err := conns[0].Begin(ctx)
			require.NoError(t, err)
			g := spawn(t, holder, call("g"))

			pids := []uint32{backendPID(t, conns[1]), backendPID(t, conns[2])}
			batches := []string{batchOf(t, call("x"), call("g"), call("y")), batchOf(t, call("y"), call("g"), call("x"))}
			results := make([][]batchRow, 2)
			errs := make([]error, 2)
			var wg sync.WaitGroup
			for i := range batches {
				wg.Add(1)
				go func() {
					defer wg.Done()
					tx, err := conns[i+1].Begin(ctx)
					if err != nil {
						errs[i] = err
						return
					}
					if results[i], errs[i] = trySpawnBatch(ctx, tx, q, &batches[i]); errs[i] != nil {
						_ = tx.Rollback(ctx)
						return
					}
					errs[i] = tx.Commit(ctx)
				}()
			}
			waitBlocked(t, pool, pids[0])
			waitBlocked(t, pool, pids[1])
			if gate == "commit" {
				require.NoError(t, holder.Commit(ctx))
			} else {
				require.NoError(t, holder.Rollback(ctx))
			}
			wg.Wait()
			require.NoError(t, errs[0])
			require.NoError(t, errs[1])

			byKey := func(rows []batchRow, order ...string) map[string]batchRow {
				m := map[string]batchRow{}
				for i, k := range order {
					m[k] = rows[i]
				}
				return m
			}
			a, b := byKey(results[0], "x", "g", "y"), byKey(results[1], "y", "g", "x")
			for _, k := range []string{"x", "g", "y"} {
				require.Equal(t, a[k].TaskID, b[k].TaskID, "key %s", k)
				creators := 0
				for _, r := range []batchRow{a[k], b[k]} {
					if r.Created {
						creators++
					}
				}
				if k == "g" && gate == "commit" {
					require.Zero(t, creators)
					require.Equal(t, g.TaskID, a[k].TaskID)
				} else {
					require.Equal(t, 1, creators, "key %s", k)
				}
			}
			require.Equal(t, 3, countTasks(t, pool, q))
		})
	}
}

// TestSpawnManyWaitsForOpenSpawner: a batch with a key that an open
// transaction has just spawned waits for it; after its commit the element
// returns the committed task, after its rollback it creates the task. The
// batch's other elements are spawned either way.
func TestSpawnManyWaitsForOpenSpawner(t *testing.T) {
	t.Parallel()
	for _, commit := range []bool{true, false} {
		t.Run(fmt.Sprintf("commit=%v", commit), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			pool := testdb.ClonePool(t, 4)
			q := newQueue(t, pool)
			conns := acquireConns(t, pool, 2)
			first, err := conns[0].Begin(ctx)
			require.NoError(t, err)
			a := spawn(t, first, spawnCall{queue: q, task: "t", params: str(`{}`), key: str("k")})

			batch := `[{"task_name": "t", "idempotency_key": "other"}, {"task_name": "t", "idempotency_key": "k"}, {"task_name": "t"}]`
			firstPID, secondPID := backendPID(t, first), backendPID(t, conns[1])
			done := make(chan error, 1)
			var rows []batchRow
			go func() {
				var err error
				rows, err = trySpawnBatch(ctx, conns[1], q, &batch)
				done <- err
			}()
			waitBlockedBy(t, pool, secondPID, firstPID)
			if commit {
				require.NoError(t, first.Commit(ctx))
			} else {
				require.NoError(t, first.Rollback(ctx))
			}
			require.NoError(t, <-done)
			require.True(t, rows[0].Created)
			require.True(t, rows[2].Created)
			if commit {
				require.False(t, rows[1].Created)
				require.Equal(t, a.TaskID, rows[1].TaskID)
				require.Equal(t, a.RunID, rows[1].RunID)
			} else {
				require.True(t, rows[1].Created)
				require.NotEqual(t, a.TaskID, rows[1].TaskID)
			}
			require.Equal(t, 3, countTasks(t, pool, q))
		})
	}
}

// TestSpawnManyRepeatableReadConflict: a repeatable read caller whose snapshot
// predates a committed spawn of a key in its batch gets 40001, never a second
// task, and its batch writes nothing.
func TestSpawnManyRepeatableReadConflict(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.ClonePool(t, 4)
	q := newQueue(t, pool)
	conns := acquireConns(t, pool, 2)
	old, err := conns[0].BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	require.NoError(t, err)
	require.Equal(t, 0, countTasks(t, old, q)) // takes the snapshot
	committed := spawn(t, conns[1], spawnCall{queue: q, task: "t", params: str(`{}`), key: str("k")})

	batch := `[{"task_name": "t"}, {"task_name": "t", "idempotency_key": "k"}]`
	_, err = trySpawnBatch(ctx, old, q, &batch)
	requireSQLState(t, err, "40001")
	require.NoError(t, old.Rollback(ctx))
	require.Equal(t, 1, countTasks(t, pool, q))

	rows := spawnBatch(t, pool, q, batch)
	require.False(t, rows[1].Created)
	require.Equal(t, committed.TaskID, rows[1].TaskID)
	require.Equal(t, 2, countTasks(t, pool, q))
}

// TestSpawnManyNotifies: like spawn_task, a batch that created a task
// available at once notifies durable_<queue> when it commits; a batch that
// only found holders, or created tasks available later, does not.
func TestSpawnManyNotifies(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.ClonePool(t, 4)
	q := newQueue(t, pool)
	listener := ntListen(t, pool, q)
	expect := func(want bool, what string) {
		t.Helper()
		limit := 300 * time.Millisecond
		if want {
			limit = 5 * time.Second
		}
		wctx, cancel := context.WithTimeout(ctx, limit)
		defer cancel()
		n, err := listener.Conn().WaitForNotification(wctx)
		if !want {
			require.Error(t, err, "%s: unexpected notification %+v", what, n)
			return
		}
		require.NoError(t, err, "%s: no notification", what)
		require.Equal(t, "durable_"+q, n.Channel, what)
	}
	spawnBatch(t, pool, q, `[{"task_name": "t", "idempotency_key": "k"}, {"task_name": "t", "idempotency_key": "k"}]`)
	expect(true, "keyed batch")
	spawnBatch(t, pool, q, `[{"task_name": "t", "idempotency_key": "k"}]`)
	expect(false, "batch of held keys")
	spawnBatch(t, pool, q, `[{"task_name": "t", "options": {"available_at": "2100-01-01T00:00:00Z"}}]`)
	expect(false, "batch available later")
	spawnBatch(t, pool, q, `[{"task_name": "t", "options": {"available_at": "2100-01-01T00:00:00Z"}}, {"task_name": "t"}]`)
	expect(true, "unkeyed batch")
}

// TestSpawnManyGo: Client.SpawnMany round trip: results in request order,
// keys and options as in Spawn, duplicates sharing a task; SpawnManyTx spawns
// inside the caller's transaction; server errors map to sentinels.
func TestSpawnManyGo(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tx := testdb.Tx(t)
	setNow(t, tx, t0)
	c, err := durable.New(tx, nil)
	require.NoError(t, err)
	q := newQueue(t, tx)
	type params struct {
		N int `json:"n"`
	}
	reqs := []durable.SpawnRequest{
		{TaskName: "a", Params: params{1}},
		{TaskName: "b", Params: json.RawMessage(`{"raw": true}`), Options: &durable.SpawnOptions{IdempotencyKey: "k"}},
		{TaskName: "c", Params: params{3}, Options: &durable.SpawnOptions{OnlyOnce: true, MaxAttempts: 2,
			Headers: map[string]any{"trace": "t"}, AvailableAt: t0.Add(time.Hour)}},
		{TaskName: "b", Params: params{4}, Options: &durable.SpawnOptions{IdempotencyKey: "k"}},
		{TaskName: "c", Params: map[string]int{"n": 3}, Options: &durable.SpawnOptions{OnlyOnce: true}},
		{TaskName: "d"},
	}
	res, err := c.SpawnMany(ctx, q, reqs)
	require.NoError(t, err)
	require.Len(t, res, len(reqs))
	require.Equal(t, []bool{true, true, true, false, false, true}, []bool{
		res[0].Created, res[1].Created, res[2].Created, res[3].Created, res[4].Created, res[5].Created})
	require.Equal(t, res[1].TaskID, res[3].TaskID)
	require.Equal(t, res[2].TaskID, res[4].TaskID)
	require.Equal(t, res[2].RunID, res[4].RunID)
	for i, r := range res {
		require.Equal(t, reqs[i].TaskName, *taskField(t, tx, q, r.TaskID, "task_name"), "request %d", i+1)
		require.Equal(t, 1, r.Attempt)
		require.Equal(t, durable.StatePending, r.State)
	}
	require.JSONEq(t, `{"n": 1}`, *taskField(t, tx, q, res[0].TaskID, "params"))
	require.JSONEq(t, `{"raw": true}`, *taskField(t, tx, q, res[1].TaskID, "params"))
	require.Equal(t, "k", *taskField(t, tx, q, res[1].TaskID, "idempotency_key"))
	require.Equal(t, "2", *taskField(t, tx, q, res[2].TaskID, "max_attempts"))
	require.JSONEq(t, `{"trace": "t"}`, *taskField(t, tx, q, res[2].TaskID, "headers"))
	_, _, at := runOf(t, tx, q, res[2].TaskID, 1)
	requireTime(t, t0.Add(time.Hour), at)
	require.Equal(t, "null", *taskField(t, tx, q, res[5].TaskID, "params"), "nil params are JSON null, as in Spawn")

	// Spawn and SpawnMany derive the same keys.
	s, err := c.Spawn(ctx, q, "c", params{3}, &durable.SpawnOptions{OnlyOnce: true})
	require.NoError(t, err)
	require.False(t, s.Created)
	require.Equal(t, res[2].TaskID, s.TaskID)

	none, err := c.SpawnMany(ctx, q, nil)
	require.NoError(t, err)
	require.Empty(t, none)

	// SpawnManyTx: the tasks exist if and only if the caller's transaction commits.
	sp, err := tx.Begin(ctx)
	require.NoError(t, err)
	inner, err := c.SpawnManyTx(ctx, sp, q, []durable.SpawnRequest{{TaskName: "e"}, {TaskName: "e"}})
	require.NoError(t, err)
	require.Equal(t, 2, countRows(t, sp, "t_", q, "task_name = 'e'"))
	require.NoError(t, sp.Rollback(ctx))
	require.Len(t, inner, 2)
	require.Equal(t, 0, countRows(t, tx, "t_", q, "task_name = 'e'"))

	// Server errors name the request and match their sentinels.
	before := countTasks(t, tx, q)
	for _, tc := range []struct {
		reqs     []durable.SpawnRequest
		code     string
		sentinel error
	}{
		{[]durable.SpawnRequest{{TaskName: "ok"}, {TaskName: ""}}, "QD003", durable.ErrInvalidTaskName},
		{[]durable.SpawnRequest{{TaskName: "ok"}, {TaskName: "x", Options: &durable.SpawnOptions{MaxAttempts: -1}}}, "QD005", durable.ErrInvalidOptions},
		{[]durable.SpawnRequest{{TaskName: "ok"}, {TaskName: "x", Options: &durable.SpawnOptions{ParentTaskID: durable.UUID{1}}}}, "QD020", durable.ErrTaskNotFound},
	} {
		sp, err := tx.Begin(ctx)
		require.NoError(t, err)
		_, err = c.SpawnManyTx(ctx, sp, q, tc.reqs)
		require.NoError(t, sp.Rollback(ctx))
		de := requireSentinels(t, err, tc.code, tc.sentinel)
		require.Contains(t, de.Message, "element 2")
		require.NotNil(t, errors.Unwrap(de))
	}
	sp, err = tx.Begin(ctx)
	require.NoError(t, err)
	_, err = c.SpawnManyTx(ctx, sp, "no_such_queue", []durable.SpawnRequest{{TaskName: "t"}})
	require.NoError(t, sp.Rollback(ctx))
	requireSentinels(t, err, "QD002", durable.ErrQueueNotFound)
	require.Equal(t, before, countTasks(t, tx, q))
}

// TestSpawnManyGoRefusesBeforeRoundTrip: what Spawn refuses before any round
// trip (invalid UTF-8 or NUL in the queue, a task name or a key; params that
// are not JSON or hold \u0000), SpawnMany refuses too, naming the request,
// with 0 calls to the database.
func TestSpawnManyGoRefusesBeforeRoundTrip(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ok := durable.SpawnRequest{TaskName: "ok"}
	cases := []struct {
		name     string
		queue    string
		req      durable.SpawnRequest
		code     string
		sentinel error
	}{
		{"queue invalid UTF-8", "q\xff", ok, "QD001", durable.ErrInvalidQueueName},
		{"queue NUL", "q\x00", ok, "QD001", durable.ErrInvalidQueueName},
		{"task name invalid UTF-8", "q", durable.SpawnRequest{TaskName: "t\xfe"}, "QD003", durable.ErrInvalidTaskName},
		{"task name NUL", "q", durable.SpawnRequest{TaskName: "t\x00"}, "QD003", durable.ErrInvalidTaskName},
		{"key invalid UTF-8", "q", durable.SpawnRequest{TaskName: "t", Options: &durable.SpawnOptions{IdempotencyKey: "\x80"}}, "QD004", durable.ErrInvalidIdempotencyKey},
		{"key NUL", "q", durable.SpawnRequest{TaskName: "t", Options: &durable.SpawnOptions{IdempotencyKey: "k\x00", OnlyOnce: true}}, "QD004", durable.ErrInvalidIdempotencyKey},
		{"params not JSON", "q", durable.SpawnRequest{TaskName: "t", Params: json.RawMessage(`{"a":`)}, "QD006", durable.ErrInvalidArgument},
		{"params cannot marshal", "q", durable.SpawnRequest{TaskName: "t", Params: func() {}}, "QD006", durable.ErrInvalidArgument},
		{"params with NUL", "q", durable.SpawnRequest{TaskName: "t", Params: map[string]string{"a": "x\x00"}}, "QD006", durable.ErrInvalidArgument},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			db := &countingDB{db: testdb.Tx(t)}
			c, err := durable.New(db, nil)
			require.NoError(t, err)
			for _, call := range []func() error{
				func() error { _, err := c.SpawnMany(ctx, tc.queue, []durable.SpawnRequest{ok, tc.req, ok}); return err },
				func() error {
					_, err := c.SpawnManyTx(ctx, db, tc.queue, []durable.SpawnRequest{ok, tc.req, ok})
					return err
				},
			} {
				de := requireSentinels(t, call(), tc.code, tc.sentinel)
				require.Nil(t, errors.Unwrap(de), "a client-side error wraps no server error")
				if tc.queue == "q" {
					require.Contains(t, de.Message, "spawn request 2")
				}
			}
			require.Zero(t, db.calls.Load(), "the client called the database")
		})
	}
}

// A nightly job enqueues one task per overdue invoice, keyed by the invoice,
// in one round trip. Run again after a crash, it gets the same tasks back
// instead of sending every reminder twice.
func ExampleClient_SpawnMany() {
	ctx := context.Background()
	client, err := durable.New(examplePool(), nil)
	if err != nil {
		log.Fatal(err)
	}
	queue := exampleQueueName("reminders")
	if err := client.CreateQueue(ctx, queue); err != nil {
		log.Fatal(err)
	}

	var batch []durable.SpawnRequest
	for _, invoice := range []int{101, 102, 103} {
		batch = append(batch, durable.SpawnRequest{
			TaskName: "send-reminder",
			Params:   map[string]int{"invoice": invoice},
			Options:  &durable.SpawnOptions{IdempotencyKey: fmt.Sprintf("reminder-%d", invoice)},
		})
	}
	first, err := client.SpawnMany(ctx, queue, batch)
	if err != nil {
		log.Fatal(err)
	}
	again, err := client.SpawnMany(ctx, queue, batch)
	if err != nil {
		log.Fatal(err)
	}
	for i := range batch {
		fmt.Printf("invoice %d: created %v, then %v, same task %v\n",
			101+i, first[i].Created, again[i].Created, first[i].TaskID == again[i].TaskID)
	}
	// Output:
	// invoice 101: created true, then false, same task true
	// invoice 102: created true, then false, same task true
	// invoice 103: created true, then false, same task true
}
