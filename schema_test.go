package durable_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/internal/sqlgen"
	"github.com/durable-go/durable/internal/testdb"
)

// catalogSnapshot lists, one line each and sorted, every table, column,
// index, constraint and function of the durable schema with their access
// rights, the schema's rights, and the recorded schema version: what two
// installs must agree on.
const catalogSnapshot = `
select line from (
  select format('relation %s kind=%s acl=%s', c.relname, c.relkind, c.relacl) as line
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
   where n.nspname = 'durable'
  union all
  select format('column %s.%s %s not_null=%s default=%s', c.relname, a.attname,
                format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid))
    from pg_attribute a
    join pg_class c on c.oid = a.attrelid
    join pg_namespace n on n.oid = c.relnamespace
    left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
   where n.nspname = 'durable' and c.relkind in ('r', 'p') and a.attnum > 0 and not a.attisdropped
  union all
  select 'index ' || pg_get_indexdef(i.indexrelid)
    from pg_index i join pg_class c on c.oid = i.indrelid join pg_namespace n on n.oid = c.relnamespace
   where n.nspname = 'durable'
  union all
  select format('constraint %s.%s %s', c.relname, co.conname, pg_get_constraintdef(co.oid))
    from pg_constraint co join pg_class c on c.oid = co.conrelid join pg_namespace n on n.oid = c.relnamespace
   where n.nspname = 'durable'
  union all
  select format('function %s acl=%s %s', p.oid::regprocedure, p.proacl, pg_get_functiondef(p.oid))
    from pg_proc p join pg_namespace n on n.oid = p.pronamespace
   where n.nspname = 'durable'
  union all
  select format('schema acl=%s', n.nspacl) from pg_namespace n where n.nspname = 'durable'
  union all
  select 'version ' || version from durable.schema_version
) s order by line`

func snapshot(t *testing.T, conn *pgx.Conn) []string {
	t.Helper()
	rows, err := conn.Query(context.Background(), catalogSnapshot)
	require.NoError(t, err)
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return lines
}

func connect(t *testing.T, dbName string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), testdb.URL(dbName))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func psqlInstall(t *testing.T, dbName string) {
	t.Helper()
	psql := "psql"
	if bin := os.Getenv("DURABLE_PG_BIN"); bin != "" {
		if _, err := os.Stat(filepath.Join(bin, "psql")); err == nil {
			psql = filepath.Join(bin, "psql")
		}
	}
	out, err := exec.Command(psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "sql/install.sql", testdb.URL(dbName)).CombinedOutput()
	require.NoError(t, err, "psql -f sql/install.sql: %s", out)
}

// The repository's generated SQL (new migrations, install.sql) is up to date
// with sql/functions.
func TestGeneratedSQLIsFresh(t *testing.T) {
	t.Parallel()
	require.NoError(t, sqlgen.Verify("."))
}

// psql -f sql/install.sql and durable.Migrate build identical schemas, and
// each may follow the other (or itself) without changing anything.
func TestInstallSQLMatchesGoMigrations(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	viaPsql, viaGo := testdb.NewDatabase(t), testdb.NewDatabase(t)

	psqlInstall(t, viaPsql)
	goConn := connect(t, viaGo)
	require.NoError(t, durable.Migrate(ctx, goConn, nil))

	psqlConn := connect(t, viaPsql)
	want := snapshot(t, goConn)
	require.NotEmpty(t, want)
	require.Equal(t, want, snapshot(t, psqlConn), "psql install and Go migrations differ")

	psqlInstall(t, viaPsql)
	require.Equal(t, want, snapshot(t, psqlConn), "running install.sql again changed the schema")
	require.NoError(t, durable.Migrate(ctx, psqlConn, nil))
	require.Equal(t, want, snapshot(t, psqlConn), "Go migrations after install.sql changed the schema")
	psqlInstall(t, viaGo)
	require.Equal(t, want, snapshot(t, goConn), "install.sql after Go migrations changed the schema")
}

// Every function file is exactly what the migrations install, and every
// function the migrations install has a file.
func TestFunctionFilesMatchMigrations(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn := connect(t, testdb.Clone(t))

	rows, err := conn.Query(ctx, `select p.proname from pg_proc p where p.pronamespace = 'durable'::regnamespace order by 1`)
	require.NoError(t, err)
	installed, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)

	files, err := filepath.Glob("sql/functions/*.sql")
	require.NoError(t, err)
	var names []string
	for _, f := range files {
		names = append(names, strings.TrimSuffix(filepath.Base(f), ".sql"))
	}
	sort.Strings(names)
	require.Equal(t, installed, names, "functions in the migrated schema vs files in sql/functions")

	before := snapshot(t, conn)
	for _, f := range files {
		text, err := os.ReadFile(f)
		require.NoError(t, err)
		_, err = conn.Exec(ctx, string(text))
		require.NoError(t, err, f)
	}
	require.Equal(t, before, snapshot(t, conn), "a function file differs from what the migrations install")
}

// Migration 002 adds deduplication to queues made at the base version: their
// tasks survive intact and the rule works on them.
func TestDedupMigrationUpgradesOldQueues(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn := connect(t, testdb.NewDatabase(t))
	require.NoError(t, durable.Migrate(ctx, conn, &durable.MigrateOptions{TargetVersion: 1}))

	for _, q := range []string{"old_a", "old-b"} {
		_, err := conn.Exec(ctx, "select durable.create_queue($1)", q)
		require.NoError(t, err)
		for i := 0; i < 3; i++ {
			_, err := conn.Exec(ctx, `select * from durable.spawn_task($1, 'job', jsonb_build_object('i', $2::int), '{"max_attempts": 2}')`, q, i)
			require.NoError(t, err)
		}
	}
	var claimed int
	require.NoError(t, conn.QueryRow(ctx, "select count(*) from durable.claim_task('old_a', 'w', 60, 1)").Scan(&claimed))
	require.Equal(t, 1, claimed)
	tasksBefore := dumpTasks(t, conn, "old_a")

	require.NoError(t, durable.Migrate(ctx, conn, nil))

	tasksAfter := dumpTasks(t, conn, "old_a")
	require.Equal(t, tasksBefore, tasksAfter, "old tasks changed during the migration")
	var held int
	require.NoError(t, conn.QueryRow(ctx, `select count(*) from durable."t_old-b" where key_held or key_hash is not null`).Scan(&held))
	require.Zero(t, held, "old tasks must hold no key")

	for _, q := range []string{"old_a", "old-b"} {
		var created []bool
		for i := 0; i < 2; i++ {
			var c bool
			require.NoError(t, conn.QueryRow(ctx, `select created from durable.spawn_task($1, 'job', '{}', false, 'k1')`, q).Scan(&c))
			created = append(created, c)
		}
		require.Equal(t, []bool{true, false}, created, "queue %s", q)
	}
}

func dumpTasks(t *testing.T, conn *pgx.Conn, queue string) []string {
	t.Helper()
	rows, err := conn.Query(context.Background(), `
		select format('%s %s %s %s %s %s', t.task_id, t.task_name, t.params, t.state, t.attempts, r.state)
		  from durable.`+pgx.Identifier{"t_" + queue}.Sanitize()+` t
		  join durable.`+pgx.Identifier{"r_" + queue}.Sanitize()+` r on r.run_id = t.last_attempt_run
		 order by 1`)
	require.NoError(t, err)
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Len(t, lines, 3)
	return lines
}

// Every PL/pgSQL function passes plpgsql_check without errors.
func TestPlpgsqlCheck(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn := connect(t, testdb.Clone(t))
	_, err := conn.Exec(ctx, "create extension if not exists plpgsql_check")
	require.NoError(t, err, "plpgsql_check must be installed (scripts/install-postgres.sh installs Debian's postgresql-15-plpgsql-check)")
	_, err = conn.Exec(ctx, "select durable.create_queue('lint')")
	require.NoError(t, err)
	rows, err := conn.Query(ctx, `
		select format('%s line %s: %s %s', p.proname, (c).lineno, (c).message, coalesce((c).detail, ''))
		  from pg_proc p
		  cross join lateral plpgsql_check_function_tb(p.oid, fatal_errors => false,
		                                               extra_warnings => true, security_warnings => true) c
		 where p.pronamespace = 'durable'::regnamespace
		   and p.prolang = (select oid from pg_language where lanname = 'plpgsql')
		   and (c).level = 'error'`)
	require.NoError(t, err)
	problems, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Empty(t, problems)

	var checked int
	require.NoError(t, conn.QueryRow(ctx, `select count(*) from pg_proc p where p.pronamespace = 'durable'::regnamespace
		and p.prolang = (select oid from pg_language where lanname = 'plpgsql')`).Scan(&checked))
	require.GreaterOrEqual(t, checked, 15, "the check must have looked at every function")
}

// 8 instances migrating one empty database at once all succeed, and the
// schema ends at the latest version.
func TestConcurrentMigrate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	name := testdb.NewDatabase(t)
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, testdb.URL(name))
			if err != nil {
				errs[i] = err
				return
			}
			defer conn.Close(ctx)
			errs[i] = durable.Migrate(ctx, conn, nil)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	conn := connect(t, name)
	installed, latest, err := durable.MigrationStatus(ctx, conn)
	require.NoError(t, err)
	require.Equal(t, latest, installed)
	require.GreaterOrEqual(t, latest, int32(2))
}

func TestMigrationStatusOnEmptyDatabase(t *testing.T) {
	t.Parallel()
	conn := connect(t, testdb.NewDatabase(t))
	installed, latest, err := durable.MigrationStatus(context.Background(), conn)
	require.NoError(t, err)
	require.Zero(t, installed)
	require.GreaterOrEqual(t, latest, int32(2))
}
