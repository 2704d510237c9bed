package durable_test

// Privileges: the roles durable_producer, durable_worker and durable_admin
// (migration 008, sql/functions/_grant_roles.sql). Login roles are created per
// test (roles belong to the cluster, so their names carry the test binary's
// pid) and connect with a password, so that session_user is the login role
// itself, as in production.

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/internal/testdb"
)

const loginPassword = "durable-test-password"

var loginSeq atomic.Int64

// loginRole creates a login role that is a member of grants (none: a login
// role with no durable role) and drops it at cleanup. Call it before the
// database the role will use is created, so that the database (and what the
// role owns in it) is dropped first.
func loginRole(t *testing.T, label string, grants ...string) string {
	t.Helper()
	ctx := context.Background()
	name := fmt.Sprintf("durable_test_%d_%s_%d", os.Getpid(), label, loginSeq.Add(1))
	admin, err := pgx.Connect(ctx, os.Getenv("DATABASE_URL"))
	require.NoError(t, err)
	defer admin.Close(ctx)
	_, err = admin.Exec(ctx, fmt.Sprintf("create role %s login password '%s'", name, loginPassword))
	require.NoError(t, err)
	for _, g := range grants {
		_, err := admin.Exec(ctx, fmt.Sprintf("grant %s to %s", g, name))
		require.NoError(t, err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), os.Getenv("DATABASE_URL"))
		if err != nil {
			return
		}
		defer c.Close(context.Background())
		_, _ = c.Exec(context.Background(), "drop role if exists "+name)
	})
	return name
}

// notices collects the NOTICE messages a connection receives.
type notices struct {
	mu   sync.Mutex
	msgs []string
}

func (n *notices) add(_ *pgconn.PgConn, msg *pgconn.Notice) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.msgs = append(n.msgs, msg.Message)
}

func (n *notices) take() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := n.msgs
	n.msgs = nil
	return out
}

// connectAs opens a connection to database db as the login role, closed at
// cleanup, collecting its notices into seen (when not nil).
func connectAs(t *testing.T, db, role string, seen *notices) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(testdb.URL(db))
	require.NoError(t, err)
	cfg.User, cfg.Password = role, loginPassword
	if seen != nil {
		cfg.OnNotice = seen.add
	}
	conn, err := pgx.ConnectConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func poolAs(t *testing.T, db, role string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(testdb.URL(db))
	require.NoError(t, err)
	cfg.ConnConfig.User, cfg.ConnConfig.Password = role, loginPassword
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// privilegeProblemsSQL lists, one line each, what breaks the privilege rules
// in the connected database: any right of PUBLIC on a function, table,
// sequence or the schema; a public function without a role (no direct grant
// to one of the three) or running with its caller's rights (only
// current_time, which reads no table, may); an internal function or any
// table a role can use.
const privilegeProblemsSQL = `
with roles(oid) as (select r.oid from pg_roles r where r.rolname in ('durable_producer', 'durable_worker', 'durable_admin')),
fns as (select p.oid, p.oid::regprocedure::text as sig, p.proname, p.prosecdef,
               coalesce(p.proacl, acldefault('f', p.proowner)) as acl
          from pg_proc p where p.pronamespace = 'durable'::regnamespace),
rels as (select c.oid, c.relname, c.relkind, coalesce(c.relacl, acldefault('r', c.relowner)) as acl
           from pg_class c where c.relnamespace = 'durable'::regnamespace and c.relkind in ('r', 'p', 'v', 'm', 'S', 'f'))
select problem from (
  select f.sig || ': EXECUTE granted to PUBLIC' as problem
    from fns f where exists (select from aclexplode(f.acl) a where a.grantee = 0)
  union all
  select f.sig || ': a public function without a role'
    from fns f
   where left(f.proname, 1) <> '_'
     and not exists (select from aclexplode(f.acl) a join roles r on r.oid = a.grantee where a.privilege_type = 'EXECUTE')
  union all
  select f.sig || ': a public function that is not security definer'
    from fns f where left(f.proname, 1) <> '_' and not f.prosecdef and f.proname <> 'current_time'
  union all
  select format('%s: internal, but %s may execute it', f.sig, r.oid::regrole)
    from fns f cross join roles r
   where left(f.proname, 1) = '_' and has_function_privilege(r.oid, f.oid, 'execute')
  union all
  select format('%s %s: PUBLIC has %s', c.relkind, c.relname, a.privilege_type)
    from rels c cross join lateral aclexplode(c.acl) a where a.grantee = 0
  union all
  select format('%s %s: %s has a right on it', c.relkind, c.relname, r.oid::regrole)
    from rels c cross join roles r
   where case when c.relkind = 'S' then has_sequence_privilege(r.oid, c.oid, 'usage, select, update')
              else has_table_privilege(r.oid, c.oid, 'select, insert, update, delete, truncate, references, trigger') end
  union all
  select format('schema durable: PUBLIC has %s', a.privilege_type)
    from pg_namespace n cross join lateral aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
   where n.nspname = 'durable' and a.grantee = 0
  union all
  select format('schema durable: %s may create in it', r.oid::regrole)
    from roles r where has_schema_privilege(r.oid, 'durable', 'create')
  union all
  select format('role %s is missing', w.name)
    from unnest(array['durable_producer', 'durable_worker', 'durable_admin']) w(name)
   where not exists (select from pg_roles r where r.rolname = w.name)
) p order by 1`

func privilegeProblems(t *testing.T, db dbtx) []string {
	t.Helper()
	rows, err := db.Query(context.Background(), privilegeProblemsSQL)
	require.NoError(t, err)
	problems, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return problems
}

// Every function of the schema is closed to PUBLIC, every public function
// has a role and runs as the owner, and no role can touch a table, an
// internal function or create in the schema. A function added later without
// a line in _grant_roles breaks these rules (caught here), and the migration
// that adds it fails with QD041.
func TestPrivilegeRulesHold(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn := connect(t, testdb.Clone(t))
	mustExec(t, conn, "select durable.create_queue('rules')")
	mustExec(t, conn, "select * from durable.spawn_task('rules', 'job')")
	require.Empty(t, privilegeProblems(t, conn))

	var membership string
	require.NoError(t, conn.QueryRow(ctx, `
		select string_agg(format('%s<%s', m.member::regrole, m.roleid::regrole), ' '
		                  order by m.member::regrole::text)
		  from pg_auth_members m
		 where m.roleid in ('durable_producer'::regrole, 'durable_worker'::regrole)
		   and m.member in ('durable_worker'::regrole, 'durable_admin'::regrole)`).Scan(&membership))
	require.Equal(t, "durable_admin<durable_worker durable_worker<durable_producer", membership)
	var canLogin int
	require.NoError(t, conn.QueryRow(ctx, `select count(*) from pg_roles where rolname like 'durable\_%' and rolcanlogin
		and rolname in ('durable_producer', 'durable_worker', 'durable_admin')`).Scan(&canLogin))
	require.Zero(t, canLogin, "the three roles are NOLOGIN")

	// A function merged later without a role, as its migration leaves it.
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	mustExec(t, tx, "create function durable.queue_report() returns integer language sql as 'select 1'")
	mustExec(t, tx, "create function durable._report_helper() returns integer language sql as 'select 1'")
	require.Equal(t, []string{
		"durable._report_helper(): EXECUTE granted to PUBLIC",
		"durable._report_helper(): internal, but durable_admin may execute it",
		"durable._report_helper(): internal, but durable_producer may execute it",
		"durable._report_helper(): internal, but durable_worker may execute it",
		"durable.queue_report(): EXECUTE granted to PUBLIC",
		"durable.queue_report(): a public function that is not security definer",
		"durable.queue_report(): a public function without a role",
	}, privilegeProblems(t, tx))

	_, err = tx.Exec(ctx, "savepoint s")
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "select durable._grant_roles()")
	require.Contains(t, requireSQLState(t, err, "QD041").Message, "queue_report")
	_, err = tx.Exec(ctx, "rollback to savepoint s")
	require.NoError(t, err)

	// Given its role as a line in _grant_roles would, and dropped helper, the
	// rules hold again.
	mustExec(t, tx, "alter function durable.queue_report() security definer")
	mustExec(t, tx, "revoke all on function durable.queue_report() from public")
	mustExec(t, tx, "grant execute on function durable.queue_report() to durable_admin")
	mustExec(t, tx, "drop function durable._report_helper()")
	require.Empty(t, privilegeProblems(t, tx))
}

// A migration run after a public function appeared without a role fails
// with QD041 (ErrFunctionWithoutRole) naming it: how a merged function that
// nobody gave a role is caught at install time.
func TestMigrateRefusesFunctionWithoutRole(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn := connect(t, testdb.NewDatabase(t))
	require.NoError(t, durable.Migrate(ctx, conn, &durable.MigrateOptions{TargetVersion: 4}))
	mustExec(t, conn, "create function durable.queue_report() returns integer language sql as 'select 1'")
	err := durable.Migrate(ctx, conn, nil)
	require.ErrorIs(t, err, durable.ErrFunctionWithoutRole)
	require.ErrorContains(t, err, "queue_report")
	installed, _, err := durable.MigrationStatus(ctx, conn)
	require.NoError(t, err)
	require.EqualValues(t, 7, installed, "the failed migration (008, privileges) left nothing behind")
}

// privOp is one thing a role may or may not do. setup runs as the owner and
// returns the arguments of sql, which runs as the role under test.
type privOp struct {
	name  string
	least string // the least role allowed; "" for none
	setup func(t *testing.T, owner *pgx.Conn, queue string) []any
	sql   string
}

// ownerRunning spawns a task as the owner and claims it (with whatever else
// is ready): its task and run.
func ownerRunning(t *testing.T, owner *pgx.Conn, queue string) (durable.UUID, durable.UUID) {
	t.Helper()
	task := ownerSpawn(t, owner, queue)
	var run durable.UUID
	require.NoError(t, owner.QueryRow(context.Background(),
		"select run_id from durable.claim_task($1, 'owner', 600, 10000) where task_id = $2", queue, task).Scan(&run))
	return task, run
}

func ownerSpawn(t *testing.T, owner *pgx.Conn, queue string) durable.UUID {
	t.Helper()
	var task durable.UUID
	require.NoError(t, owner.QueryRow(context.Background(), "select task_id from durable.spawn_task($1, 'job')", queue).Scan(&task))
	return task
}

var privQueueSeq atomic.Int64

type privSetup = func(t *testing.T, owner *pgx.Conn, queue string) []any

// privOps covers every public function (each with arguments that succeed for
// a role allowed to call it), some internal helpers, the shared tables and a
// queue's views (t_<queue>, c_<queue>, ...). The statements use no operator
// and no unqualified function, so that an attacker's search_path cannot
// change them.
func privOps() []privOp {
	queueOnly := func(t *testing.T, owner *pgx.Conn, queue string) []any { return []any{queue} }
	none := func(t *testing.T, owner *pgx.Conn, queue string) []any { return nil }
	spawned := func(t *testing.T, owner *pgx.Conn, queue string) []any {
		return []any{queue, ownerSpawn(t, owner, queue)}
	}
	running := func(t *testing.T, owner *pgx.Conn, queue string) []any {
		task, run := ownerRunning(t, owner, queue)
		return []any{queue, task, run}
	}
	runOnly := func(t *testing.T, owner *pgx.Conn, queue string) []any {
		_, run := ownerRunning(t, owner, queue)
		return []any{queue, run}
	}
	fresh := func(t *testing.T, owner *pgx.Conn, queue string) []any {
		return []any{fmt.Sprintf("priv_new_%d", privQueueSeq.Add(1))}
	}
	return []privOp{
		{"spawn_task", "durable_producer", queueOnly, "select * from durable.spawn_task($1, 'job', '{}', false, 'key-1')"},
		{"spawn_tasks", "durable_producer", queueOnly, `select * from durable.spawn_tasks($1, '[{"task_name": "a"}, {"task_name": "b"}]')`},
		{"cancel_task", "durable_producer", spawned, "select durable.cancel_task($1, $2)"},
		{"get_task_result", "durable_producer", spawned, "select * from durable.get_task_result($1, $2)"},
		{"list_queues", "durable_producer", none, "select * from durable.list_queues()"},
		{"current_time", "durable_producer", none, "select durable.current_time()"},
		{"queue_stats", "durable_producer", queueOnly, "select * from durable.queue_stats($1)"},
		{"list_tasks", "durable_producer", queueOnly, "select * from durable.list_tasks($1)"},
		{"get_task", "durable_producer", spawned, "select * from durable.get_task($1, $2)"},

		{"claim_task", "durable_worker", func(t *testing.T, owner *pgx.Conn, queue string) []any {
			ownerSpawn(t, owner, queue)
			return []any{queue}
		}, "select * from durable.claim_task($1, 'w', 30, 5)"},
		{"complete_run", "durable_worker", runOnly, `select durable.complete_run($1, $2, '{"ok": true}')`},
		{"complete_runs", "durable_worker", func(t *testing.T, owner *pgx.Conn, queue string) []any {
			_, run := ownerRunning(t, owner, queue)
			return []any{queue, fmt.Sprintf(`[{"run_id": %q}]`, run)}
		}, "select * from durable.complete_runs($1, $2)"},
		{"fail_run", "durable_worker", runOnly, `select durable.fail_run($1, $2, '{"message": "no"}')`},
		{"extend_claim", "durable_worker", runOnly, "select durable.extend_claim($1, $2, 60)"},
		{"set_task_checkpoint_state", "durable_worker", running, `select durable.set_task_checkpoint_state($1, $2, 'step', '{"n": 1}', $3)`},
		{"get_task_checkpoint_states", "durable_worker", running, "select * from durable.get_task_checkpoint_states($1, $2, $3)"},
		{"sleep_until", "durable_worker", func(t *testing.T, owner *pgx.Conn, queue string) []any {
			return append(running(t, owner, queue), time.Now().Add(time.Hour))
		}, "select durable.sleep_until($1, $2, $3, 'nap', $4)"},
		{"emit_event", "durable_worker", queueOnly, `select durable.emit_event($1, 'paid', '{"amount": 1}')`},
		{"await_event", "durable_worker", running, "select * from durable.await_event($1, $2, $3, 'wait', 'shipped', 60)"},
		{"await_task_result", "durable_worker", func(t *testing.T, owner *pgx.Conn, queue string) []any {
			return append(running(t, owner, queue), ownerSpawn(t, owner, queue))
		}, "select * from durable.await_task_result($1, $2, $3, 'child', $4, 60)"},
		{"register_waiter", "durable_worker", queueOnly, "select durable.register_waiter($1)"},
		{"unregister_waiter", "durable_worker", queueOnly, "select durable.unregister_waiter($1)"},

		{"create_queue", "durable_admin", fresh, "select durable.create_queue($1)"},
		{"drop_queue", "durable_admin", func(t *testing.T, owner *pgx.Conn, queue string) []any {
			name := fresh(t, owner, queue)
			mustExec(t, owner, "select durable.create_queue($1)", name...)
			return name
		}, "select durable.drop_queue($1)"},
		{"ensure_queue_tables", "durable_admin", queueOnly, "select durable.ensure_queue_tables($1)"},
		{"retry_task", "durable_admin", func(t *testing.T, owner *pgx.Conn, queue string) []any {
			args := spawned(t, owner, queue)
			mustExec(t, owner, "select durable.cancel_task($1, $2)", args...)
			return args
		}, "select * from durable.retry_task($1, $2)"},
		{"set_queue_retention", "durable_admin", queueOnly, "select durable.set_queue_retention($1, 3600, 3600)"},
		{"cleanup_tasks", "durable_admin", queueOnly, "select durable.cleanup_tasks($1, 3600, 10)"},
		{"cleanup_events", "durable_admin", queueOnly, "select durable.cleanup_events($1, 3600, 10)"},
		{"cleanup_all", "durable_admin", none, "select * from durable.cleanup_all(10)"},

		{"internal _require_queue", "", queueOnly, "select durable._require_queue($1)"},
		{"internal _cancel_task", "", spawned, `select durable._cancel_task($1, $2, '{}', '2030-01-01', false)`},
		{"internal _grant_roles", "", none, "select durable._grant_roles()"},
		{"select from the task table", "", none, "select task_id from durable.tasks"},
		{"select from a queue's task view", "", none, "select task_id from durable.t_priv"},
		{"insert into the run table", "", none, "insert into durable.runs (run_id) values ('4d7c4c4e-0000-4000-8000-000000000000')"},
		{"update the queue list", "", none, "update durable.queues set created_at = '2030-01-01'"},
		{"delete from the event table", "", none, "delete from durable.events"},
		{"update a queue's checkpoint view", "", none, "update durable.c_priv set attempt = 0"},
		{"truncate the wait table", "", none, "truncate durable.waits"},
		{"read the schema version", "", none, "select version from durable.schema_version"},
	}
}

var roleLevel = map[string]int{"": 0, "durable_producer": 1, "durable_worker": 2, "durable_admin": 3}

// Each role can do its job and nothing more: a login role granted
// durable_producer, durable_worker or durable_admin (or none of them) calls
// every public function, some internal helpers, the tables and a queue's
// views; what its role allows succeeds, everything else fails with 42501.
func TestRolesDoTheirJobAndNothingMore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	logins := map[string]string{}
	for _, r := range []string{"", "durable_producer", "durable_worker", "durable_admin"} {
		if r == "" {
			logins[r] = loginRole(t, "nobody")
		} else {
			logins[r] = loginRole(t, strings.TrimPrefix(r, "durable_"), r)
		}
	}
	db := testdb.Clone(t)
	owner := connect(t, db)
	mustExec(t, owner, "select durable.create_queue('priv')")

	allowed := map[string]int{}
	for _, role := range []string{"", "durable_producer", "durable_worker", "durable_admin"} {
		as := connectAs(t, db, logins[role], nil)
		for _, op := range privOps() {
			args := op.setup(t, owner, "priv")
			_, err := as.Exec(ctx, op.sql, args...)
			label := fmt.Sprintf("%s as %s", op.name, logins[role])
			if op.least != "" && roleLevel[role] >= roleLevel[op.least] {
				require.NoError(t, err, label)
				allowed[role]++
			} else {
				requireDenied(t, err, label)
			}
		}
	}
	require.Equal(t, map[string]int{"durable_producer": 9, "durable_worker": 22, "durable_admin": 30}, allowed,
		"calls that succeeded per role, of %d each (the others were refused)", len(privOps()))
}

// requireDenied asserts that err is 42501 (insufficient_privilege).
func requireDenied(t *testing.T, err error, label string) {
	t.Helper()
	var pgErr *pgconn.PgError
	require.True(t, errors.As(err, &pgErr), "%s: want 42501, got %v", label, err)
	require.Equal(t, "42501", pgErr.Code, "%s: %s", label, pgErr.Message)
}

// hijacks returns the notices of attacker code that ran ("hijacked: ...").
func hijacks(seen *notices) []string {
	var out []string
	for _, m := range seen.take() {
		if strings.HasPrefix(m, "hijacked:") {
			out = append(out, m)
		}
	}
	return out
}

// attackerSchema creates, as the owner, a schema the role owns: the worst
// case, a login role that may create functions and operators.
func attackerSchema(t *testing.T, owner *pgx.Conn, schema, role string) {
	t.Helper()
	mustExec(t, owner, fmt.Sprintf("create schema %s authorization %s", schema, role))
}

// evilSearchPathSQL creates, in schema attack, operators and functions named
// like pg_catalog's that report (as a NOTICE, with the user they run as) and
// then do what the real ones do, and temporary tables named like durable's
// (the shared tables, and the view of the queue priv).
func evilSearchPathSQL() string {
	var b strings.Builder
	b.WriteString(`create function attack.hit(p_what text) returns void language plpgsql as $f$
begin
  raise notice 'hijacked: % ran as %', p_what, current_user;
end $f$;
`)
	ops := []struct{ op, left, right, result string }{
		{"=", "text", "text", "boolean"}, {"<>", "text", "text", "boolean"},
		{"=", "uuid", "uuid", "boolean"}, {"=", "integer", "integer", "boolean"},
		{"<", "integer", "integer", "boolean"}, {">=", "integer", "integer", "boolean"},
		{"=", "bigint", "bigint", "boolean"}, {"=", "bytea", "bytea", "boolean"},
		{"<=", "timestamptz", "timestamptz", "boolean"}, {"<", "timestamptz", "timestamptz", "boolean"},
		{">", "timestamptz", "timestamptz", "boolean"}, {"=", "jsonb", "jsonb", "boolean"},
		{"->>", "jsonb", "text", "text"}, {"->", "jsonb", "text", "jsonb"}, {"?", "jsonb", "text", "boolean"},
		{"||", "text", "text", "text"}, {"+", "timestamptz", "interval", "timestamptz"},
	}
	for i, o := range ops {
		fmt.Fprintf(&b, `create function attack.op%d(%s, %s) returns %s language plpgsql as $f$
begin
  perform attack.hit(%s);
  return $1 operator(pg_catalog.%s) $2;
end $f$;
create operator attack.%s (leftarg = %s, rightarg = %s, function = attack.op%d);
`, i, o.left, o.right, o.result, quoteLiteral(o.left+" "+o.op+" "+o.right), o.op, o.op, o.left, o.right, i)
	}
	fns := []struct{ name, args, call, result string }{
		{"now", "", "", "timestamptz"}, {"md5", "text", "$1", "text"},
		{"current_setting", "text, boolean", "$1, $2", "text"}, {"set_config", "text, text, boolean", "$1, $2, $3", "text"},
		{"gen_random_uuid", "", "", "uuid"}, {"lower", "text", "$1", "text"}, {"length", "text", "$1", "integer"},
		{"btrim", "text, text", "$1, $2", "text"}, {"jsonb_typeof", "jsonb", "$1", "text"},
		{"to_jsonb", "anyelement", "$1", "jsonb"}, {"quote_literal", "text", "$1", "text"},
		{"left", "text, integer", "$1, $2", "text"}, {"array_length", "anyarray, integer", "$1, $2", "integer"},
		{"make_interval", "integer, integer, integer, integer, integer, integer, double precision",
			"$1, $2, $3, $4, $5, $6, $7", "interval"},
		{"jsonb_array_elements", "jsonb", "$1", "setof jsonb"},
	}
	for _, f := range fns {
		ret := "return pg_catalog." + f.name + "(" + f.call + ");"
		if strings.HasPrefix(f.result, "setof") {
			ret = "return query select pg_catalog." + f.name + "(" + f.call + ");"
		}
		fmt.Fprintf(&b, `create function attack.%s(%s) returns %s language plpgsql as $f$
begin
  perform attack.hit(%s);
  %s
end $f$;
`, f.name, f.args, f.result, quoteLiteral(f.name+"()"), ret)
	}
	b.WriteString(`create function attack.pg_notify(text, text) returns void language plpgsql as $f$
begin
  perform attack.hit('pg_notify()');
  perform pg_catalog.pg_notify($1, $2);
end $f$;
create function attack.pg_advisory_xact_lock(bigint) returns void language plpgsql as $f$
begin
  perform attack.hit('pg_advisory_xact_lock()');
  perform pg_catalog.pg_advisory_xact_lock($1);
end $f$;
create temp table queues (queue_name text, created_at timestamptz);
create temp table tasks (queue_name text, task_id uuid);
create temp table runs (queue_name text, run_id uuid);
create temp table checkpoints (queue_name text, task_id uuid);
create temp table events (queue_name text, event_name text);
create temp table waits (queue_name text, task_id uuid);
create temp table t_priv (task_id uuid);
`)
	return b.String()
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// An attacker-controlled search_path hijacks nothing: a login role with every
// durable role and a schema of its own fills it with operators (=, <>, ->>,
// ||, ...) and functions (now, md5, current_setting, ...) named like
// pg_catalog's, puts it first (before pg_temp and pg_catalog, holding temp
// tables named like durable's) and calls every public function; none of its
// code runs. The control, a security definer function without a search_path
// of its own, shows that the same objects do take over a function that is
// open to it.
func TestSearchPathCannotHijackFunctions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	attacker := loginRole(t, "attacker", "durable_admin")
	db := testdb.Clone(t)
	owner := connect(t, db)
	var ownerName string
	require.NoError(t, owner.QueryRow(ctx, "select current_user").Scan(&ownerName))
	attackerSchema(t, owner, "attack", attacker)
	mustExec(t, owner, `create function attack.vulnerable() returns boolean language plpgsql security definer as $f$
begin
  return now() is not null and 'a' = 'a';
end $f$`)
	mustExec(t, owner, "grant execute on function attack.vulnerable() to "+attacker)
	mustExec(t, owner, "select durable.create_queue('priv')")

	seen := &notices{}
	as := connectAs(t, db, attacker, seen)
	mustExec(t, as, evilSearchPathSQL())
	mustExec(t, as, "set search_path = attack, pg_temp, pg_catalog")

	mustExec(t, as, "select attack.vulnerable()")
	control := hijacks(seen)
	require.Contains(t, control, "hijacked: now() ran as "+ownerName, "the attack objects must take over an open function")
	require.Contains(t, control, "hijacked: text = text ran as "+ownerName)

	calls := 0
	for _, op := range privOps() {
		if op.least == "" {
			continue
		}
		args := op.setup(t, owner, "priv")
		_, err := as.Exec(ctx, op.sql, args...)
		require.NoError(t, err, op.name)
		require.Empty(t, hijacks(seen), "%s ran attacker code", op.name)
		calls++
	}
	require.Equal(t, 30, calls)

	// The same through the Go client, whose worker takes every hot path.
	c, err := durable.New(as, nil)
	require.NoError(t, err)
	_, err = c.Spawn(ctx, "priv", "job", map[string]int{"n": 1}, &durable.SpawnOptions{IdempotencyKey: "go-1"})
	require.NoError(t, err)
	runs, err := c.ClaimTasks(ctx, "priv", "go", time.Minute, 100)
	require.NoError(t, err)
	require.NotEmpty(t, runs)
	for _, r := range runs {
		require.NoError(t, c.CompleteRun(ctx, "priv", r.RunID, map[string]bool{"ok": true}))
	}
	require.Empty(t, hijacks(seen))
}

// statementName is the name durable._prepared (dropped by migration 010) gave
// a queue's session prepared statement.
func statementName(statement, queue string) string {
	sum := md5.Sum([]byte(queue))
	return "durable_" + statement + "_" + hex.EncodeToString(sum[:])
}

// oldStatements are the session prepared statements, with their parameter
// types, that the functions ran through durable._prepared before migration
// 010 made every statement static.
var oldStatements = []struct{ name, types string }{
	{"deadlines", "(timestamptz)"},
	{"expired", "(timestamptz)"},
	{"claim", "(timestamptz, integer, text, integer)"},
	{"extend_by_id", "(uuid, timestamptz, integer)"},
	{"complete_run_by_id", "(uuid, timestamptz)"},
	{"finish_task", "(uuid, jsonb, timestamptz)"},
	{"complete_runs", "(uuid[], timestamptz)"},
	{"complete_runs_why", "(uuid[], timestamptz)"},
	{"key_holder", "(text, bytea, timestamptz)"},
	{"release_key", "(text, bytea, timestamptz)"},
	{"unwait", "(uuid[])"},
	{"wake", "(text[], timestamptz)"},
}

// A login role's session prepared statements never run inside a definer
// function, and the functions leave no prepared statement of their own in the
// session. Until migration 010 the functions ran session prepared statements
// named durable_<statement>_<md5(queue)> (durable._prepared), which a role
// could try to take over. A worker does all it could then: prepares every one
// of those names to call its own function, forges the
// durable.prepared.<name> settings that said "already prepared", and calls
// the functions under its default search_path, under one of its operators and
// functions (before pg_temp and pg_catalog) and under one of its domain types.
// Each time claim_task returns the owner's new task, extend_claim,
// get_task_checkpoint_states and complete_run act on that run, and none of the
// role's code runs; spawning with a key and complete_runs (the other old
// names) run none either. Afterwards the session's prepared statements are
// exactly the role's own, untouched. The controls show that the role's
// statements, operators and types do run its code when used.
func TestRolePreparedStatementsNeverRun(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	worker := loginRole(t, "preparer", "durable_worker")
	db := testdb.Clone(t)
	owner := connect(t, db)
	attackerSchema(t, owner, "attack", worker)
	attackerSchema(t, owner, "attack_types", worker)
	mustExec(t, owner, "select durable.create_queue('prep')")
	seen := &notices{}
	as := connectAs(t, db, worker, seen)
	mustExec(t, as, `create function attack.evil(p_statement text) returns void language plpgsql as $f$
begin
  raise notice 'hijacked: statement % ran as %', p_statement, current_user;
end $f$`)
	mustExec(t, as, evilSearchPathSQL())
	mustExec(t, as, `create function attack_types.spy(timestamptz) returns boolean language plpgsql as $f$
begin
  raise notice 'hijacked: a domain check ran as %', current_user;
  return true;
end $f$;
create domain attack_types.timestamptz as pg_catalog.timestamptz check (attack_types.spy(value))`)

	// The role's statements under every old name, each with the setting that
	// told _prepared it was already prepared.
	theirs := map[string]string{}
	for _, s := range oldStatements {
		name := statementName(s.name, "prep")
		text := fmt.Sprintf("prepare %s %s as select attack.evil(%s)", name, s.types, quoteLiteral(s.name))
		mustExec(t, as, text)
		mustExec(t, as, "select pg_catalog.set_config($1, '1', false)", "durable.prepared."+name)
		theirs[name] = text
	}
	mustExec(t, as, fmt.Sprintf("execute %s(pg_catalog.now(), 1, 'w', 30)", statementName("claim", "prep")))
	require.Equal(t, []string{"hijacked: statement claim ran as " + worker}, hijacks(seen),
		"control: the role's own statement runs when the role executes it")

	type claimed struct {
		TaskID durable.UUID
		RunID  durable.UUID
	}
	type checkpoint struct {
		StepName string
		RunID    durable.UUID
	}
	// work spawns a task as the owner; as the role, claims it, extends its
	// lease, checkpoints a step, reads the checkpoints and completes the run.
	// Every call must see that task and run, and no code of the role may run.
	work := func(label string) {
		t.Helper()
		task := ownerSpawn(t, owner, "prep")
		rows, err := as.Query(ctx, "select task_id, run_id from durable.claim_task('prep', 'w', 30, 100)")
		require.NoError(t, err, label)
		got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[claimed])
		require.NoError(t, err, label)
		require.Len(t, got, 1, label)
		require.Equal(t, task, got[0].TaskID, label)
		run := got[0].RunID
		require.Empty(t, hijacks(seen), "%s: claim_task", label)

		var expires, stored time.Time
		require.NoError(t, as.QueryRow(ctx, "select durable.extend_claim('prep', $1, 600)", run).Scan(&expires), label)
		require.NoError(t, owner.QueryRow(ctx, "select claim_expires_at from durable.runs where queue_name = 'prep' and run_id = $1",
			run).Scan(&stored), label)
		require.True(t, stored.Equal(expires), "%s: extend_claim moved the lease to %v, the run says %v", label, expires, stored)
		require.Empty(t, hijacks(seen), "%s: extend_claim", label)

		mustExec(t, as, `select durable.set_task_checkpoint_state('prep', $1, 'step', '{"n": 1}', $2)`, task, run)
		rows, err = as.Query(ctx, "select step_name, run_id from durable.get_task_checkpoint_states('prep', $1, $2)", task, run)
		require.NoError(t, err, label)
		steps, err := pgx.CollectRows(rows, pgx.RowToStructByPos[checkpoint])
		require.NoError(t, err, label)
		require.Equal(t, []checkpoint{{"step", run}}, steps, label)
		require.Empty(t, hijacks(seen), "%s: get_task_checkpoint_states", label)

		mustExec(t, as, `select durable.complete_run('prep', $1, '{"ok": true}')`, run)
		var taskState, runState string
		require.NoError(t, owner.QueryRow(ctx, `select t.state, r.state from durable.tasks t
			join durable.runs r on r.queue_name = t.queue_name and r.run_id = t.last_attempt_run
			where t.queue_name = 'prep' and t.task_id = $1`, task).Scan(&taskState, &runState), label)
		require.Equal(t, []string{"completed", "completed"}, []string{taskState, runState}, label)
		require.Empty(t, hijacks(seen), "%s: complete_run", label)
	}

	// 1. The role's statements and forged settings, its search_path as is.
	work("the role's statements under the old names")

	// 2. A search_path whose operators and functions are the role's.
	mustExec(t, as, "set search_path = attack, pg_temp, pg_catalog")
	mustExec(t, as, "prepare control as select 'a'::text = 'b'::text")
	theirs["control"] = "prepare control as select 'a'::text = 'b'::text"
	mustExec(t, as, "execute control")
	require.Len(t, hijacks(seen), 1, "control: under this search_path = is the role's")
	work("the role's operators and functions")

	// 3. A search_path whose timestamptz is the role's domain.
	mustExec(t, as, "set search_path = attack_types, pg_catalog")
	mustExec(t, as, "select '2030-01-01'::timestamptz")
	require.Len(t, hijacks(seen), 1, "control: under this search_path timestamptz is the role's domain")
	work("the role's types")
	mustExec(t, as, "reset search_path")

	// The other old names: a spawn with an idempotency key (twice: the second
	// finds the first) and complete_runs.
	var first, again durable.UUID
	require.NoError(t, as.QueryRow(ctx, "select task_id from durable.spawn_task('prep', 'job', '{}', false, 'key-1')").Scan(&first))
	require.NoError(t, as.QueryRow(ctx, "select task_id from durable.spawn_task('prep', 'job', '{}', false, 'key-1')").Scan(&again))
	require.Equal(t, first, again, "the key finds its task")
	var run durable.UUID
	require.NoError(t, as.QueryRow(ctx, "select run_id from durable.claim_task('prep', 'w', 30, 100) where task_id = $1", first).Scan(&run))
	var completed bool
	require.NoError(t, as.QueryRow(ctx, "select completed from durable.complete_runs('prep', $1)",
		fmt.Sprintf(`[{"run_id": %q}]`, run)).Scan(&completed))
	require.True(t, completed, "complete_runs completed the run")
	require.Empty(t, hijacks(seen), "spawn_task with a key and complete_runs")

	// The session holds the role's statements as it prepared them and nothing
	// the functions prepared. (Statements prepared through the protocol rather
	// than PREPARE are pgx's statement cache.)
	rows, err := as.Query(ctx, "select name, statement, from_sql from pg_catalog.pg_prepared_statements")
	require.NoError(t, err)
	type prepared struct {
		Name, Statement string
		FromSQL         bool
	}
	stmts, err := pgx.CollectRows(rows, pgx.RowToStructByPos[prepared])
	require.NoError(t, err)
	held := map[string]string{}
	for _, s := range stmts {
		if !s.FromSQL {
			require.True(t, strings.HasPrefix(s.Name, "stmtcache_"), "%s is not the client's", s.Name)
			continue
		}
		held[s.Name] = s.Statement
	}
	require.Equal(t, theirs, held)
}

// No function file holds a backslash. A session may set
// standard_conforming_strings = off, which makes a backslash in a string an
// escape: a function compiled in that session (it runs as the owner) would
// then mean something else. (Write chr(92) where one is needed.)
func TestFunctionFilesHaveNoBackslash(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("sql/functions/*.sql")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, f := range files {
		text, err := os.ReadFile(f)
		require.NoError(t, err)
		require.NotContains(t, string(text), `\`, f)
	}
}

// durable.fake_now moves the clock only for sessions with the owner's
// privileges: a worker that sets it cannot take a run before its time, and
// a producer that sets it does not change when its task was enqueued.
func TestFakeNowOnlyForTheOwner(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	worker := loginRole(t, "clock", "durable_worker")
	db := testdb.Clone(t)
	owner := connect(t, db)
	mustExec(t, owner, "select durable.create_queue('clock')")
	later := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	var task durable.UUID
	require.NoError(t, owner.QueryRow(ctx, "select task_id from durable.spawn_task('clock', 'job', '{}', false, null, $1::jsonb)",
		availableAtOption(later)).Scan(&task))

	as := connectAs(t, db, worker, nil)
	future := time.Now().Add(2 * time.Hour).UTC().Format(time.RFC3339)
	mustExec(t, as, "select pg_catalog.set_config('durable.fake_now', $1, false)", future)
	var claimed int
	require.NoError(t, as.QueryRow(ctx, "select count(*) from durable.claim_task('clock', 'w', 30, 10)").Scan(&claimed))
	require.Zero(t, claimed, "a worker's fake_now must not make a later run claimable")
	var enqueued time.Time
	require.NoError(t, as.QueryRow(ctx, "select task_id from durable.spawn_task('clock', 'job')").Scan(&task))
	require.NoError(t, owner.QueryRow(ctx, "select enqueued_at from durable.tasks where queue_name = 'clock' and task_id = $1", task).Scan(&enqueued))
	require.WithinDuration(t, time.Now(), enqueued, 10*time.Minute, "a producer's fake_now must not date its task")

	mustExec(t, owner, "select pg_catalog.set_config('durable.fake_now', $1, false)", future)
	require.NoError(t, owner.QueryRow(ctx, "select count(*) from durable.claim_task('clock', 'w', 30, 10)").Scan(&claimed))
	require.Equal(t, 2, claimed, "the owner's fake_now moves the clock (tests rely on it)")
}

// A role without CREATEROLE installs the schema when the roles exist (it
// creates none), and owns what it installed; when a membership is missing
// and it may not grant it, the install fails with QD040 and a hint.
func TestInstallWithoutCreateRole(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	installer := loginRole(t, "installer")
	db := testdb.NewDatabase(t)
	super := connect(t, db)
	mustExec(t, super, "alter database "+db+" owner to "+installer)
	var createRole bool
	require.NoError(t, super.QueryRow(ctx, "select rolcreaterole or rolsuper from pg_roles where rolname = $1", installer).Scan(&createRole))
	require.False(t, createRole)

	as := connectAs(t, db, installer, nil)
	require.NoError(t, durable.Migrate(ctx, as, nil))
	require.Empty(t, privilegeProblems(t, as))
	var owned int
	require.NoError(t, as.QueryRow(ctx, `select count(*) from pg_proc
		where pronamespace = 'durable'::regnamespace and proowner <> current_user::regrole`).Scan(&owned))
	require.Zero(t, owned, "the installer owns every function")
	mustExec(t, as, "select durable.create_queue('mine')")

	// A membership missing, in a transaction never committed: the other
	// tests of this cluster keep seeing it.
	tx, err := super.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	mustExec(t, tx, "revoke durable_producer from durable_worker")
	mustExec(t, tx, "set local role "+installer)
	_, err = tx.Exec(ctx, "select durable._grant_roles()")
	pgErr := requireSQLState(t, err, "QD040")
	require.Contains(t, pgErr.Message, "durable_worker is not a member of role durable_producer")
	require.Contains(t, pgErr.Hint, "grant durable_producer to durable_worker")
}

// The Go package works with least privilege: an admin creates the queue, a
// producer spawns and waits for results, a worker runs the handlers (steps,
// checkpoints, heartbeats, completions, wake-ups), and the producer may not
// create queues or claim.
func TestGoClientWithLeastPrivilege(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	adminRole := loginRole(t, "goadmin", "durable_admin")
	producerRole := loginRole(t, "goproducer", "durable_producer")
	workerRole := loginRole(t, "goworker", "durable_worker")
	db := testdb.Clone(t)

	admin, err := durable.New(poolAs(t, db, adminRole), nil)
	require.NoError(t, err)
	require.NoError(t, admin.CreateQueue(ctx, "least"))
	producer, err := durable.New(poolAs(t, db, producerRole), nil)
	require.NoError(t, err)
	workerClient, err := durable.New(poolAs(t, db, workerRole), nil)
	require.NoError(t, err)

	add := durable.DefineTask[sumParams, sumResult]("add")
	w, err := workerClient.NewWorker(durable.WorkerConfig{Queue: "least", Concurrency: 4})
	require.NoError(t, err)
	durable.HandleTask(w, add, func(ctx context.Context, task *durable.Task, p sumParams) (sumResult, error) {
		sum, err := durable.Step(ctx, task, "sum", func(context.Context) (int, error) { return p.A + p.B, nil })
		return sumResult{Sum: sum}, err
	})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()
	defer func() {
		stop()
		require.NoError(t, <-done)
	}()

	const n = 20
	ids := make([]durable.UUID, n)
	for i := range ids {
		s, err := add.Spawn(ctx, producer, "least", sumParams{A: i, B: 1}, &durable.SpawnOptions{IdempotencyKey: fmt.Sprint("sum-", i)})
		require.NoError(t, err)
		ids[i] = s.TaskID
	}
	for i, id := range ids {
		got, err := add.WaitForResult(ctx, producer, "least", id)
		require.NoError(t, err)
		require.Equal(t, i+1, got.Sum)
	}

	var pgErr *pgconn.PgError
	require.ErrorAs(t, producer.CreateQueue(ctx, "not-mine"), &pgErr)
	require.Equal(t, "42501", pgErr.Code)
	_, err = producer.ClaimTasks(ctx, "least", "p", time.Minute, 1)
	require.ErrorAs(t, err, &pgErr)
	require.Equal(t, "42501", pgErr.Code)
}
