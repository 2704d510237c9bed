// Command durable works with durable's queues from the command line.
//
//	durable migrate [status]                      install or upgrade the schema; show its version
//	durable queue create|list|drop|stats          manage and watch queues
//	durable spawn QUEUE TASK --params JSON ...    enqueue a task
//	durable task list|show|cancel|retry QUEUE ... inspect and act on tasks
//	durable event emit QUEUE NAME                 emit an event
//	durable demo                                  simulate many instances spawning the same tasks
//	durable version                               print the version
//
// Run "durable <command> --help" for a command's flags. Commands that need a
// database take --database-url, which defaults to $DATABASE_URL, and --json
// for output that scripts can read. Exit status: 0 success, 1 the command
// failed (database unreachable, queue or task not found, refused by the
// schema), 2 usage error (unknown command or flag, bad argument).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"text/tabwriter"
)

// Exit statuses.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// env is what a command may use of its process, so tests can supply their own.
type env struct {
	stdout, stderr io.Writer
	getenv         func(string) string
}

// command is one entry of the dispatch table.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, e *env, args []string) int
}

// commands returns the dispatch table, in the order help lists it.
func commands() []command {
	return []command{
		{"migrate", "install or upgrade the durable schema; 'migrate status' shows its version", runMigrate},
		{"queue", "create, list, drop queues and show their figures (create|list|drop|stats)", runQueue},
		{"spawn", "enqueue a task, with deduplication by key", runSpawn},
		{"task", "list, show, cancel and retry tasks (list|show|cancel|retry)", runTask},
		{"event", "emit an event that waiting tasks wake on (emit)", runEvent},
		{"cleanup", "delete finished tasks and old events, per queue policy or for one queue", runCleanup},
		{"demo", "simulate many instances spawning the same tasks, and count executions", runDemo},
		{"version", "print the version of this command", runVersion},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, &env{stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}, os.Args[1:])
	stop()
	os.Exit(code)
}

// run dispatches args to a command and returns the exit status.
func run(ctx context.Context, e *env, args []string) int {
	if len(args) == 0 {
		usage(e.stderr)
		return exitUsage
	}
	name := args[0]
	switch name {
	case "help", "-h", "-help", "--help":
		if len(args) > 1 {
			if c, ok := lookup(args[1]); ok {
				return c.run(ctx, e, []string{"--help"})
			}
			fmt.Fprintf(e.stderr, "durable: unknown command %q\n\n", args[1])
			usage(e.stderr)
			return exitUsage
		}
		usage(e.stdout)
		return exitOK
	}
	c, ok := lookup(name)
	if !ok {
		fmt.Fprintf(e.stderr, "durable: unknown command %q\n\n", name)
		usage(e.stderr)
		return exitUsage
	}
	return c.run(ctx, e, args[1:])
}

func lookup(name string) (command, bool) {
	for _, c := range commands() {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

func usage(w io.Writer) {
	fmt.Fprint(w, "durable works with durable's PostgreSQL task queues.\n\nUsage: durable <command> [flags]\n\nCommands:\n")
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	for _, c := range commands() {
		fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.summary)
	}
	_ = tw.Flush()
	fmt.Fprint(w, `
Database commands read $DATABASE_URL (--database-url overrides it) and print
tables, or JSON with --json. Exit status: 0 success, 1 the command failed
(database unreachable, queue or task not found, refused by the schema),
2 usage error.

Run 'durable <command> --help' for the flags of a command, with examples.
`)
}

// newFlagSet returns a flag set for command name whose --help prints doc,
// the flags and the example.
func newFlagSet(e *env, name, synopsis, doc, example string) *flag.FlagSet {
	fs := flag.NewFlagSet("durable "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage: durable %s %s\n\n%s\n\nFlags:\n", name, synopsis, strings.TrimSpace(doc))
		fs.PrintDefaults()
		fmt.Fprintf(w, "\nExample:\n%s\n", strings.TrimRight(example, "\n"))
	}
	return fs
}

// parse parses args with fs, which takes no positional arguments. It
// returns the exit status to stop with, and false, on --help (0, help on
// stdout) and on a usage error (2).
func parse(e *env, fs *flag.FlagSet, args []string) (int, bool) {
	_, code, ok := parseArgs(e, fs, args)
	return code, ok
}

// parseArgs parses args with fs, allowing flags before, between and after
// the positional arguments, which must be those named by names (an argument
// after "--" is positional); names in brackets, "[QUEUE]", are optional and
// come last. It returns the positional arguments,
// or the exit status to stop with and false, as parse does.
func parseArgs(e *env, fs *flag.FlagSet, args []string, names ...string) ([]string, int, bool) {
	// --help goes to stdout; errors and their usage to stderr.
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "-h" || a == "-help" || a == "--help" {
			fs.SetOutput(e.stdout)
			fs.Usage()
			return nil, exitOK, false
		}
	}
	// On a parse error the flag package prints the error, then calls Usage:
	// point at --help rather than repeating it all.
	help := fs.Usage
	fs.Usage = func() { fmt.Fprintf(fs.Output(), "Run '%s --help' for usage.\n", fs.Name()) }
	defer func() { fs.Usage = help }()
	var positional []string
	rest := args
	for {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, exitOK, false
			}
			return nil, exitUsage, false
		}
		left := fs.Args()
		if len(left) == 0 {
			break
		}
		if used := len(rest) - len(left); used > 0 && rest[used-1] == "--" {
			positional = append(positional, left...)
			break
		}
		positional = append(positional, left[0])
		rest = left[1:]
	}
	switch {
	case len(positional) > len(names):
		return nil, usageError(e, fs, "unexpected argument %q", positional[len(names)]), false
	}
	var missing []string
	for _, n := range names[len(positional):] {
		if !strings.HasPrefix(n, "[") {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return nil, usageError(e, fs, "missing %s", strings.Join(missing, " and ")), false
	}
	return positional, 0, true
}

// usageError reports a usage error and returns exitUsage.
func usageError(e *env, fs *flag.FlagSet, format string, args ...any) int {
	fmt.Fprintf(e.stderr, "%s: %s\nRun '%s --help' for usage.\n", fs.Name(), fmt.Sprintf(format, args...), fs.Name())
	return exitUsage
}

func runVersion(ctx context.Context, e *env, args []string) int {
	fs := newFlagSet(e, "version", "", "Prints the module version of this command, the Go version it was built with and, when known, its commit.", "  durable version")
	if code, ok := parse(e, fs, args); !ok {
		return code
	}
	fmt.Fprintln(e.stdout, versionString())
	return exitOK
}

// versionString returns "durable <module version> (<go version>[, commit <rev>[, modified]])".
func versionString() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "durable (unknown version)"
	}
	v := info.Main.Version
	if v == "" {
		v = "(devel)"
	}
	details := []string{info.GoVersion}
	var rev string
	var modified bool
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if rev != "" {
		if len(rev) > 12 {
			rev = rev[:12]
		}
		details = append(details, "commit "+rev)
		if modified {
			details = append(details, "modified")
		}
	}
	return fmt.Sprintf("durable %s (%s)", v, strings.Join(details, ", "))
}
