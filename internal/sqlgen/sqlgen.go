// Package sqlgen keeps the SQL's one source of truth honest.
//
// sql/functions/NAME.sql holds the current definition of each function and is
// edited in place. Migrations (sql/migrations/NNN_*.sql, immutable once landed)
// carry function definitions between marker lines:
//
//	-- function: NAME
//	create or replace function durable.NAME(...) ...
//	-- end function: NAME
//
// Generate copies every function file that differs from its latest block in
// the migrations into a new migration, and rewrites sql/install.sql from the
// migrations. Verify reports what Generate would change.
package sqlgen

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// MigrationLock is the advisory lock migrations serialize on: tern's lock
// number, which durable.Migrate takes too.
const MigrationLock = 9628173550095224

// VersionTable is where the installed version is recorded (tern's layout).
const VersionTable = "durable.schema_version"

// GrantFooter ends every migration that sqlgen writes: after the migration
// has created or replaced functions, durable._grant_roles() gives each its
// role (the list is in sql/functions/_grant_roles.sql) and takes EXECUTE away
// from PUBLIC, which every new function starts with.
const GrantFooter = "-- hand-written: privileges (each function's role: sql/functions/_grant_roles.sql)\n" +
	"do $$ begin perform durable._grant_roles(); end $$;\n"

// Migration is one sql/migrations file.
type Migration struct {
	Version int
	File    string // base name, e.g. 001_base.sql
	Text    string
}

// Project is the SQL tree of a checkout.
type Project struct {
	Root       string
	Functions  map[string]string // function name -> file text
	Migrations []Migration       // by version
}

var (
	migrationName = regexp.MustCompile(`^(\d+)_.+\.sql$`)
	blockStart    = regexp.MustCompile(`(?m)^-- function: ([A-Za-z0-9_]+)\n`)
)

// Load reads root/sql/functions and root/sql/migrations.
func Load(root string) (*Project, error) {
	p := &Project{Root: root, Functions: map[string]string{}}
	fnFiles, err := filepath.Glob(filepath.Join(root, "sql", "functions", "*.sql"))
	if err != nil {
		return nil, err
	}
	for _, f := range fnFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		p.Functions[strings.TrimSuffix(filepath.Base(f), ".sql")] = string(b)
	}
	entries, err := os.ReadDir(filepath.Join(root, "sql", "migrations"))
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		m := migrationName.FindStringSubmatch(e.Name())
		if e.IsDir() || m == nil {
			continue
		}
		v, _ := strconv.Atoi(m[1])
		b, err := os.ReadFile(filepath.Join(root, "sql", "migrations", e.Name()))
		if err != nil {
			return nil, err
		}
		p.Migrations = append(p.Migrations, Migration{Version: v, File: e.Name(), Text: string(b)})
	}
	sort.Slice(p.Migrations, func(i, j int) bool { return p.Migrations[i].Version < p.Migrations[j].Version })
	for i, m := range p.Migrations {
		if m.Version != i+1 {
			return nil, fmt.Errorf("sqlgen: migrations must be numbered 1, 2, 3...: found %s at position %d", m.File, i+1)
		}
	}
	return p, nil
}

// Blocks returns the function blocks of a migration's text, by name.
func Blocks(text string) (map[string]string, error) {
	out := map[string]string{}
	for _, loc := range blockStart.FindAllStringSubmatchIndex(text, -1) {
		name := text[loc[2]:loc[3]]
		end := "-- end function: " + name + "\n"
		rest := text[loc[1]:]
		i := strings.Index(rest, end)
		if i < 0 {
			return nil, fmt.Errorf("sqlgen: block of function %s has no %q line", name, strings.TrimSpace(end))
		}
		out[name] = rest[:i]
	}
	return out, nil
}

// latest returns, for each function, its last block and the migration holding it.
func (p *Project) latest() (map[string]string, map[string]string, error) {
	body := map[string]string{}
	where := map[string]string{}
	for _, m := range p.Migrations {
		blocks, err := Blocks(m.Text)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", m.File, err)
		}
		for name, b := range blocks {
			body[name] = b
			where[name] = m.File
		}
	}
	return body, where, nil
}

// Changed lists the functions whose file differs from their latest block in
// the migrations (or that no migration has yet), sorted, with why.
func (p *Project) Changed() ([]string, []string, error) {
	body, where, err := p.latest()
	if err != nil {
		return nil, nil, err
	}
	var names, why []string
	for name, text := range p.Functions {
		b, ok := body[name]
		switch {
		case !ok:
			names = append(names, name)
			why = append(why, fmt.Sprintf("sql/functions/%s.sql is in no migration", name))
		case b != text:
			names = append(names, name)
			why = append(why, fmt.Sprintf("sql/functions/%s.sql differs from its definition in sql/migrations/%s", name, where[name]))
		}
	}
	sort.Strings(names)
	sort.Strings(why)
	return names, why, nil
}

// NextMigration returns the file name and text of the migration that brings
// the changed functions up to date.
func (p *Project) NextMigration(names []string, label string) (string, string) {
	v := len(p.Migrations) + 1
	file := fmt.Sprintf("%03d_%s.sql", v, label)
	var b strings.Builder
	fmt.Fprintf(&b, "-- %03d: generated by `make sql/generate` from sql/functions: the functions\n", v)
	b.WriteString("-- whose files changed. Edit the function files, not this migration.\n\n")
	for _, name := range names {
		writeBlock(&b, name, p.Functions[name])
	}
	b.WriteString(GrantFooter)
	return file, b.String()
}

func writeBlock(b *strings.Builder, name, text string) {
	fmt.Fprintf(b, "-- function: %s\n%s-- end function: %s\n\n", name, text, name)
}

// InstallSQL renders sql/install.sql: every migration, each applied only when
// the recorded version is below it, in one transaction, under the migration
// lock, recording the version where durable.Migrate does. Running it twice
// changes nothing, and it can follow or precede Go migrations.
func (p *Project) InstallSQL() string {
	var b strings.Builder
	b.WriteString(`-- GENERATED by ` + "`make sql/generate`" + ` from sql/migrations/*.sql: do not edit.
--
-- Installs or upgrades the durable schema:
--   psql -v ON_ERROR_STOP=1 -f sql/install.sql "$DATABASE_URL"
-- Running it again changes nothing. It records the schema version in
-- ` + VersionTable + `, where the Go package's durable.Migrate records it, so
-- either way of installing can follow the other.

\set ON_ERROR_STOP on
set client_min_messages = warning;
begin;
do $$ begin perform pg_advisory_xact_lock(` + strconv.Itoa(MigrationLock) + `); end $$;
create schema if not exists durable;
create table if not exists ` + VersionTable + `(version int4 not null);
insert into ` + VersionTable + `(version) select 0 where 0 = (select count(*) from ` + VersionTable + `);
`)
	for _, m := range p.Migrations {
		fmt.Fprintf(&b, "\n-- migration %s\n", m.File)
		fmt.Fprintf(&b, "select version < %d as durable_pending from %s \\gset\n", m.Version, VersionTable)
		b.WriteString("\\if :durable_pending\n")
		b.WriteString(strings.TrimRight(m.Text, "\n"))
		fmt.Fprintf(&b, "\nupdate %s set version = %d;\n\\endif\n", VersionTable, m.Version)
	}
	b.WriteString("\ncommit;\n")
	return b.String()
}

// Verify returns an error listing what Generate would change.
func Verify(root string) error {
	p, err := Load(root)
	if err != nil {
		return err
	}
	_, why, err := p.Changed()
	if err != nil {
		return err
	}
	installPath := filepath.Join(root, "sql", "install.sql")
	current, err := os.ReadFile(installPath)
	if err != nil || !bytes.Equal(current, []byte(p.InstallSQL())) {
		why = append(why, "sql/install.sql is not what the migrations generate")
	}
	if len(why) > 0 {
		return fmt.Errorf("generated SQL is stale (run `make sql/generate`):\n  %s", strings.Join(why, "\n  "))
	}
	return nil
}

// Amend returns the newest migration's text with the changed functions'
// blocks replaced by their files, and blocks added after its last one for
// changed functions it does not hold yet, ending with GrantFooter. Only for
// a migration that has not landed: landed migrations are immutable.
func (p *Project) Amend(names []string) (string, string, error) {
	if len(p.Migrations) == 0 {
		return "", "", fmt.Errorf("sqlgen: no migration to amend")
	}
	last := p.Migrations[len(p.Migrations)-1]
	text := last.Text
	var added strings.Builder
	for _, name := range names {
		start := "-- function: " + name + "\n"
		end := "-- end function: " + name + "\n"
		i := strings.LastIndex(text, start)
		if i < 0 {
			writeBlock(&added, name, p.Functions[name])
			continue
		}
		j := strings.Index(text[i:], end)
		if j < 0 {
			return "", "", fmt.Errorf("sqlgen: %s: block of function %s has no end line", last.File, name)
		}
		text = text[:i+len(start)] + p.Functions[name] + text[i+j:]
	}
	if added.Len() > 0 {
		k := strings.LastIndex(text, "-- end function: ")
		if k < 0 {
			text += "\n" + added.String()
		} else {
			k += strings.Index(text[k:], "\n") + 1
			text = text[:k] + "\n" + strings.TrimRight(added.String(), "\n") + "\n" + text[k:]
		}
	}
	if !strings.Contains(text, GrantFooter) {
		text = strings.TrimRight(text, "\n") + "\n\n" + GrantFooter
	}
	return last.File, text, nil
}

// Generate writes a new migration for changed function files (named
// NNN_<label>.sql), or with amend rewrites the newest migration instead, and
// rewrites sql/install.sql. It returns the paths it wrote.
func Generate(root, label string, amend bool) ([]string, error) {
	p, err := Load(root)
	if err != nil {
		return nil, err
	}
	names, _, err := p.Changed()
	if err != nil {
		return nil, err
	}
	var wrote []string
	if len(names) > 0 {
		file, text := p.NextMigration(names, label)
		if amend {
			if file, text, err = p.Amend(names); err != nil {
				return nil, err
			}
		}
		path := filepath.Join(root, "sql", "migrations", file)
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			return nil, err
		}
		wrote = append(wrote, path)
		if p, err = Load(root); err != nil {
			return nil, err
		}
	}
	installPath := filepath.Join(root, "sql", "install.sql")
	install := []byte(p.InstallSQL())
	if current, err := os.ReadFile(installPath); err != nil || !bytes.Equal(current, install) {
		if err := os.WriteFile(installPath, install, 0o644); err != nil {
			return nil, err
		}
		wrote = append(wrote, installPath)
	}
	return wrote, nil
}
