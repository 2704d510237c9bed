package chaos_test

// TestChaos: spawner processes share one event stream with idempotency keys,
// worker processes run the real Worker, and a driver SIGKILLs workers at
// random and crashes PostgreSQL once (an immediate shutdown, then a restart)
// in the middle. Afterwards every event has exactly one task, every task is
// completed, no run is left running, and every re-execution is matched by a
// run that was interrupted (a killed worker's, or one cut off by the crash).
//
// The run uses a server of its own (internal/localpg, crash-safe commits), so
// the crash never touches the server other packages' tests share.
//
//	go test ./internal/chaos -run TestChaos -v -chaos.events=5000 -chaos.kills=20   (make chaos)

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/internal/localpg"
)

var (
	flagEvents      = flag.Int("chaos.events", 300, "events in the stream every spawner spawns")
	flagSpawners    = flag.Int("chaos.spawners", 3, "spawner processes")
	flagWorkers     = flag.Int("chaos.workers", 3, "worker processes alive at any time (each killed one is replaced)")
	flagKills       = flag.Int("chaos.kills", 4, "workers killed with SIGKILL during the run")
	flagConcurrency = flag.Int("chaos.concurrency", 8, "handlers per worker")
	flagPace        = flag.Duration("chaos.pace", 10*time.Millisecond, "mean pause of a spawner between two events")
	flagLease       = flag.Duration("chaos.lease", 3*time.Second, "the workers' claim timeout")
	flagRestart     = flag.Bool("chaos.restart", true, "crash and restart PostgreSQL once, in the middle of the run")
	flagSeed        = flag.Uint64("chaos.seed", 0, "random seed (0: from the clock)")
	flagTimeout     = flag.Duration("chaos.timeout", 3*time.Minute, "the most the run may take")
)

const queue = "chaos"

func TestMain(m *testing.M) {
	if role := os.Getenv(roleEnv); role != "" {
		os.Exit(runRole(role))
	}
	os.Exit(m.Run())
}

// proc is a spawner or worker process.
type proc struct {
	id     string
	cmd    *exec.Cmd
	stdout bytes.Buffer
	log    string // its stderr, a file
	done   chan struct{}
	err    error // Wait's result, once done is closed
	killed bool  // by the driver, on purpose
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) logTail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// window is a span of the driver's clock.
type window struct{ from, to time.Time }

func TestChaos(t *testing.T) {
	events, spawners, workers, kills := *flagEvents, *flagSpawners, *flagWorkers, *flagKills
	require.Positive(t, events)
	require.Positive(t, spawners)
	require.Positive(t, workers)
	seed := *flagSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (-chaos.seed=%d repeats the driver's choices)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	lease := *flagLease

	ctx, cancel := context.WithTimeout(context.Background(), *flagTimeout)
	defer cancel()
	srv, err := localpg.Start(ctx, &localpg.Options{CrashSafe: true})
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Stop() })

	db := openDB(t, ctx, srv.URL())
	for _, stmt := range []string{
		"create table chaos_seen (event int not null, spawner int not null, primary key (event, spawner))",
		`create table chaos_exec (run_id uuid not null, worker text not null, task_id uuid not null,
		   attempt int not null, event int not null, at timestamptz not null default clock_timestamp(),
		   primary key (run_id, worker))`,
		"select durable.create_queue('" + queue + "')",
		"alter system set log_lock_waits = on",
		"alter system set log_min_duration_statement = 500",
		"select pg_reload_conf()",
	} {
		_, err := db.Exec(ctx, stmt)
		require.NoError(t, err, stmt)
	}

	exe, err := os.Executable()
	require.NoError(t, err)
	dir := t.TempDir()
	var mu sync.Mutex
	var procs []*proc
	start := func(role string, cfg roleConfig, id string) *proc {
		cfg.URL, cfg.Queue, cfg.Events, cfg.Spawners = srv.URL(), queue, events, spawners
		cfg.Concurrency, cfg.Pace, cfg.Lease, cfg.Seed = *flagConcurrency, *flagPace, lease, seed
		b, err := json.Marshal(cfg)
		require.NoError(t, err)
		p := &proc{id: id, log: filepath.Join(dir, id+".log"), done: make(chan struct{})}
		logf, err := os.Create(p.log)
		require.NoError(t, err)
		p.cmd = exec.Command(exe, "-test.run=^$")
		p.cmd.Env = append(os.Environ(), roleEnv+"="+role, configEnv+"="+string(b))
		p.cmd.Stdout, p.cmd.Stderr = &p.stdout, logf
		require.NoError(t, p.cmd.Start())
		go func() {
			p.err = p.cmd.Wait()
			logf.Close()
			close(p.done)
		}()
		mu.Lock()
		procs = append(procs, p)
		mu.Unlock()
		return p
	}
	t.Cleanup(func() {
		for _, p := range procs {
			if !p.exited() {
				_ = p.cmd.Process.Kill()
				<-p.done
			}
		}
	})

	began := time.Now()
	var spawnerProcs, workerProcs []*proc
	nextWorker := 0
	startWorker := func() *proc {
		nextWorker++
		id := fmt.Sprintf("w%d", nextWorker)
		p := start("worker", roleConfig{ID: id}, id)
		workerProcs = append(workerProcs, p)
		return p
	}
	for range workers {
		startWorker()
	}
	for i := range spawners {
		spawnerProcs = append(spawnerProcs, start("spawner", roleConfig{Spawner: i}, fmt.Sprintf("s%d", i)))
	}

	// The plan: kills at random points of the run's progress, the crash at
	// its middle. Progress is half spawning (spawns committed), half
	// completions.
	killAt := make([]float64, kills)
	for i := range killAt {
		killAt[i] = 0.05 + 0.8*rng.Float64()
	}
	slices.Sort(killAt)
	progress := func() (float64, int, error) {
		var seen, completed int
		err := db.QueryRow(ctx, "select (select count(*) from chaos_seen), (select count(*) from durable.t_"+queue+" where state = 'completed')").Scan(&seen, &completed)
		return 0.5*float64(seen)/float64(spawners*events) + 0.5*float64(completed)/float64(events), completed, err
	}

	var crash window
	restarted := !*flagRestart
	killed := map[string]time.Time{} // worker id -> when
	var killedWithWork int           // kills that hit a worker with an executing run
	var searching time.Time          // when the current kill began to look for a busy victim
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, p := range spawnerProcs {
			if p.exited() && p.err != nil {
				t.Fatalf("spawner %s failed: %v\n%s", p.id, p.err, p.logTail())
			}
		}
		for _, p := range workerProcs {
			if p.exited() && !p.killed {
				t.Fatalf("worker %s exited: %v\n%s", p.id, p.err, p.logTail())
			}
		}
		spawned := true
		for _, p := range spawnerProcs {
			spawned = spawned && p.exited()
		}
		prog, completed, err := progress()
		if err == nil && spawned && completed == events && restarted && len(killed) == kills {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the run did not finish within %s: progress %.2f, %d of %d tasks completed, %d kills, restarted %v",
				*flagTimeout, prog, completed, events, len(killed), restarted)
		}
		if err != nil {
			<-tick.C // the server is restarting: look again
			continue
		}
		if !restarted && prog >= 0.5 {
			crash.from = time.Now()
			require.NoError(t, srv.Restart(ctx))
			crash.to = time.Now()
			restarted = true
			t.Logf("PostgreSQL crashed and restarted at progress %.2f in %s", prog, crash.to.Sub(crash.from).Round(time.Millisecond))
			continue
		}
		if len(killed) < kills && prog >= killAt[len(killed)] {
			if searching.IsZero() {
				searching = time.Now()
			}
			victim, busy := pickVictim(ctx, db, workerProcs, rng)
			if busy || time.Since(searching) > time.Second {
				victim.killed = true
				require.NoError(t, victim.cmd.Process.Kill())
				<-victim.done
				killed[victim.id] = time.Now()
				if busy {
					killedWithWork++
				}
				searching = time.Time{}
				startWorker()
				continue
			}
		}
		<-tick.C
	}
	elapsed := time.Since(began)

	// Stop the workers as a deployment would (SIGTERM: drain, then exit 0).
	for _, p := range workerProcs {
		if !p.exited() {
			require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
		}
	}
	for _, p := range workerProcs {
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			t.Fatalf("worker %s did not stop on SIGTERM\n%s", p.id, p.logTail())
		}
		if !p.killed {
			require.NoError(t, p.err, "worker %s\n%s", p.id, p.logTail())
		}
	}

	// The spawners' accounts.
	var created, retries int
	for _, p := range spawnerProcs {
		var s spawnerSummary
		require.NoError(t, json.Unmarshal(p.stdout.Bytes(), &s), "spawner %s printed %q", p.id, p.stdout.String())
		require.Equal(t, events, s.Spawned, "spawner %s", p.id)
		created += s.Created
		retries += s.Retries
	}

	f := collectFigures(t, ctx, db, killed, window{crash.from, crash.to.Add(lease)})
	f.spawnCalls, f.created, f.spawnRetries = spawners*events, created, retries
	f.kills, f.killedWithWork, f.elapsed, f.crash = len(killed), killedWithWork, elapsed, crash.to.Sub(crash.from)
	t.Log("\n" + f.String(events, spawners, workers))

	// Exactly one task per event, every task completed, nothing lost.
	require.Equal(t, spawners*events, f.seen, "every spawner's spawn of every event committed")
	require.Equal(t, events, f.tasks, "tasks")
	require.Equal(t, events, f.distinctEvents, "events with a task")
	require.Equal(t, events, f.completedTasks, "completed tasks")
	require.LessOrEqual(t, created, events, "spawns that answered created = true")
	// Every task's completed run is one run, executed once.
	require.Equal(t, events, f.completedRuns, "completed runs")
	require.Equal(t, events, f.completedRunsExecutedOnce, "completed runs with exactly one execution")
	// No run is left running (or waiting): every lease was recovered.
	require.Zero(t, f.unfinishedRuns, "runs not finished")
	// No run was executed by two workers.
	require.Zero(t, f.runsExecutedTwice, "runs executed by more than one worker")
	// At-least-once, accounted for: each re-execution is one interrupted run,
	// and each interrupted run was a killed worker's or was cut off by the crash.
	require.Equal(t, f.executions-events, f.reexecutions)
	require.Equal(t, f.reexecutions, f.interrupted, "re-executions vs interrupted runs")
	if f.interrupted != f.interruptedByKill+f.interruptedByCrash {
		// A lease can also expire because a process stalled for longer than
		// the lease (a machine overloaded by other work): a larger
		// -chaos.lease tells the two apart.
		t.Errorf("interrupted runs not explained by a kill or the crash (crash %s - %s, kills %v):\n%s",
			crash.from.Format(time.RFC3339Nano), crash.to.Format(time.RFC3339Nano), killed, unexplained(t, ctx, db, killed))
		for _, p := range workerProcs {
			t.Logf("worker %s's log:\n%s", p.id, p.logTail())
		}
		serverLog, _ := os.ReadFile(srv.LogFile())
		t.Logf("server log:\n%s", serverLog)
	}
	require.Zero(t, f.otherFailures, "runs that failed other than by a lost lease")
	if f.killedWithWork > 0 {
		require.Positive(t, f.interruptedByKill, "a worker killed with an executing run interrupts it")
	}
}

// pickVictim returns a random live worker, preferring one whose handlers are
// executing runs (busy).
func pickVictim(ctx context.Context, db *pgxpool.Pool, workers []*proc, rng *rand.Rand) (victim *proc, busy bool) {
	var alive []*proc
	for _, p := range workers {
		if !p.exited() && !p.killed {
			alive = append(alive, p)
		}
	}
	rows, err := db.Query(ctx, `select e.worker from durable.r_`+queue+` r join chaos_exec e using (run_id)
	                             where r.state = 'running' and r.claimed_by = e.worker`)
	var executing []string
	if err == nil {
		executing, _ = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	var busyOnes []*proc
	for _, p := range alive {
		if slices.Contains(executing, p.id) {
			busyOnes = append(busyOnes, p)
		}
	}
	if len(busyOnes) > 0 {
		return busyOnes[rng.IntN(len(busyOnes))], true
	}
	return alive[rng.IntN(len(alive))], false
}

func openDB(t *testing.T, ctx context.Context, url string) *pgxpool.Pool {
	t.Helper()
	pc, err := pgxpool.ParseConfig(url)
	require.NoError(t, err)
	pc.MaxConns = 4
	db, err := pgxpool.NewWithConfig(ctx, pc)
	require.NoError(t, err)
	t.Cleanup(db.Close)
	conn, err := db.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	require.NoError(t, durable.Migrate(ctx, conn.Conn(), nil))
	return db
}

// figures are what the run did, read from the database afterwards.
type figures struct {
	spawnCalls, created, spawnRetries int
	kills, killedWithWork             int
	elapsed, crash                    time.Duration

	seen, tasks, distinctEvents, completedTasks    int
	runs, completedRuns, completedRunsExecutedOnce int
	unfinishedRuns, runsExecutedTwice              int
	executions, reexecutions, reexecutedEvents     int
	interrupted, interruptedByKill                 int
	interruptedByCrash, unexecutedFailures         int
	otherFailures                                  int
}

func collectFigures(t *testing.T, ctx context.Context, db *pgxpool.Pool, killed map[string]time.Time, crash window) figures {
	t.Helper()
	var f figures
	r, tk := "durable.r_"+queue, "durable.t_"+queue
	one := func(dst *int, sql string, args ...any) {
		t.Helper()
		require.NoError(t, db.QueryRow(ctx, sql, args...).Scan(dst), sql)
	}
	one(&f.seen, "select count(*) from chaos_seen")
	one(&f.tasks, "select count(*) from "+tk)
	one(&f.distinctEvents, "select count(distinct params->>'event') from "+tk)
	one(&f.completedTasks, "select count(*) from "+tk+" where state = 'completed'")
	one(&f.runs, "select count(*) from "+r)
	one(&f.completedRuns, "select count(*) from "+r+" where state = 'completed'")
	one(&f.completedRunsExecutedOnce, `select count(*) from `+r+` r
	   where r.state = 'completed' and (select count(*) from chaos_exec e where e.run_id = r.run_id) = 1`)
	one(&f.unfinishedRuns, "select count(*) from "+r+" where state not in ('completed', 'failed')")
	one(&f.runsExecutedTwice, "select count(*) from (select run_id from chaos_exec group by run_id having count(*) > 1) x")
	one(&f.executions, "select count(*) from chaos_exec")
	one(&f.reexecutions, "select count(*) - count(distinct task_id) from chaos_exec")
	one(&f.reexecutedEvents, "select count(*) from (select event from chaos_exec group by event having count(*) > 1) x")
	one(&f.interrupted, `select count(*) from `+r+` r where r.state <> 'completed'
	   and exists (select from chaos_exec e where e.run_id = r.run_id)`)
	one(&f.unexecutedFailures, `select count(*) from `+r+` r where r.state = 'failed'
	   and not exists (select from chaos_exec e where e.run_id = r.run_id)`)
	one(&f.otherFailures, "select count(*) from "+r+" where state = 'failed' and failure_reason->>'name' <> 'claim_timeout'")

	// Attribute each interrupted run: its worker was killed, or the run was
	// under way during the crash or the recovery after it (started before
	// the restart ended plus one lease, while every process reconnects at
	// once; ended after the crash began).
	ids := make([]string, 0, len(killed))
	for id := range killed {
		ids = append(ids, id)
	}
	one(&f.interruptedByKill, `select count(*) from `+r+` r where r.state <> 'completed'
	   and exists (select from chaos_exec e where e.run_id = r.run_id) and r.claimed_by = any($1)`, ids)
	if !crash.from.IsZero() {
		one(&f.interruptedByCrash, `select count(*) from `+r+` r where r.state <> 'completed'
		   and exists (select from chaos_exec e where e.run_id = r.run_id) and r.claimed_by <> all($1)
		   and r.started_at <= $2 and r.finished_at >= $3`, ids, crash.to, crash.from)
	}
	return f
}

// unexplained lists the interrupted runs that no kill explains.
func unexplained(t *testing.T, ctx context.Context, db *pgxpool.Pool, killed map[string]time.Time) string {
	ids := make([]string, 0, len(killed))
	for id := range killed {
		ids = append(ids, id)
	}
	rows, err := db.Query(ctx, `select format('%s %s attempt %s by %s: started %s, lease until %s, finished %s: %s',
	     r.run_id, r.task_id, r.attempt, r.claimed_by, r.started_at, r.claim_expires_at, r.finished_at, r.failure_reason)
	   from durable.r_`+queue+` r where r.state <> 'completed' and r.claimed_by <> all($1)
	    and exists (select from chaos_exec e where e.run_id = r.run_id) order by r.started_at`, ids)
	require.NoError(t, err)
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return strings.Join(lines, "\n")
}

func (f figures) String(events, spawners, workers int) string {
	var b strings.Builder
	row := func(name string, v any) { fmt.Fprintf(&b, "  %-58s %v\n", name, v) }
	row("events x spawner processes", fmt.Sprintf("%d x %d", events, spawners))
	row("worker processes alive at once", workers)
	row("spawn transactions committed", f.seen)
	row("spawn attempts retried after a connection error", f.spawnRetries)
	row("spawns that answered created = true", f.created)
	row("tasks", f.tasks)
	row("tasks completed", f.completedTasks)
	row("workers killed with SIGKILL (with an executing run)", fmt.Sprintf("%d (%d)", f.kills, f.killedWithWork))
	row("PostgreSQL crash + restart took", f.crash.Round(time.Millisecond))
	row("runs", f.runs)
	row("handler executions", f.executions)
	row("re-executions", f.reexecutions)
	row("events executed more than once", f.reexecutedEvents)
	row("interrupted runs (executed, not completed)", f.interrupted)
	row("  of them by a kill", f.interruptedByKill)
	row("  of them by the crash (or the recovery after it)", f.interruptedByCrash)
	row("runs lost before their handler started", f.unexecutedFailures)
	row("runs left running", f.unfinishedRuns)
	row("elapsed", f.elapsed.Round(time.Millisecond))
	return b.String()
}
