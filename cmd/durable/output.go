package main

// What the database commands share: the --database-url and --json flags,
// the connection, subcommand groups, aligned tables, JSON, and turning errors
// into messages and exit statuses.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/durable-go/durable"
)

// dbFlags are the flags of every command that works on a database.
type dbFlags struct {
	databaseURL *string
	json        *bool
}

// addDBFlags adds --database-url (default $DATABASE_URL) and --json to fs.
func addDBFlags(e *env, fs *flag.FlagSet) *dbFlags {
	return &dbFlags{
		databaseURL: fs.String("database-url", e.getenv("DATABASE_URL"), "database to work on (defaults to $DATABASE_URL)"),
		json:        fs.Bool("json", false, "print JSON instead of a table, for scripts"),
	}
}

// connect opens a connection to the database and a client on it. It returns
// the exit status to stop with, and false, when there is no database (2) or
// it cannot be reached (1). The caller closes the connection.
func (f *dbFlags) connect(ctx context.Context, e *env, fs *flag.FlagSet) (*durable.Client, *pgx.Conn, int, bool) {
	if *f.databaseURL == "" {
		return nil, nil, usageError(e, fs, "no database: pass --database-url or set DATABASE_URL"), false
	}
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, *f.databaseURL)
	if err != nil {
		fmt.Fprintf(e.stderr, "%s: cannot connect to the database: %v\n", fs.Name(), err)
		return nil, nil, exitError, false
	}
	c, err := durable.New(conn, nil)
	if err != nil {
		_ = conn.Close(context.WithoutCancel(ctx))
		fmt.Fprintf(e.stderr, "%s: %v\n", fs.Name(), err)
		return nil, nil, exitError, false
	}
	return c, conn, 0, true
}

// failed reports err, an error of the command named by fs, on stderr and
// returns exitError. A durable error prints its message, code and hint; a
// database without the schema says to run durable migrate.
func failed(e *env, fs *flag.FlagSet, err error) int {
	var de *durable.Error
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &de):
		fmt.Fprintf(e.stderr, "%s: %s (%s)\n", fs.Name(), de.Message, de.Code)
		if de.Hint != "" {
			fmt.Fprintf(e.stderr, "hint: %s\n", de.Hint)
		}
	case errors.As(err, &pe) && (pe.Code == "3F000" || pe.Code == "42883" || pe.Code == "42P01"):
		// invalid_schema_name, undefined_function, undefined_table
		fmt.Fprintf(e.stderr, "%s: %s (%s)\nhint: the durable schema is missing or older than this command: run 'durable migrate'\n",
			fs.Name(), pe.Message, pe.Code)
	default:
		fmt.Fprintf(e.stderr, "%s: %v\n", fs.Name(), err)
	}
	return exitError
}

// runGroup dispatches args to one of a group's subcommands, as run does for
// commands.
func runGroup(ctx context.Context, e *env, group, doc string, subs []command, args []string) int {
	usage := func(w io.Writer) {
		fmt.Fprintf(w, "Usage: durable %s <subcommand> [flags]\n\n%s\n\nSubcommands:\n", group, strings.TrimSpace(doc))
		tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
		for _, c := range subs {
			fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.summary)
		}
		_ = tw.Flush()
		fmt.Fprintf(w, "\nRun 'durable %s <subcommand> --help' for its flags and an example.\n", group)
	}
	if len(args) == 0 {
		fmt.Fprintf(e.stderr, "durable %s: missing subcommand\n\n", group)
		usage(e.stderr)
		return exitUsage
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		usage(e.stdout)
		return exitOK
	}
	for _, c := range subs {
		if c.name == args[0] {
			return c.run(ctx, e, args[1:])
		}
	}
	fmt.Fprintf(e.stderr, "durable %s: unknown subcommand %q\n\n", group, args[0])
	usage(e.stderr)
	return exitUsage
}

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) int {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintf(w, "cannot encode JSON: %v\n", err)
		return exitError
	}
	return exitOK
}

// printTable writes rows under header as columns aligned with spaces.
func printTable(w io.Writer, header []string, rows [][]string) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	_ = tw.Flush()
}

// printFields writes label/value pairs as two aligned columns.
func printFields(w io.Writer, fields [][2]string) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, f := range fields {
		fmt.Fprintf(tw, "%s\t%s\n", f[0], f[1])
	}
	_ = tw.Flush()
}

// timeText formats t in UTC to the second, "-" for none.
func timeText(t *time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

// textOr is s, or "-" when it is nil or empty.
func textOr(s *string) string {
	if s == nil || *s == "" {
		return "-"
	}
	return *s
}

// jsonText is the JSON as one line, "-" for none or null.
func jsonText(b json.RawMessage) string {
	if len(b) == 0 || string(b) == "null" {
		return "-"
	}
	return string(b)
}

// reasonText is a failure reason for a table cell: "name: message" when it
// has them, else its JSON.
func reasonText(b json.RawMessage) string {
	var r struct {
		Name    string `json:"name"`
		Message string `json:"message"`
	}
	if json.Unmarshal(b, &r) == nil && r.Name != "" {
		if r.Message == "" {
			return r.Name
		}
		return r.Name + ": " + r.Message
	}
	return jsonText(b)
}

// jsonArg checks that the value of flag name is valid JSON, returning the
// usage error's status and false when it is not.
func jsonArg(e *env, fs *flag.FlagSet, name, value string) (json.RawMessage, int, bool) {
	if !json.Valid([]byte(value)) {
		var v any
		err := json.Unmarshal([]byte(value), &v)
		return nil, usageError(e, fs, "--%s is not valid JSON: %v", name, err), false
	}
	return json.RawMessage(value), 0, true
}

// uuidArg parses a task id argument.
func uuidArg(e *env, fs *flag.FlagSet, what, value string) (durable.UUID, int, bool) {
	id, err := durable.ParseUUID(value)
	if err != nil {
		return id, usageError(e, fs, "%s %q is not a UUID", what, value), false
	}
	return id, 0, true
}

// spawnOutput is the JSON of a spawn or retry.
type spawnOutput struct {
	TaskID  durable.UUID      `json:"task_id"`
	RunID   durable.UUID      `json:"run_id"`
	Attempt int               `json:"attempt"`
	Created bool              `json:"created"`
	State   durable.TaskState `json:"state"`
}

// printSpawn prints a spawn's (or retry's) result.
func printSpawn(e *env, asJSON bool, r *durable.SpawnResult) int {
	if asJSON {
		return printJSON(e.stdout, spawnOutput{TaskID: r.TaskID, RunID: r.RunID, Attempt: r.Attempt, Created: r.Created, State: r.State})
	}
	if r.Created {
		fmt.Fprintf(e.stdout, "created task %s\n", r.TaskID)
	} else {
		fmt.Fprintf(e.stdout, "deduplicated: task %s already holds the key\n", r.TaskID)
	}
	printFields(e.stdout, [][2]string{
		{"  run", r.RunID.String()},
		{"  attempt", fmt.Sprint(r.Attempt)},
		{"  state", string(r.State)},
	})
	return exitOK
}
