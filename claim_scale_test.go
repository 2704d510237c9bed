package durable_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable/internal/testdb"
)

// TestClaimReadsNoMoreThanItTakes: on a new queue that PostgreSQL has never
// analyzed, with 3,000 runs ready, each claim of one run looks up a handful
// of tasks, not every ready one: the generic plan reads the ready index in
// order and stops at the limit. (A plan that fetched and sorted every ready
// run made each claim cost in proportion to the backlog until the first
// ANALYZE.)
func TestClaimReadsNoMoreThanItTakes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn := acquireConns(t, testdb.ClonePool(t, 2), 1)[0]
	q := newQueue(t, conn)
	mustExec(t, conn, `select count(*) from durable.spawn_tasks($1,
	  (select jsonb_agg(jsonb_build_object('task_name', 'noop')) from generate_series(1, 3000)))`, q)

	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	taskLookups := func() int64 {
		var n int64
		require.NoError(t, tx.QueryRow(ctx,
			"select coalesce(sum(idx_scan), 0) from pg_stat_xact_user_tables where schemaname = 'durable' and relname = $1",
			"t_"+q).Scan(&n))
		return n
	}
	for i := 0; i < 5; i++ {
		before := taskLookups()
		require.Len(t, claim(t, tx, q, "w", 30, 1), 1)
		require.LessOrEqual(t, taskLookups()-before, int64(10), "claim %d looked up more tasks than it took", i+1)
	}
}
