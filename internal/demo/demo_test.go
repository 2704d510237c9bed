package demo_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/internal/demo"
	"github.com/durable-go/durable/internal/testdb"
)

func TestMain(m *testing.M) {
	testdb.Main(m, func(ctx context.Context, conn *pgx.Conn) error {
		return durable.Migrate(ctx, conn, nil)
	})
}

// run runs the demo on a database of the test's own.
func run(t *testing.T, cfg demo.Config) (*demo.Report, string, string) {
	t.Helper()
	name := testdb.Clone(t)
	cfg.DatabaseURL = testdb.URL(name)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	r, err := demo.Run(ctx, cfg, &out)
	require.NoError(t, err, out.String())
	t.Log("\n" + out.String())
	return r, out.String(), cfg.DatabaseURL
}

func sum(xs []int) int {
	s := 0
	for _, x := range xs {
		s += x
	}
	return s
}

// TestDeduplication: 4 instances × 200 events with a key per event make 800
// spawns, 200 tasks, 600 duplicates and 200 executions, one per event.
func TestDeduplication(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		onlyOnce bool
	}{{"idempotency key", false}, {"only-once", true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r, out, url := run(t, demo.Config{Instances: 4, Events: 200, OnlyOnce: tc.onlyOnce})
			require.Equal(t, 800, r.SpawnCalls)
			require.Equal(t, 200, r.Created)
			require.Equal(t, 600, r.Duplicates)
			require.Equal(t, 200, r.Executions)
			require.Equal(t, 200, r.ExactlyOnce)
			require.Equal(t, 0, r.MoreThanOnce)
			require.Equal(t, 0, r.Never)
			require.Equal(t, 200, r.TasksRunOnce)
			require.Equal(t, 0, r.NotCompleted)
			require.Len(t, r.Wins, 4)
			require.Equal(t, 200, sum(r.Wins))
			require.True(t, r.OK())
			require.Contains(t, out, "OK: 800 spawns from 4 instances ran each of the 200 events exactly once.")

			// The queue is dropped after the run.
			queues := listQueues(t, url)
			require.NotContains(t, queues, r.Queue)
		})
	}
}

// TestNoKeys: without keys, 4 instances × 200 events make 800 tasks and 800
// executions, each event 4 times, and the report calls it duplication.
func TestNoKeys(t *testing.T) {
	t.Parallel()
	r, out, _ := run(t, demo.Config{Instances: 4, Events: 200, NoKeys: true})
	require.Equal(t, 800, r.SpawnCalls)
	require.Equal(t, 800, r.Created)
	require.Equal(t, 0, r.Duplicates)
	require.Equal(t, 800, r.Executions)
	require.Equal(t, 0, r.ExactlyOnce)
	require.Equal(t, 200, r.MoreThanOnce)
	require.Equal(t, 0, r.Never)
	require.Equal(t, 4, r.MaxPerEvent)
	require.Equal(t, []int{200, 200, 200, 200}, r.Wins)
	require.Equal(t, 800, r.TasksRunOnce)
	require.True(t, r.OK(), "duplication is what --no-keys shows")
	require.Contains(t, out, "DUPLICATION")
	require.Contains(t, out, "every event ran 4 times")
}

// TestNoHold: handlers that return at once may finish a task before a slower
// instance spawns its event, which then runs again. Whatever the timing,
// every created task runs exactly once and every event at least once.
func TestNoHold(t *testing.T) {
	t.Parallel()
	r, _, _ := run(t, demo.Config{Instances: 3, Events: 100, NoHold: true})
	require.Equal(t, 300, r.SpawnCalls)
	require.Equal(t, 300, r.Created+r.Duplicates)
	require.GreaterOrEqual(t, r.Created, 100)
	require.Equal(t, r.Created, r.Executions)
	require.Equal(t, r.Created, r.TasksRunOnce)
	require.Equal(t, 0, r.Never)
	require.Equal(t, 100, r.ExactlyOnce+r.MoreThanOnce)
	require.True(t, r.OK())
}

// TestKeepAndWorkers: Keep leaves the queue; more workers than instances and
// a given queue name work.
func TestKeepAndWorkers(t *testing.T) {
	t.Parallel()
	r, _, url := run(t, demo.Config{Instances: 2, Events: 50, Workers: 5, Concurrency: 2, Queue: "kept", Keep: true})
	require.Equal(t, "kept", r.Queue)
	require.Equal(t, 50, r.ExactlyOnce)
	require.True(t, r.OK())
	require.Contains(t, listQueues(t, url), "kept")

	// A queue that exists is refused rather than mixed into the counts.
	_, err := demo.Run(context.Background(), demo.Config{DatabaseURL: url, Instances: 1, Events: 1, Queue: "kept"}, nil)
	require.ErrorIs(t, err, demo.ErrInvalidConfig)
}

func TestInvalidConfig(t *testing.T) {
	t.Parallel()
	for name, cfg := range map[string]demo.Config{
		"no database":     {},
		"negative events": {DatabaseURL: "postgres://x", Events: -1},
		"both modes":      {DatabaseURL: "postgres://x", OnlyOnce: true, NoKeys: true},
	} {
		_, err := demo.Run(context.Background(), cfg, nil)
		require.ErrorIs(t, err, demo.ErrInvalidConfig, name)
	}
}

func listQueues(t *testing.T, url string) []string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	c, err := durable.New(conn, nil)
	require.NoError(t, err)
	queues, err := c.ListQueues(ctx)
	require.NoError(t, err)
	return queues
}
