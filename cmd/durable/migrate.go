package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/durable-go/durable"
)

func runMigrate(ctx context.Context, e *env, args []string) int {
	if len(args) > 0 && args[0] == "status" {
		return runMigrateStatus(ctx, e, args[1:])
	}
	fs := newFlagSet(e, "migrate", "[status] [flags]", `
Installs the durable schema in a database, or upgrades it, by running the
migrations embedded in this command that have not run yet. It is safe to run
again, and from several places at once: runs serialize on an advisory lock.

'durable migrate status' shows the installed version and the pending
migrations without changing anything.`,
		"  DATABASE_URL='postgres://postgres@127.0.0.1:5432/app?sslmode=disable' durable migrate\n  durable migrate status")
	databaseURL := fs.String("database-url", e.getenv("DATABASE_URL"), "database to migrate (defaults to $DATABASE_URL)")
	to := fs.Int("to", 0, "schema version to migrate to (0: the latest)")
	if code, ok := parse(e, fs, args); !ok {
		return code
	}
	if *databaseURL == "" {
		return usageError(e, fs, "no database: pass --database-url or set DATABASE_URL")
	}
	if *to < 0 {
		return usageError(e, fs, "--to must not be negative, got %d", *to)
	}

	conn, err := pgx.Connect(ctx, *databaseURL)
	if err != nil {
		fmt.Fprintf(e.stderr, "durable migrate: connect: %v\n", err)
		return exitError
	}
	defer conn.Close(context.WithoutCancel(ctx))
	before, latest, err := durable.MigrationStatus(ctx, conn)
	if err != nil {
		fmt.Fprintf(e.stderr, "durable migrate: %v\n", err)
		return exitError
	}
	if *to > int(latest) {
		fmt.Fprintf(e.stderr, "durable migrate: --to %d: this command knows versions up to %d\n", *to, latest)
		return exitUsage
	}
	if err := durable.Migrate(ctx, conn, &durable.MigrateOptions{TargetVersion: int32(*to)}); err != nil {
		fmt.Fprintf(e.stderr, "durable migrate: %v\n", err)
		return exitError
	}
	after, _, err := durable.MigrationStatus(ctx, conn)
	if err != nil {
		fmt.Fprintf(e.stderr, "durable migrate: %v\n", err)
		return exitError
	}
	if after == before {
		fmt.Fprintf(e.stdout, "durable schema is at version %d (latest %d); nothing to do\n", after, latest)
	} else {
		fmt.Fprintf(e.stdout, "durable schema migrated from version %d to %d (latest %d)\n", before, after, latest)
	}
	return exitOK
}

func runMigrateStatus(ctx context.Context, e *env, args []string) int {
	fs := newFlagSet(e, "migrate status", "[flags]", `
Shows the durable schema version installed in the database (0: not
installed), the latest version this command knows, and the migrations that
'durable migrate' would run. It changes nothing. --json prints
{"installed", "latest", "pending"}.`,
		"  durable migrate status\n  durable migrate status --json")
	db := addDBFlags(e, fs)
	if code, ok := parse(e, fs, args); !ok {
		return code
	}
	_, conn, code, ok := db.connect(ctx, e, fs)
	if !ok {
		return code
	}
	defer conn.Close(context.WithoutCancel(ctx))
	installed, latest, err := durable.MigrationStatus(ctx, conn)
	if err != nil {
		return failed(e, fs, err)
	}
	pending := []string{}
	for i, name := range durable.MigrationNames() {
		if int32(i+1) > installed {
			pending = append(pending, name)
		}
	}
	if *db.json {
		return printJSON(e.stdout, map[string]any{"installed": installed, "latest": latest, "pending": pending})
	}
	p := "none: up to date"
	if len(pending) > 0 {
		p = strings.Join(pending, ", ")
	}
	if installed > latest {
		p = "none (the database is newer than this command)"
	}
	printFields(e.stdout, [][2]string{
		{"installed version", fmt.Sprint(installed)},
		{"latest version", fmt.Sprint(latest)},
		{"pending", p},
	})
	return exitOK
}
