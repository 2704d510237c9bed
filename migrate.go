package durable

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/tern/v2/migrate"
)

// migrationFiles holds sql/migrations/NNN_*.sql. The glob is explicit because
// go:embed skips files starting with '_' or '.' in a bare directory pattern.
//
//go:embed sql/migrations/*.sql
var migrationFiles embed.FS

// VersionTable is where the installed schema version is recorded, in our own
// schema so that a host application's tern table is never touched.
const VersionTable = "durable.schema_version"

// migrationLock is tern's advisory lock number. Migrate takes it before
// creating the schema, and sql/install.sql takes it too, so Go migrations and
// psql installs running at once serialize.
const migrationLock = int64(9628173550095224)

// MigrateOptions tune Migrate. A nil *MigrateOptions migrates to the latest
// version.
type MigrateOptions struct {
	// TargetVersion is the version to migrate to. Defaults to the latest (0).
	TargetVersion int32
}

// Migrate installs or upgrades the durable schema on conn by running the
// embedded migrations that have not run yet. It is safe to call on every start,
// from many instances at once: they serialize on an advisory lock and all but
// the first find nothing to do. conn's role becomes the owner of the schema.
// The install creates the roles durable_producer, durable_worker and
// durable_admin when they are missing, which needs CREATEROLE; without it the
// error matches ErrRolesMissing and its hint gives the statements to run once.
func Migrate(ctx context.Context, conn *pgx.Conn, opts *MigrateOptions) (err error) {
	if _, err := conn.Exec(ctx, "select pg_advisory_lock($1)", migrationLock); err != nil {
		return fmt.Errorf("durable: migrate: %w", err)
	}
	defer func() {
		if _, unlockErr := conn.Exec(context.WithoutCancel(ctx), "select pg_advisory_unlock($1)", migrationLock); err == nil && unlockErr != nil {
			err = fmt.Errorf("durable: migrate: %w", unlockErr)
		}
	}()
	if _, err := conn.Exec(ctx, "create schema if not exists durable"); err != nil {
		return fmt.Errorf("durable: migrate: %w", err)
	}
	m, err := newMigrator(ctx, conn)
	if err != nil {
		return err
	}
	if opts != nil && opts.TargetVersion != 0 {
		err = m.MigrateTo(ctx, opts.TargetVersion)
	} else {
		err = m.Migrate(ctx)
	}
	if err != nil {
		return fmt.Errorf("durable: migrate: %w", mapError(err))
	}
	return nil
}

// MigrationStatus reports the schema version installed on db (0 when the
// schema is not installed) and the latest version this package embeds.
func MigrationStatus(ctx context.Context, db DBTX) (installed, latest int32, err error) {
	latest = int32(len(mustMigrationNames()))
	var exists bool
	if err := db.QueryRow(ctx, "select to_regclass($1) is not null", VersionTable).Scan(&exists); err != nil {
		return 0, latest, fmt.Errorf("durable: migration status: %w", err)
	}
	if !exists {
		return 0, latest, nil
	}
	if err := db.QueryRow(ctx, "select version from "+VersionTable).Scan(&installed); err != nil {
		return 0, latest, fmt.Errorf("durable: migration status: %w", err)
	}
	return installed, latest, nil
}

// Migrate runs Migrate on a connection of the client's database. It needs a
// *pgxpool.Pool or a *pgx.Conn: migrations run in transactions of their own,
// so they cannot run inside the caller's pgx.Tx.
func (c *Client) Migrate(ctx context.Context, opts *MigrateOptions) error {
	switch db := c.db.(type) {
	case *pgx.Conn:
		return Migrate(ctx, db, opts)
	case *pgxpool.Pool:
		conn, err := db.Acquire(ctx)
		if err != nil {
			return fmt.Errorf("durable: migrate: %w", err)
		}
		defer conn.Release()
		return Migrate(ctx, conn.Conn(), opts)
	default:
		return errors.New("durable: Migrate needs a client made with a *pgxpool.Pool or a *pgx.Conn")
	}
}

func newMigrator(ctx context.Context, conn *pgx.Conn) (*migrate.Migrator, error) {
	m, err := migrate.NewMigrator(ctx, conn, VersionTable)
	if err != nil {
		return nil, fmt.Errorf("durable: migrate: %w", err)
	}
	if err := m.LoadMigrations(migrationsFS()); err != nil {
		return nil, fmt.Errorf("durable: load migrations: %w", err)
	}
	return m, nil
}

func migrationsFS() fs.FS {
	sub, err := fs.Sub(migrationFiles, "sql/migrations")
	if err != nil {
		panic(err) // the embedded tree always has this directory
	}
	return sub
}

// MigrationNames returns the file names of the embedded migrations in order:
// version n is the n-th.
func MigrationNames() []string {
	return mustMigrationNames()
}

func mustMigrationNames() []string {
	names, err := migrate.FindMigrations(migrationsFS())
	if err != nil {
		panic(err)
	}
	return names
}
