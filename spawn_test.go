package durable_test

// Deduplication tests for durable.spawn_task: how keys are derived and scoped,
// when they are held and freed, what a duplicate spawn does (and does not do),
// and how concurrent spawners of one key behave. The rule is in the header of
// sql/functions/spawn_task.sql.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/internal/testdb"
)

// keyKinds are the two ways a spawn gets a key; tests of the key's life
// cycle run with both.
var keyKinds = []struct {
	name string
	call func(queue string) spawnCall
}{
	{"explicit key", func(q string) spawnCall {
		return spawnCall{queue: q, task: "t", params: str(`{"n": 1}`), key: str("the-key")}
	}},
	{"only_once", func(q string) spawnCall {
		return spawnCall{queue: q, task: "t", params: str(`{"n": 1}`), onlyOnce: true}
	}},
}

// TestSpawnKeyDerivation spawns twice and checks whether the second spawn
// found the first task (same key) or created another (different keys).
func TestSpawnKeyDerivation(t *testing.T) {
	t.Parallel()
	const other = "other queue" // a spawnCall.queue placeholder for a second queue
	oo := func(params string) spawnCall { return spawnCall{task: "t", params: str(params), onlyOnce: true} }
	key := func(k string) spawnCall { return spawnCall{task: "t", params: str(`{}`), key: str(k)} }
	cases := []struct {
		name          string
		first, second spawnCall
		same          bool
	}{
		// only_once: params equal as jsonb give the same key.
		{"only_once key order", oo(`{"a": 1, "b": 2}`), oo(`{"b": 2, "a": 1}`), true},
		{"only_once white space", oo(`{"a":1,"b":[1,2]}`), oo(" {\n\t\"a\" :  1 , \"b\" : [ 1 ,2 ] } "), true},
		{"only_once nested key order", oo(`{"o": {"x": 1, "y": [{"p": 1, "q": 2}]}}`), oo(`{"o": {"y": [{"q": 2, "p": 1}], "x": 1}}`), true},
		{`only_once \u00e9 escape vs é`, oo(`{"s": "\u00e9"}`), oo(`{"s": "é"}`), true},
		{"only_once 1e2 vs 100", oo(`{"n": 1e2}`), oo(`{"n": 100}`), true},
		{"only_once duplicate JSON keys keep the last", oo(`{"a": 1, "a": 2}`), oo(`{"a": 2}`), true},
		{"only_once SQL NULL params equal JSON null", spawnCall{task: "t", onlyOnce: true}, oo(`null`), true},
		{"only_once same scalar params", oo(`"x"`), oo(`"x"`), true},
		// only_once: params that differ as text of the jsonb give different keys.
		{"only_once 1 vs 1.0 differ (pinned: number text counts)", oo(`{"n": 1}`), oo(`{"n": 1.0}`), false},
		{"only_once 1.5 vs 1.50 differ (pinned)", oo(`{"n": 1.5}`), oo(`{"n": 1.50}`), false},
		{"only_once array order is significant", oo(`[1, 2]`), oo(`[2, 1]`), false},
		{"only_once duplicate JSON keys: the first value is dropped", oo(`{"a": 1, "a": 2}`), oo(`{"a": 1}`), false},
		{"only_once JSON null vs {}", oo(`null`), oo(`{}`), false},
		{"only_once SQL NULL vs {}", spawnCall{task: "t", onlyOnce: true}, oo(`{}`), false},
		{"only_once string vs number", oo(`{"a": "1"}`), oo(`{"a": 1}`), false},
		{"only_once different values", oo(`{"a": 1}`), oo(`{"a": 2}`), false},
		// The explicit key wins over only_once.
		{"explicit key wins: same key, other params", spawnCall{task: "t", params: str(`{"a": 1}`), onlyOnce: true, key: str("k")},
			spawnCall{task: "t", params: str(`{"a": 2}`), onlyOnce: true, key: str("k")}, true},
		{"explicit key wins: other keys, same params", spawnCall{task: "t", params: str(`{"a": 1}`), onlyOnce: true, key: str("k1")},
			spawnCall{task: "t", params: str(`{"a": 1}`), onlyOnce: true, key: str("k2")}, false},
		{"explicit key with and without only_once", spawnCall{task: "t", params: str(`{"a": 1}`), key: str("k")},
			spawnCall{task: "t", params: str(`{"b": 1}`), onlyOnce: true, key: str("k")}, true},
		{"explicit key vs only_once of the same params", spawnCall{task: "t", params: str(`{"a": 1}`), key: str("k")},
			oo(`{"a": 1}`), false},
		// No key: every spawn creates a task.
		{"no key, same params", spawnCall{task: "t", params: str(`{"a": 1}`)}, spawnCall{task: "t", params: str(`{"a": 1}`)}, false},
		{"only_once then no key", oo(`{"a": 1}`), spawnCall{task: "t", params: str(`{"a": 1}`)}, false},
		// Scope: one queue and one task name.
		{"same key, other task name", key("k"), spawnCall{task: "u", params: str(`{}`), key: str("k")}, false},
		{"same only_once params, other task name", oo(`{"a": 1}`), spawnCall{task: "u", params: str(`{"a": 1}`), onlyOnce: true}, false},
		{"task names are not trimmed or folded", key("k"), spawnCall{task: "T", params: str(`{}`), key: str("k")}, false},
		{"same key, other queue", key("k"), spawnCall{queue: other, task: "t", params: str(`{}`), key: str("k")}, false},
		{"same only_once params, other queue", oo(`{"a": 1}`), spawnCall{queue: other, task: "t", params: str(`{"a": 1}`), onlyOnce: true}, false},
		// Domain separation: no explicit key collides with a derived one.
		{"explicit key equal to the only_once encoding", key(`o:["t", {}]`), oo(`{}`), false},
		{"only_once first, then the explicit key of its encoding", oo(`{}`), key(`o:["t", {}]`), false},
		{"explicit key equal to the [name, params] array", key(`["t", {}]`), oo(`{}`), false},
		{"explicit key equal to the only_once hash in hex", key("1c92938c2a0c608d014cec737724b420d34206d1ee403fb22d5d58125ceca9a0"), oo(`{}`), false},
		{"only_once params equal to an explicit key's encoding", key("abc"), oo(`"k:abc"`), false},
		// Explicit keys are opaque bytes.
		{"key NFC vs NFD", key("caf\u00e9"), key("cafe\u0301"), false},
		{"key case", key("Key"), key("key"), false},
		{"key trailing space", key("k"), key("k "), false},
		{"key leading space", key("k"), key(" k"), false},
		{"key identical", key("k"), key("k"), true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tx := testdb.Tx(t)
			q := newQueue(t, tx)
			otherQ := ""
			place := func(c spawnCall) spawnCall {
				if c.queue == other {
					if otherQ == "" {
						otherQ = newQueue(t, tx)
					}
					c.queue = otherQ
				} else {
					c.queue = q
				}
				return c
			}
			first := place(tc.first)
			second := place(tc.second)

			a := spawn(t, tx, first)
			require.True(t, a.Created)
			b := spawn(t, tx, second)
			if tc.same {
				require.False(t, b.Created, "the second spawn should find the first task")
				require.Equal(t, a.TaskID, b.TaskID)
				require.Equal(t, a.RunID, b.RunID)
				require.Equal(t, 1, countTasks(t, tx, q))
				require.Equal(t, 1, countRuns(t, tx, q))
			} else {
				require.True(t, b.Created, "the second spawn should create its own task")
				require.NotEqual(t, a.TaskID, b.TaskID)
				n := countTasks(t, tx, q)
				if otherQ != "" {
					n += countTasks(t, tx, otherQ)
				}
				require.Equal(t, 2, n)
			}
		})
	}
}

// TestSpawnGoldenKeyHash pins the stored key hashes, so that a change of the
// encoding (or of jsonb's text form) cannot silently free every held key.
func TestSpawnGoldenKeyHash(t *testing.T) {
	t.Parallel()
	tx := testdb.Tx(t)
	q := newQueue(t, tx)
	cases := []struct {
		name    string
		call    spawnCall
		hash    string
		keyText *string
	}{
		// sha256(convert_to('k:abc', 'UTF8'))
		{"explicit", spawnCall{queue: q, task: "t", params: str(`{"ignored": true}`), key: str("abc")},
			"cbbf00e084eb4016e5e80bc147b150dd297ef3f2948b196db7f75bd59fd953c6", str("abc")},
		// sha256(convert_to('o:["t", {"a": 1}]', 'UTF8'))
		{"only_once", spawnCall{queue: q, task: "t", params: str(`{ "a" : 1 }`), onlyOnce: true},
			"52e9cd9b8a22f63161c29f1cc22d3507db1f4d4f35be20c3780d5b86ab08c985", nil},
		// sha256(convert_to('o:["t", {}]', 'UTF8'))
		{"only_once empty object", spawnCall{queue: q, task: "t", params: str(`{}`), onlyOnce: true},
			"1c92938c2a0c608d014cec737724b420d34206d1ee403fb22d5d58125ceca9a0", nil},
	}
	for _, tc := range cases {
		s := spawn(t, tx, tc.call)
		require.True(t, s.Created, tc.name)
		var hash string
		var keyText *string
		var held bool
		require.NoError(t, tx.QueryRow(context.Background(),
			fmt.Sprintf("select encode(key_hash, 'hex'), idempotency_key, key_held from %s where task_id = $1", tableName("t_", q)),
			s.TaskID).Scan(&hash, &keyText, &held), tc.name)
		require.Equal(t, tc.hash, hash, tc.name)
		require.Equal(t, tc.keyText, keyText, tc.name)
		require.True(t, held, tc.name)
	}
	// A task without a key has neither hash nor key and holds nothing.
	s := spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{"a": 1}`)})
	require.Nil(t, taskField(t, tx, q, s.TaskID, "key_hash"))
	require.Nil(t, taskField(t, tx, q, s.TaskID, "idempotency_key"))
	require.Equal(t, "false", *taskField(t, tx, q, s.TaskID, "key_held"))
}

// TestSpawnKeyHeldWhileLive: while the task is pending, running or sleeping, a
// spawn with its key returns it (created = false) with its current run,
// attempt and state.
func TestSpawnKeyHeldWhileLive(t *testing.T) {
	t.Parallel()
	type want struct {
		attempt int
		state   string
	}
	cases := []struct {
		name    string
		options string
		// bring moves the task spawned at t0 to the state under test.
		bring func(t *testing.T, tx pgx.Tx, q string, s spawned)
		want  want
	}{
		{"pending", "", func(*testing.T, pgx.Tx, string, spawned) {}, want{1, "pending"}},
		{"pending, available later", `{"available_at": "2031-01-01T00:00:00Z"}`,
			func(*testing.T, pgx.Tx, string, spawned) {}, want{1, "pending"}},
		{"running", "", func(t *testing.T, tx pgx.Tx, q string, s spawned) {
			claimOne(t, tx, q)
		}, want{1, "running"}},
		{"sleeping in retry backoff", `{"retry_strategy": {"kind": "fixed", "base_seconds": 60}}`,
			func(t *testing.T, tx pgx.Tx, q string, s spawned) {
				r := claimOne(t, tx, q)
				failRun(t, tx, q, r.RunID, `{"message": "boom"}`)
			}, want{2, "sleeping"}},
		{"pending retry", `{"retry_strategy": {"kind": "none"}}`,
			func(t *testing.T, tx pgx.Tx, q string, s spawned) {
				r := claimOne(t, tx, q)
				failRun(t, tx, q, r.RunID, `{"message": "boom"}`)
			}, want{2, "pending"}},
		{"running again after its lease expired", `{"retry_strategy": {"kind": "none"}}`,
			func(t *testing.T, tx pgx.Tx, q string, s spawned) {
				claim(t, tx, q, "w1", 10, 1)
				setNow(t, tx, t0.Add(10*time.Second))
				runs := claim(t, tx, q, "w2", 10, 1)
				require.Len(t, runs, 1)
				require.Equal(t, 2, runs[0].Attempt)
			}, want{2, "running"}},
	}
	for _, kind := range keyKinds {
		for _, tc := range cases {
			t.Run(kind.name+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				tx := testdb.Tx(t)
				setNow(t, tx, t0)
				q := newQueue(t, tx)
				call := kind.call(q)
				call.options = tc.options
				s := spawn(t, tx, call)
				require.True(t, s.Created)
				tc.bring(t, tx, q, s)
				wantRun, wantState, _ := runOf(t, tx, q, s.TaskID, tc.want.attempt)
				require.Equal(t, tc.want.state, wantState)

				dup := spawn(t, tx, call)
				require.False(t, dup.Created)
				require.Equal(t, s.TaskID, dup.TaskID)
				require.Equal(t, wantRun, dup.RunID)
				require.Equal(t, tc.want.attempt, dup.Attempt)
				require.Equal(t, tc.want.state, dup.State)
				require.Equal(t, 1, countTasks(t, tx, q))
				require.Equal(t, tc.want.attempt, countRuns(t, tx, q))
			})
		}
	}
}

// TestSpawnKeyFreedWhenFinished: once the holder completed, failed or was
// cancelled, the next spawn with its key creates a new task, which then holds
// the key.
func TestSpawnKeyFreedWhenFinished(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		options string
		finish  func(t *testing.T, tx pgx.Tx, q string, s spawned)
		state   string
	}{
		{"completed", "", func(t *testing.T, tx pgx.Tx, q string, s spawned) {
			completeRun(t, tx, q, claimOne(t, tx, q).RunID, `"ok"`)
		}, "completed"},
		{"failed, attempts used up", `{"max_attempts": 1}`, func(t *testing.T, tx pgx.Tx, q string, s spawned) {
			failRun(t, tx, q, claimOne(t, tx, q).RunID, `{"message": "boom"}`)
		}, "failed"},
		{"failed, not retryable", `{"max_attempts": 5}`, func(t *testing.T, tx pgx.Tx, q string, s spawned) {
			failRun(t, tx, q, claimOne(t, tx, q).RunID, `{"retryable": false}`)
		}, "failed"},
		{"failed, last lease expired", `{"max_attempts": 1}`, func(t *testing.T, tx pgx.Tx, q string, s spawned) {
			claim(t, tx, q, "w1", 5, 1)
			setNow(t, tx, t0.Add(5*time.Second))
			require.Empty(t, claim(t, tx, q, "w2", 5, 1))
		}, "failed"},
		{"cancelled while pending", "", func(t *testing.T, tx pgx.Tx, q string, s spawned) {
			require.Equal(t, "cancelled", cancelTask(t, tx, q, s.TaskID))
		}, "cancelled"},
		{"cancelled while running", "", func(t *testing.T, tx pgx.Tx, q string, s spawned) {
			claimOne(t, tx, q)
			require.Equal(t, "cancelled", cancelTask(t, tx, q, s.TaskID))
		}, "cancelled"},
		{"cancelled while sleeping", `{"retry_strategy": {"kind": "fixed", "base_seconds": 60}}`,
			func(t *testing.T, tx pgx.Tx, q string, s spawned) {
				failRun(t, tx, q, claimOne(t, tx, q).RunID, `{"message": "boom"}`)
				require.Equal(t, "cancelled", cancelTask(t, tx, q, s.TaskID))
			}, "cancelled"},
	}
	for _, kind := range keyKinds {
		for _, tc := range cases {
			t.Run(kind.name+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				tx := testdb.Tx(t)
				setNow(t, tx, t0)
				q := newQueue(t, tx)
				call := kind.call(q)
				call.options = tc.options
				old := spawn(t, tx, call)
				require.True(t, old.Created)
				tc.finish(t, tx, q, old)
				require.Equal(t, tc.state, *taskField(t, tx, q, old.TaskID, "state"))
				require.Equal(t, "false", *taskField(t, tx, q, old.TaskID, "key_held"))

				fresh := spawn(t, tx, call)
				require.True(t, fresh.Created, "a finished task must not hold its key")
				require.NotEqual(t, old.TaskID, fresh.TaskID)
				require.Equal(t, 1, fresh.Attempt)
				require.Equal(t, "pending", fresh.State)
				require.Equal(t, "true", *taskField(t, tx, q, fresh.TaskID, "key_held"))
				require.Equal(t, *taskField(t, tx, q, old.TaskID, "key_hash"), *taskField(t, tx, q, fresh.TaskID, "key_hash"))
				require.Equal(t, 2, countTasks(t, tx, q))

				again := spawn(t, tx, call)
				require.False(t, again.Created)
				require.Equal(t, fresh.TaskID, again.TaskID)
			})
		}
	}
}

// TestSpawnDuplicateWritesNothing: a duplicate spawn inserts and updates no
// row, and ignores its own params and options: the holder keeps its params,
// options, state, run and available_at.
func TestSpawnDuplicateWritesNothing(t *testing.T) {
	t.Parallel()
	for _, kind := range keyKinds {
		for _, holder := range []string{"pending", "running"} {
			t.Run(kind.name+"/"+holder, func(t *testing.T) {
				t.Parallel()
				tx := testdb.Tx(t)
				setNow(t, tx, t0)
				q := newQueue(t, tx)
				call := kind.call(q)
				call.options = `{"max_attempts": 3, "headers": {"trace": "first"}, "available_at": "2030-01-02T03:00:00Z",
				                 "retry_strategy": {"kind": "fixed", "base_seconds": 7}}`
				s := spawn(t, tx, call)
				require.True(t, s.Created)
				if holder == "running" {
					claimOne(t, tx, q)
				}
				setNow(t, tx, t0.Add(time.Minute))
				before := queueSnapshot(t, tx, q)
				writesBefore := writes(t, tx)

				dup := call
				if kind.name == "explicit key" {
					dup.params = str(`{"n": 2, "other": "params"}`)
				}
				dup.options = `{"max_attempts": 9, "headers": {"trace": "second"}, "available_at": "2031-01-01T00:00:00Z",
				                "retry_strategy": {"kind": "none"}}`
				d := spawn(t, tx, dup)
				require.False(t, d.Created)
				require.Equal(t, s.TaskID, d.TaskID)
				require.Equal(t, s.RunID, d.RunID)
				require.Equal(t, holder, d.State)

				require.Equal(t, writesBefore, writes(t, tx), "a duplicate spawn wrote rows")
				require.Equal(t, before, queueSnapshot(t, tx, q), "a duplicate spawn changed the holder")
				require.JSONEq(t, `{"n": 1}`, *taskField(t, tx, q, s.TaskID, "params"))
				require.JSONEq(t, `{"trace": "first"}`, *taskField(t, tx, q, s.TaskID, "headers"))
				require.Equal(t, "3", *taskField(t, tx, q, s.TaskID, "max_attempts"))
				_, _, at := runOf(t, tx, q, s.TaskID, 1)
				requireTime(t, time.Date(2030, 1, 2, 3, 0, 0, 0, time.UTC), at)
			})
		}
	}
}

// TestSpawnLargeKeysAndParams: keys of 10 kB and 1 MB and only_once params of
// 5 MB deduplicate like small ones; the index holds a 32-byte hash.
func TestSpawnLargeKeysAndParams(t *testing.T) {
	t.Parallel()
	big := func(n int) string {
		var b strings.Builder
		for b.Len() < n {
			fmt.Fprintf(&b, "%08d", b.Len())
		}
		return b.String()[:n]
	}
	blob := big(5 << 20)
	params5MB := fmt.Sprintf(`{"n": 1, "blob": %q}`, blob)
	cases := []struct {
		name    string
		call    spawnCall
		variant spawnCall // a key of the same size that differs in its last byte
	}{
		{"10 kB key", spawnCall{task: "t", key: str(big(10 << 10))}, spawnCall{task: "t", key: str(big(10<<10-1) + "x")}},
		{"1 MB key", spawnCall{task: "t", key: str(big(1 << 20))}, spawnCall{task: "t", key: str(big(1<<20-1) + "x")}},
		{"5 MB only_once params", spawnCall{task: "t", params: str(params5MB), onlyOnce: true},
			spawnCall{task: "t", params: str(fmt.Sprintf(`{"n": 1, "blob": %q}`, blob[:len(blob)-1]+"x")), onlyOnce: true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tx := testdb.Tx(t)
			q := newQueue(t, tx)
			tc.call.queue, tc.variant.queue = q, q
			a := spawn(t, tx, tc.call)
			require.True(t, a.Created)
			b := spawn(t, tx, tc.call)
			require.False(t, b.Created)
			require.Equal(t, a.TaskID, b.TaskID)
			c := spawn(t, tx, tc.variant)
			require.True(t, c.Created, "keys differing in the last byte must not collide")
			require.Equal(t, 2, countTasks(t, tx, q))
			require.Equal(t, 2, countRows(t, tx, "t_", q, "octet_length(key_hash) = 32"))
			if tc.call.key != nil {
				require.Equal(t, 1, countRows(t, tx, "t_", q, "idempotency_key = $1", *tc.call.key),
					"the caller's key is kept whole")
			}
		})
	}
}

// TestSpawnOddKeysAreInert: keys and task names with quotes, format
// directives, backslashes, placeholders and SQL are stored as given and
// deduplicate like any other text.
func TestSpawnOddKeysAreInert(t *testing.T) {
	t.Parallel()
	odd := []string{
		`'`, `''`, `"`, `"t_x"`, `%`, `%s %I %L %%`, `\`, `\\'`, `\x00`, `$1`, `$$`, `$q$ x $q$`,
		`'; drop table durable.queues; --`, `"); delete from durable.queues; --`,
		"tab\tnew\nline", "emoji 🦆 and ß", "\u202eright-to-left",
	}
	tx := testdb.Tx(t)
	q := newQueue(t, tx)
	ids := map[durable.UUID]bool{}
	for _, s := range odd {
		for _, call := range []spawnCall{
			{queue: q, task: "t", key: str(s)},
			{queue: q, task: s, key: str("k")},
			{queue: q, task: s, params: str(jsonString(t, map[string]string{"v": s})), onlyOnce: true},
		} {
			a := spawn(t, tx, call)
			require.True(t, a.Created, "%q", s)
			b := spawn(t, tx, call)
			require.False(t, b.Created, "%q", s)
			require.Equal(t, a.TaskID, b.TaskID, "%q", s)
			ids[a.TaskID] = true
		}
		require.Equal(t, 1, countRows(t, tx, "t_", q, "idempotency_key = $1 and task_name = 't'", s), "%q", s)
		require.Equal(t, 2, countRows(t, tx, "t_", q, "task_name = $1", s), "%q", s)
	}
	require.Len(t, ids, 3*len(odd))
	require.Equal(t, 3*len(odd), countTasks(t, tx, q))
	var queues int
	require.NoError(t, tx.QueryRow(context.Background(), "select count(*) from durable.queues where queue_name = $1", q).Scan(&queues))
	require.Equal(t, 1, queues)
}

// TestSpawnGoClientSharesKeys: the Go client and SQL callers derive the same
// keys; Go nil params are JSON null (SQL NULL), an empty struct is {}.
func TestSpawnGoClientSharesKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tx := testdb.Tx(t)
	c, err := durable.New(tx, nil)
	require.NoError(t, err)
	q := newQueue(t, tx)

	type params struct {
		B int    `json:"b"`
		A string `json:"a"`
	}
	cases := []struct {
		name   string
		goArgs any
		goOpts *durable.SpawnOptions
		sql    spawnCall
		same   bool
	}{
		{"explicit key", map[string]int{"x": 1}, &durable.SpawnOptions{IdempotencyKey: "go-key"},
			spawnCall{task: "t1", params: str(`{"y": 2}`), key: str("go-key")}, true},
		{"only_once struct vs reordered JSON", params{B: 2, A: "é"}, &durable.SpawnOptions{OnlyOnce: true},
			spawnCall{task: "t2", params: str(`{"a": "\u00e9", "b": 2}`), onlyOnce: true}, true},
		{"only_once nil params vs SQL NULL", nil, &durable.SpawnOptions{OnlyOnce: true},
			spawnCall{task: "t3", onlyOnce: true}, true},
		{"only_once empty struct vs SQL NULL", struct{}{}, &durable.SpawnOptions{OnlyOnce: true},
			spawnCall{task: "t4", onlyOnce: true}, false},
		{"only_once empty struct vs {}", struct{}{}, &durable.SpawnOptions{OnlyOnce: true},
			spawnCall{task: "t5", params: str(`{}`), onlyOnce: true}, true},
		{"explicit key wins over OnlyOnce", map[string]int{"x": 1}, &durable.SpawnOptions{OnlyOnce: true, IdempotencyKey: "k6"},
			spawnCall{task: "t6", params: str(`{"x": 2}`), key: str("k6")}, true},
	}
	for _, tc := range cases {
		tc.sql.queue = q
		r, err := c.Spawn(ctx, q, tc.sql.task, tc.goArgs, tc.goOpts)
		require.NoError(t, err, tc.name)
		require.True(t, r.Created, tc.name)
		s := spawn(t, tx, tc.sql)
		if tc.same {
			require.False(t, s.Created, tc.name)
			require.Equal(t, r.TaskID, s.TaskID, tc.name)
		} else {
			require.True(t, s.Created, tc.name)
		}
		// And the other way round: the Go client finds the task SQL holds.
		r2, err := c.Spawn(ctx, q, tc.sql.task, tc.goArgs, tc.goOpts)
		require.NoError(t, err, tc.name)
		require.False(t, r2.Created, tc.name)
		require.Equal(t, r.TaskID, r2.TaskID, tc.name)
		require.Equal(t, durable.StatePending, r2.State, tc.name)
	}
}

// TestSpawnTwiceInOneTransaction: a transaction sees its own uncommitted
// task, so its second spawn of a key returns the first.
func TestSpawnTwiceInOneTransaction(t *testing.T) {
	t.Parallel()
	for _, kind := range keyKinds {
		t.Run(kind.name, func(t *testing.T) {
			t.Parallel()
			tx := testdb.Tx(t)
			q := newQueue(t, tx)
			a := spawn(t, tx, kind.call(q))
			b := spawn(t, tx, kind.call(q))
			require.True(t, a.Created)
			require.False(t, b.Created)
			require.Equal(t, a.TaskID, b.TaskID)
			require.Equal(t, 1, countTasks(t, tx, q))
		})
	}
}

// TestSpawnAfterRollbackToSavepoint: a spawn undone by ROLLBACK TO SAVEPOINT
// frees its key; spawning again creates the task, and one task commits.
func TestSpawnAfterRollbackToSavepoint(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.ClonePool(t, 4)
	for _, kind := range keyKinds {
		q := newQueue(t, pool)
		tx, err := pool.Begin(ctx)
		require.NoError(t, err)
		sp, err := tx.Begin(ctx)
		require.NoError(t, err)
		undone := spawn(t, sp, kind.call(q))
		require.True(t, undone.Created)
		require.NoError(t, sp.Rollback(ctx))
		kept := spawn(t, tx, kind.call(q))
		require.True(t, kept.Created, kind.name)
		require.NotEqual(t, undone.TaskID, kept.TaskID)
		require.NoError(t, tx.Commit(ctx))
		require.Equal(t, 1, countTasks(t, pool, q), kind.name)
		require.Equal(t, 1, countRuns(t, pool, q), kind.name)
		require.Equal(t, 1, countRows(t, pool, "t_", q, "task_id = $1", kept.TaskID))
	}
}

// TestSpawnConcurrentOneKey: 64 goroutines, each on its own connection,
// spawn one key at the same moment, each on a fresh queue:
//   - in autocommit, with an explicit key and with only_once: exactly 1
//     created = true, 64 same task_id, 1 task, 1 run, 0 errors;
//   - each in its own transaction, all committing: the same;
//   - each in its own transaction, every other one rolling back: the 32
//     committers got one task_id and one of them created it; exactly 1 task
//     and 1 run remain; 0 errors.
func TestSpawnConcurrentOneKey(t *testing.T) {
	t.Parallel()
	const n = 64
	ctx := context.Background()
	pool := testdb.ClonePool(t, n+2)
	conns := acquireConns(t, pool, n)

	cases := []struct {
		name string
		tx   bool
		// commits says whether goroutine i commits (transactions only).
		commits func(i int) bool
		call    func(q string, i int) spawnCall
	}{
		{"autocommit/explicit key", false, nil, func(q string, i int) spawnCall {
			return spawnCall{queue: q, task: "t", params: str(fmt.Sprintf(`{"i": %d}`, i)), key: str("k")}
		}},
		{"autocommit/only_once", false, nil, func(q string, i int) spawnCall {
			return spawnCall{queue: q, task: "t", params: str(`{"b": 2, "a": 1}`), onlyOnce: true}
		}},
		// Half of the callers also ask for only_once: the explicit key wins.
		{"transactions/all commit", true, func(int) bool { return true }, func(q string, i int) spawnCall {
			return spawnCall{queue: q, task: "t", params: str(fmt.Sprintf(`{"i": %d}`, i)), onlyOnce: i%4 < 2, key: str("k")}
		}},
		{"transactions/half roll back", true, func(i int) bool { return i%2 == 0 }, func(q string, i int) spawnCall {
			return spawnCall{queue: q, task: "t", params: str(fmt.Sprintf(`{"i": %d}`, i)), onlyOnce: i%4 < 2, key: str("k")}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			q := newQueue(t, pool)
			var txs []pgx.Tx
			if tc.tx {
				txs = make([]pgx.Tx, n)
				for i, c := range conns {
					tx, err := c.Begin(ctx)
					require.NoError(t, err)
					txs[i] = tx
				}
			}
			results := make([]spawned, n)
			errs := make([]error, n)
			together(n, func(i int) {
				if !tc.tx {
					results[i], errs[i] = trySpawn(ctx, conns[i], tc.call(q, i))
					return
				}
				if results[i], errs[i] = trySpawn(ctx, txs[i], tc.call(q, i)); errs[i] != nil {
					_ = txs[i].Rollback(ctx)
					return
				}
				// Let the other goroutines reach their spawn before ending.
				time.Sleep(time.Duration(rand.IntN(5)) * time.Millisecond)
				if tc.commits(i) {
					errs[i] = txs[i].Commit(ctx)
				} else {
					errs[i] = txs[i].Rollback(ctx)
				}
			})
			requireHerd(t, results, errs, tc.commits)
			require.Equal(t, 1, countTasks(t, pool, q))
			require.Equal(t, 1, countRuns(t, pool, q))
			survivor := *mustUUID(t, pool, fmt.Sprintf("select task_id from %s", tableName("t_", q)))
			for i, r := range results {
				if tc.commits == nil || tc.commits(i) {
					require.Equal(t, survivor, r.TaskID, "goroutine %d", i)
				}
			}
		})
	}
}

// requireHerd checks the outcome of concurrent spawns of one key: no errors,
// and among the callers that count (all when counts is nil) exactly one
// created the task and all got its id.
func requireHerd(t *testing.T, results []spawned, errs []error, counts func(i int) bool) {
	t.Helper()
	created, counted := 0, 0
	var id durable.UUID
	for i, err := range errs {
		require.NoError(t, err, "goroutine %d", i)
	}
	for i, r := range results {
		if counts != nil && !counts(i) {
			continue
		}
		counted++
		if r.Created {
			created++
		}
		if id.IsZero() {
			id = r.TaskID
		}
		require.Equal(t, id, r.TaskID, "goroutine %d got another task", i)
	}
	require.Positive(t, counted)
	require.Equal(t, 1, created, "exactly one spawn creates the task")
}

// TestSpawnWaitsForOpenSpawner: a spawn of a key that an open transaction has
// just spawned waits for that transaction; after its commit it returns the
// committed task (created = false), after its rollback it creates the task.
func TestSpawnWaitsForOpenSpawner(t *testing.T) {
	t.Parallel()
	for _, commit := range []bool{true, false} {
		name := map[bool]string{true: "first commits", false: "first rolls back"}[commit]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			pool := testdb.ClonePool(t, 4)
			q := newQueue(t, pool)
			conns := acquireConns(t, pool, 2)
			call := spawnCall{queue: q, task: "t", params: str(`{}`), key: str("k")}

			first, err := conns[0].Begin(ctx)
			require.NoError(t, err)
			a := spawn(t, first, call)
			require.True(t, a.Created)

			firstPID, secondPID := backendPID(t, first), backendPID(t, conns[1])
			type outcome struct {
				s   spawned
				err error
			}
			done := make(chan outcome, 1)
			go func() {
				s, err := trySpawn(ctx, conns[1], call)
				done <- outcome{s, err}
			}()
			waitBlockedBy(t, pool, secondPID, firstPID)
			select {
			case o := <-done:
				t.Fatalf("the second spawn returned while the first was open: %+v", o)
			default:
			}

			if commit {
				require.NoError(t, first.Commit(ctx))
			} else {
				require.NoError(t, first.Rollback(ctx))
			}
			o := <-done
			require.NoError(t, o.err)
			if commit {
				require.False(t, o.s.Created)
				require.Equal(t, a.TaskID, o.s.TaskID)
				require.Equal(t, a.RunID, o.s.RunID)
			} else {
				require.True(t, o.s.Created)
				require.NotEqual(t, a.TaskID, o.s.TaskID)
			}
			require.Equal(t, 1, countTasks(t, pool, q))
			require.Equal(t, 1, countRuns(t, pool, q))
		})
	}
}

// TestSpawnWaitsForSpawnerThatFinishesTheTask: the open transaction spawns
// the key and cancels the task before committing; the waiting spawn then
// finds the key free and creates a new task.
func TestSpawnWaitsForSpawnerThatFinishesTheTask(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.ClonePool(t, 4)
	q := newQueue(t, pool)
	conns := acquireConns(t, pool, 2)
	call := spawnCall{queue: q, task: "t", params: str(`{}`), key: str("k")}

	first, err := conns[0].Begin(ctx)
	require.NoError(t, err)
	a := spawn(t, first, call)
	firstPID, secondPID := backendPID(t, first), backendPID(t, conns[1])
	done := make(chan error, 1)
	var b spawned
	go func() {
		var err error
		b, err = trySpawn(ctx, conns[1], call)
		done <- err
	}()
	waitBlockedBy(t, pool, secondPID, firstPID)
	require.Equal(t, "cancelled", cancelTask(t, first, q, a.TaskID))
	require.NoError(t, first.Commit(ctx))
	require.NoError(t, <-done)
	require.True(t, b.Created)
	require.NotEqual(t, a.TaskID, b.TaskID)
	require.Equal(t, 2, countTasks(t, pool, q))
	require.Equal(t, 1, countRows(t, pool, "t_", q, "key_held"))
}

// TestSpawnInvisibleUntilCommit: no worker can claim a task whose spawning
// transaction is still open.
func TestSpawnInvisibleUntilCommit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.ClonePool(t, 4)
	q := newQueue(t, pool)
	conns := acquireConns(t, pool, 2)
	tx, err := conns[0].Begin(ctx)
	require.NoError(t, err)
	s := spawn(t, tx, spawnCall{queue: q, task: "t", params: str(`{}`), key: str("k")})

	require.Empty(t, claim(t, conns[1], q, "w", 30, 10), "claimed a task before its spawn committed")
	require.Equal(t, 0, countTasks(t, conns[1], q))
	require.NoError(t, tx.Commit(ctx))
	runs := claim(t, conns[1], q, "w", 30, 10)
	require.Len(t, runs, 1)
	require.Equal(t, s.TaskID, runs[0].TaskID)
	require.Equal(t, s.RunID, runs[0].RunID)
}

// TestSpawnRepeatableReadConflict: a repeatable read or serializable caller
// whose snapshot predates a committed spawn of its key gets 40001, never a
// second task; with a snapshot taken after the commit it gets the task.
func TestSpawnRepeatableReadConflict(t *testing.T) {
	t.Parallel()
	for _, iso := range []pgx.TxIsoLevel{pgx.RepeatableRead, pgx.Serializable} {
		for _, kind := range keyKinds {
			t.Run(string(iso)+"/"+kind.name, func(t *testing.T) {
				t.Parallel()
				ctx := context.Background()
				pool := testdb.ClonePool(t, 4)
				q := newQueue(t, pool)
				conns := acquireConns(t, pool, 2)

				old, err := conns[0].BeginTx(ctx, pgx.TxOptions{IsoLevel: iso})
				require.NoError(t, err)
				require.Equal(t, 0, countTasks(t, old, q)) // takes the snapshot
				committed := spawn(t, conns[1], kind.call(q))
				require.True(t, committed.Created)

				_, err = trySpawn(ctx, old, kind.call(q))
				requireSQLState(t, err, "40001")
				require.NoError(t, old.Rollback(ctx))
				require.Equal(t, 1, countTasks(t, pool, q))

				fresh, err := conns[0].BeginTx(ctx, pgx.TxOptions{IsoLevel: iso})
				require.NoError(t, err)
				s := spawn(t, fresh, kind.call(q))
				require.False(t, s.Created)
				require.Equal(t, committed.TaskID, s.TaskID)
				require.NoError(t, fresh.Commit(ctx))
				require.Equal(t, 1, countTasks(t, pool, q))
			})
		}
	}
}

// TestSpawnDoesNotWaitForLockedHolder: a worker holding the holder's task
// row (select for update, or an uncommitted claim) does not delay a
// duplicate spawn: it returns under a 2 s statement_timeout while the lock is
// held.
func TestSpawnDoesNotWaitForLockedHolder(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		lock  func(t *testing.T, tx pgx.Tx, q string, s spawned)
		state string // the state the spawner sees: the committed one
	}{
		{"select for update", func(t *testing.T, tx pgx.Tx, q string, s spawned) {
			mustExec(t, tx, fmt.Sprintf("select 1 from %s where task_id = $1 for update", tableName("t_", q)), s.TaskID)
		}, "pending"},
		{"claim in flight", func(t *testing.T, tx pgx.Tx, q string, s spawned) {
			claimOne(t, tx, q)
		}, "pending"},
		{"complete in flight", func(t *testing.T, tx pgx.Tx, q string, s spawned) {
			completeRun(t, tx, q, s.RunID, `"done"`)
		}, "running"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			pool := testdb.ClonePool(t, 4)
			q := newQueue(t, pool)
			conns := acquireConns(t, pool, 2)
			call := spawnCall{queue: q, task: "t", params: str(`{}`), key: str("k")}
			s := spawn(t, pool, call)
			if tc.name == "complete in flight" {
				r := claimOne(t, pool, q)
				s.RunID = r.RunID
			}
			worker, err := conns[0].Begin(ctx)
			require.NoError(t, err)
			defer func() { _ = worker.Rollback(ctx) }()
			tc.lock(t, worker, q, s)

			mustExec(t, conns[1], "set statement_timeout = '2s'")
			d, err := trySpawn(ctx, conns[1], call)
			require.NoError(t, err, "the duplicate spawn waited for the worker's lock")
			require.False(t, d.Created)
			require.Equal(t, s.TaskID, d.TaskID)
			require.Equal(t, tc.state, d.State)
			require.Equal(t, 1, countTasks(t, conns[1], q))
		})
	}
}

// TestSpawnBoundedWait: a spawner blocked behind an open spawner's
// transaction honours lock_timeout (55P03) and statement_timeout (57014) and
// leaves no task or run behind, whether the first spawner then commits (1
// task, its own) or rolls back (0 tasks).
func TestSpawnBoundedWait(t *testing.T) {
	t.Parallel()
	cases := []struct {
		setting string
		code    string
		commit  bool
	}{
		{"lock_timeout", "55P03", true},
		{"lock_timeout", "55P03", false},
		{"statement_timeout", "57014", true},
		{"statement_timeout", "57014", false},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%s/commit=%v", tc.setting, tc.commit), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			pool := testdb.ClonePool(t, 4)
			q := newQueue(t, pool)
			conns := acquireConns(t, pool, 2)
			call := spawnCall{queue: q, task: "t", params: str(`{}`), onlyOnce: true}

			first, err := conns[0].Begin(ctx)
			require.NoError(t, err)
			a := spawn(t, first, call)

			mustExec(t, conns[1], fmt.Sprintf("set %s = '200ms'", tc.setting))
			_, err = trySpawn(ctx, conns[1], call)
			requireSQLState(t, err, tc.code)
			mustExec(t, conns[1], fmt.Sprintf("reset %s", tc.setting))
			require.Equal(t, 0, countTasks(t, conns[1], q), "the timed-out spawn left a task")
			require.Equal(t, 0, countRuns(t, conns[1], q), "the timed-out spawn left a run")

			if tc.commit {
				require.NoError(t, first.Commit(ctx))
				require.Equal(t, 1, countTasks(t, pool, q))
				require.Equal(t, 1, countRuns(t, pool, q))
				require.Equal(t, 1, countRows(t, pool, "t_", q, "task_id = $1", a.TaskID))
			} else {
				require.NoError(t, first.Rollback(ctx))
				require.Equal(t, 0, countTasks(t, pool, q))
				require.Equal(t, 0, countRuns(t, pool, q))
			}
		})
	}
}

// TestSpawnSoak: for 3 s, 6 goroutines spawn 4 hot keys (explicit and
// only_once) while a worker claims them and completes, fails or cancels
// them, and a sampler checks the tables: at no sample is there more than one
// live (pending/running/sleeping) task per key, or a live task that does not
// hold its key; every spawn returns an id; 0 errors.
func TestSpawnSoak(t *testing.T) {
	t.Parallel()
	const spawners = 6
	const duration = 3 * time.Second
	ctx := context.Background()
	pool := testdb.ClonePool(t, spawners+4)
	q := newQueue(t, pool)
	calls := []spawnCall{
		{queue: q, task: "t", params: str(`{}`), key: str("hot-1")},
		{queue: q, task: "t", params: str(`{}`), key: str("hot-2")},
		{queue: q, task: "u", params: str(`{"a": 1}`), onlyOnce: true},
		{queue: q, task: "u", params: str(`{"a": 2}`), onlyOnce: true, options: `{"max_attempts": 2, "retry_strategy": {"kind": "none"}}`},
	}

	var (
		stop                      atomic.Bool
		spawns, created, finished atomic.Int64
		samples, violations       atomic.Int64
		mu                        sync.Mutex
		errs                      []error
		wg                        sync.WaitGroup
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	for g := 0; g < spawners; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				s, err := trySpawn(ctx, pool, calls[rand.IntN(len(calls))])
				if err != nil {
					fail(fmt.Errorf("spawn: %w", err))
					continue
				}
				if s.TaskID.IsZero() || s.RunID.IsZero() {
					fail(errors.New("spawn returned no id"))
				}
				spawns.Add(1)
				if s.Created {
					created.Add(1)
				}
			}
		}()
	}
	wg.Add(2)
	go func() { // the worker
		defer wg.Done()
		for i := 0; !stop.Load(); i++ {
			runs, err := tryClaim(ctx, pool, q, "soak", 30, 10)
			if err != nil {
				fail(fmt.Errorf("claim: %w", err))
				continue
			}
			for j, r := range runs {
				switch (i + j) % 3 {
				case 0:
					_, err = pool.Exec(ctx, "select durable.complete_run($1, $2, '1')", q, r.RunID)
				case 1:
					_, err = pool.Exec(ctx, "select durable.fail_run($1, $2, '{}')", q, r.RunID)
				default:
					_, err = pool.Exec(ctx, "select durable.cancel_task($1, $2)", q, r.TaskID)
				}
				if err != nil {
					fail(fmt.Errorf("finish run: %w", err))
				}
				finished.Add(1)
			}
		}
	}()
	go func() { // the sampler
		defer wg.Done()
		sql := fmt.Sprintf(`
			select (select count(*) from (select 1 from %[1]s
			                               where state in ('pending', 'running', 'sleeping') and key_hash is not null
			                               group by task_name, key_hash having count(*) > 1) d)
			     + (select count(*) from %[1]s
			         where key_hash is not null and key_held <> (state in ('pending', 'running', 'sleeping')))`,
			tableName("t_", q))
		for !stop.Load() {
			var bad int64
			if err := pool.QueryRow(ctx, sql).Scan(&bad); err != nil {
				fail(fmt.Errorf("sample: %w", err))
				continue
			}
			samples.Add(1)
			violations.Add(bad)
			time.Sleep(2 * time.Millisecond)
		}
	}()
	time.Sleep(duration)
	stop.Store(true)
	wg.Wait()

	require.Empty(t, errs)
	require.Zero(t, violations.Load(), "a key had two live tasks, or a live task did not hold its key")
	// Floors far below what a loaded 2-core machine does, to show the soak ran.
	require.GreaterOrEqual(t, samples.Load(), int64(20))
	require.GreaterOrEqual(t, spawns.Load(), int64(100))
	require.GreaterOrEqual(t, finished.Load(), int64(10))
	require.Greater(t, created.Load(), int64(len(calls)), "keys were never freed and taken again")
	t.Logf("%d spawns, %d created, %d finished, %d samples", spawns.Load(), created.Load(), finished.Load(), samples.Load())
	var liveKeys, live int
	require.NoError(t, pool.QueryRow(ctx, fmt.Sprintf(`
		select count(distinct (task_name, key_hash)), count(*) from %s
		 where state in ('pending', 'running', 'sleeping')`, tableName("t_", q))).Scan(&liveKeys, &live))
	require.Equal(t, liveKeys, live)
	require.LessOrEqual(t, live, len(calls))
}
