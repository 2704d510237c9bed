package durable_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/internal/testdb"
)

func TestSmokeSpawnClaimComplete(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c, err := durable.New(testdb.Tx(t), nil)
	require.NoError(t, err)
	require.NoError(t, c.CreateQueue(ctx, "smoke"))
	r, err := c.Spawn(ctx, "smoke", "hello", map[string]int{"n": 1}, &durable.SpawnOptions{IdempotencyKey: "k"})
	require.NoError(t, err)
	require.True(t, r.Created)
	runs, err := c.ClaimTasks(ctx, "smoke", "w", 30e9, 10)
	require.NoError(t, err)
	require.Len(t, runs, 1)
	require.NoError(t, c.CompleteRun(ctx, "smoke", runs[0].RunID, "done"))
	res, err := c.GetTaskResult(ctx, "smoke", r.TaskID)
	require.NoError(t, err)
	require.Equal(t, durable.StateCompleted, res.State)
	require.JSONEq(t, `"done"`, string(res.Result))
}
