// Package testdb gives tests a real PostgreSQL: a migrated template database
// per test binary, cheap clones of it for tests that need their own database,
// and transactions rolled back at cleanup for the rest.
//
// When DATABASE_URL is unset, Main re-runs the test binary under
// scripts/pg.sh, which starts a throwaway cluster for it.
package testdb

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

var (
	baseURL  string
	template string
	shared   *pgxpool.Pool
	counter  atomic.Int64
	prefix   string

	sharedOnce sync.Once
)

// Main runs the tests of a package against PostgreSQL. setup installs the
// schema into the template database every test database is cloned from.
func Main(m *testing.M, setup func(ctx context.Context, conn *pgx.Conn) error) {
	if os.Getenv("DATABASE_URL") == "" {
		os.Exit(reexecUnderThrowawayPostgres())
	}
	baseURL = os.Getenv("DATABASE_URL")
	prefix = fmt.Sprintf("durable_test_%d", os.Getpid())
	template = prefix + "_tpl"

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	if err := createTemplate(ctx, setup); err != nil {
		cancel()
		fmt.Fprintln(os.Stderr, "testdb:", err)
		os.Exit(1)
	}
	cancel()

	code := m.Run()

	if shared != nil {
		shared.Close()
	}
	dropAll()
	os.Exit(code)
}

// reexecUnderThrowawayPostgres runs this test binary again under
// scripts/pg.sh and returns its exit code.
func reexecUnderThrowawayPostgres() int {
	script, err := findScript()
	if err != nil {
		fmt.Fprintln(os.Stderr, "testdb: DATABASE_URL is unset and", err)
		return 1
	}
	cmd := exec.Command(script, os.Args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "testdb:", err)
		return 1
	}
	return 0
}

func findScript() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, "scripts", "pg.sh")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("scripts/pg.sh was not found above %s", dir)
		}
		dir = parent
	}
}

func createTemplate(ctx context.Context, setup func(context.Context, *pgx.Conn) error) error {
	admin, err := pgx.Connect(ctx, baseURL)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", baseURL, err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, fmt.Sprintf("drop database if exists %s with (force)", template)); err != nil {
		return err
	}
	if _, err := admin.Exec(ctx, fmt.Sprintf("create database %s", template)); err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, URL(template))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if setup != nil {
		if err := setup(ctx, conn); err != nil {
			return fmt.Errorf("set up template: %w", err)
		}
	}
	return nil
}

// URL returns the connection string of database name on the test server.
func URL(name string) string {
	cfg, err := pgx.ParseConfig(baseURL)
	if err != nil {
		panic(err)
	}
	u := fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", cfg.User, cfg.Host, cfg.Port, name)
	if cfg.Password != "" {
		u = fmt.Sprintf("postgres://%s:%s@%s:%d/%s?sslmode=disable", cfg.User, cfg.Password, cfg.Host, cfg.Port, name)
	}
	return u
}

// NewDatabase creates an empty database (no schema) that is dropped at
// cleanup, and returns its name.
func NewDatabase(t testing.TB) string {
	return createDatabase(t, "template0")
}

// Clone creates a database cloned from the migrated template, dropped at
// cleanup, and returns its name. About 70 ms.
func Clone(t testing.TB) string {
	return createDatabase(t, template)
}

func createDatabase(t testing.TB, from string) string {
	t.Helper()
	name := fmt.Sprintf("%s_%d", prefix, counter.Add(1))
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, baseURL)
	if err != nil {
		t.Fatalf("testdb: connect: %v", err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, fmt.Sprintf("create database %s template %s", name, from)); err != nil {
		t.Fatalf("testdb: create database: %v", err)
	}
	t.Cleanup(func() { dropDatabase(name) })
	return name
}

// Pool opens a pool on database name, closed at cleanup.
func Pool(t testing.TB, name string, maxConns int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(URL(name))
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	if maxConns > 0 {
		cfg.MaxConns = maxConns
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// ClonePool is Pool(t, Clone(t), maxConns): a migrated database of the
// test's own.
func ClonePool(t testing.TB, maxConns int32) *pgxpool.Pool {
	t.Helper()
	return Pool(t, Clone(t), maxConns)
}

// Shared returns a pool on one migrated database shared by the package's
// tests. Use it through Tx unless the test needs commits.
func Shared(t testing.TB) *pgxpool.Pool {
	t.Helper()
	sharedOnce.Do(func() {
		name := fmt.Sprintf("%s_shared", prefix)
		ctx := context.Background()
		admin, err := pgx.Connect(ctx, baseURL)
		if err != nil {
			panic(err)
		}
		defer admin.Close(ctx)
		if _, err := admin.Exec(ctx, fmt.Sprintf("create database %s template %s", name, template)); err != nil {
			panic(err)
		}
		cfg, err := pgxpool.ParseConfig(URL(name))
		if err != nil {
			panic(err)
		}
		cfg.MaxConns = 20
		shared, err = pgxpool.NewWithConfig(ctx, cfg)
		if err != nil {
			panic(err)
		}
	})
	return shared
}

// Tx begins a transaction on the shared database and rolls it back at
// cleanup, so the test leaves nothing behind.
func Tx(t testing.TB) pgx.Tx {
	t.Helper()
	tx, err := Shared(t).Begin(context.Background())
	if err != nil {
		t.Fatalf("testdb: begin: %v", err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	return tx
}

func dropDatabase(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, baseURL)
	if err != nil {
		return
	}
	defer admin.Close(ctx)
	_, _ = admin.Exec(ctx, fmt.Sprintf("drop database if exists %s with (force)", name))
}

func dropAll() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, baseURL)
	if err != nil {
		return
	}
	defer admin.Close(ctx)
	rows, err := admin.Query(ctx, "select datname from pg_database where datname like $1", prefix+"%")
	if err != nil {
		return
	}
	names, _ := pgx.CollectRows(rows, pgx.RowTo[string])
	for _, n := range names {
		_, _ = admin.Exec(ctx, fmt.Sprintf("drop database if exists %s with (force)", n))
	}
}
