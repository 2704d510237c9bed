package durable_test

// Connection loss at the exact point that matters: between a spawn and its
// commit, during a claim, during a completion. The caller always gets an error
// that durable.IsRetryable accepts, and a retry with the same key never makes
// a second task. Two ways to lose a connection: pg_terminate_backend from
// another session (the server ends the backend, its transaction rolls back),
// and a proxy that forwards a call to the server and then cuts the
// connection instead of delivering the reply (the call took effect, the
// caller cannot know).

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/internal/testdb"
)

// cutProxy forwards TCP connections to the test server. Once armed, it lets
// the server's messages through until a command has completed and the server
// is ready for the next query (CommandComplete, then ReadyForQuery: the call
// has taken effect, committed if it was autocommit or a COMMIT), drops that
// ReadyForQuery and closes both sides of the connection.
type cutProxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	armed bool
	done  bool // armed, and a CommandComplete has gone through
	cuts  int
}

func newCutProxy(t *testing.T) *cutProxy {
	t.Helper()
	cfg, err := pgx.ParseConfig(testdb.URL("postgres"))
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &cutProxy{ln: ln, target: net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port)))}
	t.Cleanup(func() { _ = ln.Close() })
	go p.serve()
	return p
}

func (p *cutProxy) serve() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = client.Close()
			continue
		}
		go func() { _, _ = io.Copy(server, client); _ = server.Close() }()
		go p.replies(server, client)
	}
}

// replies copies the server's messages to the client, one at a time, until
// the armed cut.
func (p *cutProxy) replies(server, client net.Conn) {
	defer client.Close()
	defer server.Close()
	buf := make([]byte, 64<<10)
	var pending []byte
	for {
		n, err := server.Read(buf)
		if err != nil {
			return
		}
		pending = append(pending, buf[:n]...)
		for len(pending) >= 5 {
			size := 1 + int(binary.BigEndian.Uint32(pending[1:5]))
			if len(pending) < size {
				break
			}
			msg := pending[:size]
			if p.cutAt(msg[0]) {
				return
			}
			if _, err := client.Write(msg); err != nil {
				return
			}
			pending = pending[size:]
		}
	}
}

// cutAt reports whether the message of type typ is where the armed cut
// happens.
func (p *cutProxy) cutAt(typ byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.armed {
		return false
	}
	switch typ {
	case 'C': // CommandComplete
		p.done = true
	case 'Z': // ReadyForQuery
		if p.done {
			p.armed, p.done = false, false
			p.cuts++
			return true
		}
	}
	return false
}

// cutNextReply makes the proxy drop the next reply and cut its connection.
func (p *cutProxy) cutNextReply() {
	p.mu.Lock()
	p.armed = true
	p.mu.Unlock()
}

func (p *cutProxy) requireCut(t *testing.T, n int) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	require.Equal(t, n, p.cuts, "replies cut")
}

// connect opens one connection to database name through the proxy.
func (p *cutProxy) connect(t *testing.T, name string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(testdb.URL(name))
	require.NoError(t, err)
	host, port, err := net.SplitHostPort(p.ln.Addr().String())
	require.NoError(t, err)
	cfg.Host = host
	cfg.Port = uint16(mustInt(t, port))
	conn, err := pgx.ConnectConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// connLossEnv is a database of the test's own, a pool on it, and direct
// connections to it.
type connLossEnv struct {
	name  string
	pool  *pgxpool.Pool
	queue string
}

func newConnLossEnv(t *testing.T) connLossEnv {
	t.Helper()
	name := testdb.Clone(t)
	pool := testdb.Pool(t, name, 6)
	return connLossEnv{name: name, pool: pool, queue: newQueue(t, pool)}
}

func (env connLossEnv) connect(t *testing.T) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), testdb.URL(env.name))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// terminate ends the backend of conn from another session and waits until
// it is gone.
func (env connLossEnv) terminate(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	var ok bool
	require.NoError(t, env.pool.QueryRow(context.Background(),
		"select pg_terminate_backend($1, 10000)", int(conn.PgConn().PID())).Scan(&ok))
	require.True(t, ok)
}

func client(t *testing.T, db durable.DBTX) *durable.Client {
	t.Helper()
	c, err := durable.New(db, nil)
	require.NoError(t, err)
	return c
}

// requireRetryable asserts err is a connection loss the caller may retry,
// not one of the schema's errors.
func requireRetryable(t *testing.T, err error) {
	t.Helper()
	require.Error(t, err)
	require.True(t, durable.IsRetryable(err), "want a retryable error, got %T: %v", err, err)
	var de *durable.Error
	require.False(t, errors.As(err, &de), "a connection loss is not a schema error: %v", err)
}

var connLossKey = &durable.SpawnOptions{IdempotencyKey: "order-42"}

// TestConnLossSpawnBeforeCommit: the spawner's backend is terminated after
// spawn_task ran in its transaction and before COMMIT. The commit fails with
// a retryable error, nothing was written, and the retry creates the task
// once: a second retry gets it back.
func TestConnLossSpawnBeforeCommit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	env := newConnLossEnv(t)
	conn := env.connect(t)
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	res, err := client(t, conn).SpawnTx(ctx, tx, env.queue, "t", map[string]int{"order": 42}, connLossKey)
	require.NoError(t, err)
	require.True(t, res.Created)

	env.terminate(t, conn)
	requireRetryable(t, tx.Commit(ctx))
	require.Zero(t, countTasks(t, env.pool, env.queue), "the lost transaction wrote nothing")

	c := client(t, env.pool)
	first, err := c.Spawn(ctx, env.queue, "t", map[string]int{"order": 42}, connLossKey)
	require.NoError(t, err)
	require.True(t, first.Created)
	again, err := c.Spawn(ctx, env.queue, "t", map[string]int{"order": 42}, connLossKey)
	require.NoError(t, err)
	require.False(t, again.Created)
	require.Equal(t, first.TaskID, again.TaskID)
	require.Equal(t, 1, countTasks(t, env.pool, env.queue))
}

// TestConnLossSpawnCommitReplyLost: the commit (of a caller's transaction, or
// of an autocommit spawn) reaches the server and its reply is lost. The
// caller gets a retryable error without knowing whether the task exists; the
// retry with the same key returns the committed task with created = false.
// Without a key the same retry makes a second task, which is why keys exist.
func TestConnLossSpawnCommitReplyLost(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	env := newConnLossEnv(t)
	proxy := newCutProxy(t)
	retrier := client(t, env.pool)

	// In the caller's transaction: the COMMIT's reply is lost.
	conn := proxy.connect(t, env.name)
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	res, err := client(t, conn).SpawnTx(ctx, tx, env.queue, "t", map[string]int{"order": 42}, connLossKey)
	require.NoError(t, err)
	require.True(t, res.Created)
	proxy.cutNextReply()
	requireRetryable(t, tx.Commit(ctx))
	proxy.requireCut(t, 1)
	again, err := retrier.Spawn(ctx, env.queue, "t", map[string]int{"order": 42}, connLossKey)
	require.NoError(t, err)
	require.False(t, again.Created, "the lost commit did commit: the retry finds its task")
	require.Equal(t, res.TaskID, again.TaskID)

	// Autocommit: spawn_task's own reply is lost.
	conn = proxy.connect(t, env.name)
	proxy.cutNextReply()
	_, err = client(t, conn).Spawn(ctx, env.queue, "t", nil, &durable.SpawnOptions{IdempotencyKey: "order-43"})
	requireRetryable(t, err)
	proxy.requireCut(t, 2)
	retried, err := retrier.Spawn(ctx, env.queue, "t", nil, &durable.SpawnOptions{IdempotencyKey: "order-43"})
	require.NoError(t, err)
	require.False(t, retried.Created)
	require.Equal(t, 2, countTasks(t, env.pool, env.queue), "one task per key")

	// The contrast: no key, no protection.
	conn = proxy.connect(t, env.name)
	proxy.cutNextReply()
	_, err = client(t, conn).Spawn(ctx, env.queue, "unkeyed", nil, nil)
	requireRetryable(t, err)
	unkeyed, err := retrier.Spawn(ctx, env.queue, "unkeyed", nil, nil)
	require.NoError(t, err)
	require.True(t, unkeyed.Created)
	require.Equal(t, 2, countRows(t, env.pool, "t_", env.queue, "task_name = 'unkeyed'"))
}

// TestConnLossDuringClaim: a claim whose reply is lost leased the run to a
// worker that never learned of it; a retried claim does not hand the same
// run out again, and once the lease expires the run is recovered and the
// task retried, still one task. A claim in a transaction whose backend is
// terminated before commit leased nothing: the retry claims the same run.
func TestConnLossDuringClaim(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	env := newConnLossEnv(t)
	proxy := newCutProxy(t)
	c := client(t, env.pool)
	spawned, err := c.Spawn(ctx, env.queue, "t", nil, &durable.SpawnOptions{
		IdempotencyKey: "order-42", RetryStrategy: &durable.RetryStrategy{Kind: durable.RetryNone}})
	require.NoError(t, err)

	conn := proxy.connect(t, env.name)
	setNow(t, conn, t0)
	proxy.cutNextReply()
	_, err = client(t, conn).ClaimTasks(ctx, env.queue, "w1", 30*time.Second, 1)
	requireRetryable(t, err)
	proxy.requireCut(t, 1)

	retry := env.connect(t)
	setNow(t, retry, t0.Add(time.Second))
	runs, err := client(t, retry).ClaimTasks(ctx, env.queue, "w1", 30*time.Second, 1)
	require.NoError(t, err)
	require.Empty(t, runs, "the lost claim holds the run until its lease expires")
	setNow(t, retry, t0.Add(31*time.Second))
	runs, err = client(t, retry).ClaimTasks(ctx, env.queue, "w1", 30*time.Second, 1)
	require.NoError(t, err)
	require.Len(t, runs, 1)
	require.Equal(t, spawned.TaskID, runs[0].TaskID)
	require.Equal(t, 2, runs[0].Attempt, "the lost claim's run was recovered as an expired lease")
	require.Equal(t, 1, countRows(t, env.pool, "r_", env.queue, "attempt = 1 and state = 'failed' and failure_reason->>'name' = 'claim_timeout'"))
	require.Equal(t, 1, countTasks(t, env.pool, env.queue))

	// Terminated inside the claimer's transaction: nothing was leased.
	other, err := c.Spawn(ctx, env.queue, "t", nil, &durable.SpawnOptions{IdempotencyKey: "order-44"})
	require.NoError(t, err)
	conn2 := env.connect(t)
	tx, err := conn2.Begin(ctx)
	require.NoError(t, err)
	runs, err = client(t, tx).ClaimTasks(ctx, env.queue, "w2", 30*time.Second, 1)
	require.NoError(t, err)
	require.Len(t, runs, 1)
	require.Equal(t, other.RunID, runs[0].RunID)
	env.terminate(t, conn2)
	requireRetryable(t, tx.Commit(ctx))
	runs, err = c.ClaimTasks(ctx, env.queue, "w2", 30*time.Second, 1)
	require.NoError(t, err)
	require.Len(t, runs, 1)
	require.Equal(t, other.RunID, runs[0].RunID, "the same run, attempt 1: the lost claim rolled back")
	require.Equal(t, 2, countTasks(t, env.pool, env.queue))
}

// TestConnLossDuringComplete: a completion whose reply is lost did complete:
// the retry says ErrRunNotRunning and the task has its result. A completion
// whose backend is terminated while it waits for the run's row lock did not:
// the retry completes the run.
func TestConnLossDuringComplete(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	env := newConnLossEnv(t)
	proxy := newCutProxy(t)
	c := client(t, env.pool)
	_, err := c.Spawn(ctx, env.queue, "t", nil, connLossKey)
	require.NoError(t, err)
	runs, err := c.ClaimTasks(ctx, env.queue, "w", 30*time.Second, 1)
	require.NoError(t, err)
	require.Len(t, runs, 1)

	conn := proxy.connect(t, env.name)
	proxy.cutNextReply()
	requireRetryable(t, client(t, conn).CompleteRun(ctx, env.queue, runs[0].RunID, map[string]int{"sent": 1}))
	proxy.requireCut(t, 1)
	err = c.CompleteRun(ctx, env.queue, runs[0].RunID, map[string]int{"sent": 1})
	require.ErrorIs(t, err, durable.ErrRunNotRunning, "the lost completion did complete the run")
	res, err := c.GetTaskResult(ctx, env.queue, runs[0].TaskID)
	require.NoError(t, err)
	require.Equal(t, durable.StateCompleted, res.State)
	require.JSONEq(t, `{"sent": 1}`, string(res.Result))

	// Terminated while blocked on the run's row: nothing was written.
	_, err = c.Spawn(ctx, env.queue, "t", nil, &durable.SpawnOptions{IdempotencyKey: "order-45"})
	require.NoError(t, err)
	runs, err = c.ClaimTasks(ctx, env.queue, "w", 30*time.Second, 1)
	require.NoError(t, err)
	require.Len(t, runs, 1)
	holder, err := env.pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = holder.Rollback(ctx) }()
	mustExec(t, holder, "select 1 from "+tableName("r_", env.queue)+" where run_id = $1 for update", runs[0].RunID)
	conn2 := env.connect(t)
	errc := make(chan error, 1)
	go func() { errc <- client(t, conn2).CompleteRun(ctx, env.queue, runs[0].RunID, "late") }()
	waitBlockedBy(t, env.pool, conn2.PgConn().PID(), backendPID(t, holder))
	env.terminate(t, conn2)
	requireRetryable(t, <-errc)
	require.NoError(t, holder.Rollback(ctx))
	require.NoError(t, c.CompleteRun(ctx, env.queue, runs[0].RunID, "late"))
	require.Equal(t, 2, countRows(t, env.pool, "t_", env.queue, "state = 'completed'"))
	require.Equal(t, 2, countTasks(t, env.pool, env.queue))
}

// TestIsRetryable: which errors are retryable.
func TestIsRetryable(t *testing.T) {
	t.Parallel()
	cases := []struct {
		err  error
		want bool
	}{
		{nil, false},
		{&pgconn.PgError{Code: "57P01"}, true},
		{&pgconn.PgError{Code: "57P03"}, true},
		{&pgconn.PgError{Code: "08006"}, true},
		{&pgconn.PgError{Code: "40001"}, true},
		{&pgconn.PgError{Code: "40P01"}, true},
		{&pgconn.PgError{Code: "55P03"}, true},
		{&pgconn.PgError{Code: "23505"}, false},
		{&pgconn.PgError{Code: "42P01"}, false},
		{&pgconn.PgError{Code: "QD002"}, false},
		{io.ErrUnexpectedEOF, true},
		{pgconn.ErrConnClosed, true},
		{&net.OpError{Op: "dial", Err: errors.New("connection refused")}, true},
		{context.Canceled, false},
		{context.DeadlineExceeded, false},
		{errors.New("something else"), false},
		{durable.ErrQueueNotFound, false},
	}
	for _, tc := range cases {
		require.Equal(t, tc.want, durable.IsRetryable(tc.err), "%v", tc.err)
	}
	// A schema error is never retryable, even when wrapped.
	_, err := client(t, testdb.Tx(t)).Spawn(context.Background(), "no_such_queue_x", "t", nil, nil)
	require.ErrorIs(t, err, durable.ErrQueueNotFound)
	require.False(t, durable.IsRetryable(err))
}
