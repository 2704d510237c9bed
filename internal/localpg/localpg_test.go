package localpg_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable/internal/localpg"
)

func TestStartQueryStop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	srv, err := localpg.Start(ctx, &localpg.Options{Log: testWriter{t}})
	require.NoError(t, err)
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = srv.Stop()
		}
	})

	conn, err := pgx.Connect(ctx, srv.URL())
	require.NoError(t, err)
	var one int
	require.NoError(t, conn.QueryRow(ctx, "select 1").Scan(&one))
	require.Equal(t, 1, one)
	require.NoError(t, conn.Close(ctx))

	require.NoError(t, srv.Stop())
	stopped = true
	require.NoError(t, srv.Stop(), "a second Stop returns the first result")

	_, err = pgx.Connect(ctx, srv.URL())
	require.Error(t, err, "the server is gone after Stop")
}

// TestMissingBin checks that a PG_BIN without the programs is refused
// before anything is created.
func TestMissingBin(t *testing.T) {
	dir := t.TempDir()
	_, err := localpg.Start(context.Background(), &localpg.Options{PGBin: dir})
	require.ErrorContains(t, err, "has no initdb")
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestRestartKeepsAcknowledgedCommits: a crash-safe server restarted with an
// immediate shutdown cuts every connection and keeps every commit it
// acknowledged, on the same URL.
func TestRestartKeepsAcknowledgedCommits(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	srv, err := localpg.Start(ctx, &localpg.Options{CrashSafe: true})
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Stop() })

	conn, err := pgx.Connect(ctx, srv.URL())
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "create table acked (n int); insert into acked select generate_series(1, 1000)")
	require.NoError(t, err)

	require.NoError(t, srv.Restart(ctx))
	require.Error(t, conn.Ping(ctx), "the restart cut the old connection")

	conn, err = pgx.Connect(ctx, srv.URL())
	require.NoError(t, err)
	defer conn.Close(ctx)
	var n int
	require.NoError(t, conn.QueryRow(ctx, "select count(*) from acked").Scan(&n))
	require.Equal(t, 1000, n)
	var setting string
	require.NoError(t, conn.QueryRow(ctx, "show synchronous_commit").Scan(&setting))
	require.Equal(t, "on", setting)
}
