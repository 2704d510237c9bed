package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/durable-go/durable"
)

func runQueue(ctx context.Context, e *env, args []string) int {
	return runGroup(ctx, e, "queue", "Creates, lists and drops queues, and shows their figures.", []command{
		{"create", "create a queue (does nothing when it exists)", runQueueCreate},
		{"list", "list the queues", runQueueList},
		{"drop", "drop a queue with all its tasks (needs --yes)", runQueueDrop},
		{"stats", "counts by state, tasks ready now, oldest ready age, keys held", runQueueStats},
	}, args)
}

func runQueueCreate(ctx context.Context, e *env, args []string) int {
	fs := newFlagSet(e, "queue create", "QUEUE [flags]", `
Creates the queue QUEUE, or brings its tables up to date when it exists
(durable.create_queue). A queue name is 1 to 48 ASCII letters, digits, '_'
and '-', starting with a letter.`, "  durable queue create emails")
	db := addDBFlags(e, fs)
	pos, code, ok := parseArgs(e, fs, args, "QUEUE")
	if !ok {
		return code
	}
	c, conn, code, ok := db.connect(ctx, e, fs)
	if !ok {
		return code
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := c.CreateQueue(ctx, pos[0]); err != nil {
		return failed(e, fs, err)
	}
	if *db.json {
		return printJSON(e.stdout, map[string]string{"queue_name": pos[0]})
	}
	fmt.Fprintf(e.stdout, "queue %s is ready\n", pos[0])
	return exitOK
}

func runQueueList(ctx context.Context, e *env, args []string) int {
	fs := newFlagSet(e, "queue list", "[flags]", `
Lists the queues by name (durable.list_queues).`, "  durable queue list\n  durable queue list --json")
	db := addDBFlags(e, fs)
	if code, ok := parse(e, fs, args); !ok {
		return code
	}
	c, conn, code, ok := db.connect(ctx, e, fs)
	if !ok {
		return code
	}
	defer conn.Close(context.WithoutCancel(ctx))
	names, err := c.ListQueues(ctx)
	if err != nil {
		return failed(e, fs, err)
	}
	if *db.json {
		if names == nil {
			names = []string{}
		}
		return printJSON(e.stdout, names)
	}
	rows := make([][]string, len(names))
	for i, n := range names {
		rows[i] = []string{n}
	}
	printTable(e.stdout, []string{"QUEUE"}, rows)
	return exitOK
}

func runQueueDrop(ctx context.Context, e *env, args []string) int {
	fs := newFlagSet(e, "queue drop", "QUEUE --yes [flags]", `
Drops the queue QUEUE with all its tasks, runs, checkpoints and events
(durable.drop_queue). This cannot be undone, so it needs --yes.`, "  durable queue drop emails --yes")
	db := addDBFlags(e, fs)
	yes := fs.Bool("yes", false, "really drop the queue and every task in it")
	pos, code, ok := parseArgs(e, fs, args, "QUEUE")
	if !ok {
		return code
	}
	if !*yes {
		return usageError(e, fs, "dropping queue %q deletes all its tasks: add --yes to confirm", pos[0])
	}
	c, conn, code, ok := db.connect(ctx, e, fs)
	if !ok {
		return code
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := c.DropQueue(ctx, pos[0]); err != nil {
		return failed(e, fs, err)
	}
	if *db.json {
		return printJSON(e.stdout, map[string]any{"queue_name": pos[0], "dropped": true})
	}
	fmt.Fprintf(e.stdout, "queue %s dropped\n", pos[0])
	return exitOK
}

// statsOutput is the JSON of one queue's figures.
type statsOutput struct {
	*durable.QueueStats
	OldestReadyAgeSeconds float64 `json:"oldest_ready_age_seconds"`
}

func runQueueStats(ctx context.Context, e *env, args []string) int {
	fs := newFlagSet(e, "queue stats", "[QUEUE] [flags]", `
Shows a queue's figures (durable.queue_stats), or every queue's when QUEUE is
left out: tasks pending, running and sleeping (exact), completed, failed and
cancelled (exact on small queues; on large ones estimated from the database's
statistics and shown with '~'), runs ready now, runs scheduled for later, how
long the oldest ready run has waited, and idempotency keys held. It reads only
the indexes of live work, so it is cheap enough to poll every second.
--json prints an object for one queue, an array for all.`, "  durable queue stats emails\n  durable queue stats --json")
	db := addDBFlags(e, fs)
	pos, code, ok := parseArgs(e, fs, args, "[QUEUE]")
	if !ok {
		return code
	}
	c, conn, code, ok := db.connect(ctx, e, fs)
	if !ok {
		return code
	}
	defer conn.Close(context.WithoutCancel(ctx))
	queues := pos
	if len(pos) == 0 {
		names, err := c.ListQueues(ctx)
		if err != nil {
			return failed(e, fs, err)
		}
		queues = names
	}
	var all []statsOutput
	for _, q := range queues {
		s, err := c.QueueStats(ctx, q)
		if err != nil {
			return failed(e, fs, err)
		}
		all = append(all, statsOutput{QueueStats: s, OldestReadyAgeSeconds: s.OldestReadyAge.Seconds()})
	}
	if *db.json {
		if len(pos) == 1 {
			return printJSON(e.stdout, all[0])
		}
		if all == nil {
			all = []statsOutput{}
		}
		return printJSON(e.stdout, all)
	}
	rows := make([][]string, len(all))
	for i, s := range all {
		terminal := func(n *int64) string {
			if n == nil {
				return "?"
			}
			if s.TerminalCounts != "exact" {
				return "~" + strconv.FormatInt(*n, 10)
			}
			return strconv.FormatInt(*n, 10)
		}
		rows[i] = []string{
			s.Queue, fmt.Sprint(s.Pending), fmt.Sprint(s.Running), fmt.Sprint(s.Sleeping),
			terminal(s.Completed), terminal(s.Failed), terminal(s.Cancelled),
			fmt.Sprint(s.ReadyNow), fmt.Sprint(s.Scheduled), s.OldestReadyAge.Round(time.Millisecond).String(),
			fmt.Sprint(s.KeysHeld),
		}
	}
	printTable(e.stdout, []string{"QUEUE", "PENDING", "RUNNING", "SLEEPING", "COMPLETED", "FAILED", "CANCELLED",
		"READY", "SCHEDULED", "OLDEST READY", "KEYS HELD"}, rows)
	return exitOK
}
