package durable_test

// Go benchmarks of the client's calls, each on a database of its own:
//
//	go test -run '^$' -bench . -benchtime 3s
//
// (make bench runs them after the pgbench scenarios.) Each reports tasks/s
// besides ns/op; the parallel forms run 16 goroutines over a pool of 16
// connections. Figures for the README come from make bench, which also runs
// the physical references; these give the same operations as a Go caller
// sees them, round trips and encoding included.

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/internal/testdb"
)

// benchClients is the goroutines of the parallel forms, as pgbench's 16
// clients.
const benchClients = 16

// benchEnv returns a client on a database of b's own, with one queue.
func benchEnv(b *testing.B) (*durable.Client, string) {
	b.Helper()
	pool := testdb.ClonePool(b, benchClients)
	c, err := durable.New(pool, nil)
	require.NoError(b, err)
	q := newQueue(b, pool)
	return c, q
}

// reportRate adds a tasks/s metric: n tasks over the timed part.
func reportRate(b *testing.B, n int) {
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "tasks/s")
}

// parallel runs op in benchClients goroutines (or the next multiple of
// GOMAXPROCS) until b.N calls are done; op
// gets a number unique across the goroutines.
func parallel(b *testing.B, op func(i int64) error) {
	procs := runtime.GOMAXPROCS(0)
	b.SetParallelism((benchClients + procs - 1) / procs)
	var next atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := op(next.Add(1)); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkSpawn(b *testing.B) {
	ctx := context.Background()
	params := map[string]int{"n": 1}
	cases := []struct {
		name string
		opts func(i int64) *durable.SpawnOptions
	}{
		{"no_key", func(int64) *durable.SpawnOptions { return nil }},
		{"fresh_key", func(i int64) *durable.SpawnOptions {
			return &durable.SpawnOptions{IdempotencyKey: fmt.Sprintf("k-%d", i)}
		}},
		{"held_key", func(int64) *durable.SpawnOptions {
			return &durable.SpawnOptions{IdempotencyKey: "held"}
		}},
		{"only_once", func(int64) *durable.SpawnOptions { return &durable.SpawnOptions{OnlyOnce: true} }},
	}
	for _, tc := range cases {
		for _, clients := range []int{1, benchClients} {
			b.Run(fmt.Sprintf("%s/clients=%d", tc.name, clients), func(b *testing.B) {
				c, q := benchEnv(b)
				// only_once with fixed params is a held key after the first spawn.
				_, err := c.Spawn(ctx, q, "noop", params, tc.opts(0))
				require.NoError(b, err)
				var created atomic.Int64
				op := func(i int64) error {
					r, err := c.Spawn(ctx, q, "noop", params, tc.opts(i))
					if err == nil && r.Created {
						created.Add(1)
					}
					return err
				}
				b.ResetTimer()
				if clients == 1 {
					for i := 0; i < b.N; i++ {
						require.NoError(b, op(int64(i+1)))
					}
				} else {
					parallel(b, op)
				}
				b.StopTimer()
				reportRate(b, b.N)
				switch tc.name {
				case "held_key", "only_once":
					require.Zero(b, created.Load(), "a spawn with a held key created a task")
				default:
					require.Equal(b, int64(b.N), created.Load())
				}
			})
		}
	}
}

func BenchmarkSpawnMany(b *testing.B) {
	ctx := context.Background()
	for _, size := range []int{100, 1000} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			c, q := benchEnv(b)
			batch := make([]durable.SpawnRequest, size)
			for i := range batch {
				batch[i] = durable.SpawnRequest{TaskName: "noop", Params: map[string]int{"n": i}}
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				rs, err := c.SpawnMany(ctx, q, batch)
				require.NoError(b, err)
				require.Len(b, rs, size)
			}
			b.StopTimer()
			reportRate(b, b.N*size)
		})
	}
}

func BenchmarkClaimComplete(b *testing.B) {
	ctx := context.Background()
	for _, clients := range []int{1, benchClients} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			c, q := benchEnv(b)
			// b.N tasks ready before the clock starts, spawned in batches.
			for left := b.N; left > 0; {
				n := min(left, 1000)
				batch := make([]durable.SpawnRequest, n)
				for i := range batch {
					batch[i] = durable.SpawnRequest{TaskName: "noop"}
				}
				_, err := c.SpawnMany(ctx, q, batch)
				require.NoError(b, err)
				left -= n
			}
			var done atomic.Int64
			op := func(int64) error {
				runs, err := c.ClaimTasks(ctx, q, "bench", 30*time.Second, 1)
				if err != nil {
					return err
				}
				if len(runs) != 1 {
					return fmt.Errorf("claimed %d runs, want 1", len(runs))
				}
				if err := c.CompleteRun(ctx, q, runs[0].RunID, nil); err != nil {
					return err
				}
				done.Add(1)
				return nil
			}
			b.ResetTimer()
			if clients == 1 {
				for i := 0; i < b.N; i++ {
					require.NoError(b, op(0))
				}
			} else {
				parallel(b, op)
			}
			b.StopTimer()
			reportRate(b, int(done.Load()))
			require.Equal(b, int64(b.N), done.Load())
		})
	}
}
