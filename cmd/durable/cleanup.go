package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"time"

	"github.com/durable-go/durable"
)

// cleanupRow is what one cleanup did to one queue, as --json prints it.
type cleanupRow struct {
	Queue           string `json:"queue"`
	TaskTTLSeconds  *int   `json:"task_ttl_seconds"`
	EventTTLSeconds *int   `json:"event_ttl_seconds"`
	TasksDeleted    int    `json:"tasks_deleted"`
	EventsDeleted   int    `json:"events_deleted"`
}

func runCleanup(ctx context.Context, e *env, args []string) int {
	fs := newFlagSet(e, "cleanup", "[flags]", `
Deletes finished tasks (with their runs, checkpoints and waits) and old events,
in batches of at most --limit per queue and kind. Never a live task, a task
whose key is still retained, or one a live task still waits for.

Without --queue it applies every queue's retention policy
(durable.set_queue_retention) through durable.cleanup_all. With --queue it
cleans that queue with the ttls given (at least one of --task-ttl and
--event-ttl). One batch per queue and kind, unless --until-done repeats while a
batch came back full. Schedule it (cron), or use pg_cron with
durable.cleanup_all() instead.`,
		"  durable cleanup                                        # every queue's policy, one batch\n"+
			"  durable cleanup --queue emails --task-ttl 168h --event-ttl 24h --until-done --json")
	db := addDBFlags(e, fs)
	queue := fs.String("queue", "", "clean only this queue, with --task-ttl/--event-ttl (default: every queue's policy)")
	taskTTL := fs.Duration("task-ttl", 0, "with --queue: delete tasks that finished longer ago than this, e.g. 168h")
	eventTTL := fs.Duration("event-ttl", 0, "with --queue: delete events emitted longer ago than this, e.g. 24h")
	limit := fs.Int("limit", durable.DefaultCleanupLimit, "most tasks and events deleted per queue and kind in one batch (1 to 10000)")
	untilDone := fs.Bool("until-done", false, "repeat batches until one comes back below --limit")
	if code, ok := parse(e, fs, args); !ok {
		return code
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	switch {
	case *limit < 1: // zero would mean the default to the client; the schema checks the rest
		return usageError(e, fs, "--limit must be at least 1, got %d", *limit)
	case *taskTTL < 0 || *eventTTL < 0:
		return usageError(e, fs, "a ttl must not be negative")
	case *queue == "" && (set["task-ttl"] || set["event-ttl"]):
		return usageError(e, fs, "--task-ttl and --event-ttl need --queue (without it, each queue's policy applies)")
	case *queue != "" && !set["task-ttl"] && !set["event-ttl"]:
		return usageError(e, fs, "--queue needs --task-ttl, --event-ttl or both")
	}

	client, conn, code, ok := db.connect(ctx, e, fs)
	if !ok {
		return code
	}
	defer conn.Close(context.WithoutCancel(ctx))

	// totals sums the rounds per queue; batch runs one round and reports
	// whether any batch came back full.
	totals := map[string]*cleanupRow{}
	var order []string
	add := func(r cleanupRow) {
		t, ok := totals[r.Queue]
		if !ok {
			t = &cleanupRow{Queue: r.Queue, TaskTTLSeconds: r.TaskTTLSeconds, EventTTLSeconds: r.EventTTLSeconds}
			totals[r.Queue] = t
			order = append(order, r.Queue)
		}
		t.TasksDeleted += r.TasksDeleted
		t.EventsDeleted += r.EventsDeleted
	}
	batch := func() (bool, error) {
		if *queue == "" {
			results, err := client.CleanupAll(ctx, *limit)
			if err != nil {
				return false, err
			}
			full := false
			for _, r := range results {
				add(cleanupRow{Queue: r.Queue, TaskTTLSeconds: ttlSeconds(r.Policy.TaskTTL), EventTTLSeconds: ttlSeconds(r.Policy.EventTTL),
					TasksDeleted: r.TasksDeleted, EventsDeleted: r.EventsDeleted})
				full = full || r.TasksDeleted == *limit || r.EventsDeleted == *limit
			}
			return full, nil
		}
		r := cleanupRow{Queue: *queue}
		var err error
		if set["task-ttl"] {
			r.TaskTTLSeconds = ceilSeconds(*taskTTL)
			if r.TasksDeleted, err = client.CleanupTasks(ctx, *queue, *taskTTL, *limit); err != nil {
				return false, err
			}
		}
		if set["event-ttl"] {
			r.EventTTLSeconds = ceilSeconds(*eventTTL)
			if r.EventsDeleted, err = client.CleanupEvents(ctx, *queue, *eventTTL, *limit); err != nil {
				return false, err
			}
		}
		add(r)
		return r.TasksDeleted == *limit || r.EventsDeleted == *limit, nil
	}
	for {
		full, err := batch()
		if err != nil {
			return failed(e, fs, err)
		}
		if !full || !*untilDone {
			break
		}
	}

	rows := make([]cleanupRow, 0, len(order))
	var tasks, events int
	for _, q := range order {
		rows = append(rows, *totals[q])
		tasks += totals[q].TasksDeleted
		events += totals[q].EventsDeleted
	}
	if *db.json {
		return printJSON(e.stdout, map[string]any{"queues": rows, "tasks_deleted": tasks, "events_deleted": events})
	}
	if len(rows) == 0 {
		fmt.Fprintln(e.stdout, "no queue has a retention policy: nothing to clean (see durable.set_queue_retention)")
		return exitOK
	}
	table := make([][]string, len(rows))
	for i, r := range rows {
		table[i] = []string{r.Queue, ttlText(r.TaskTTLSeconds), ttlText(r.EventTTLSeconds),
			strconv.Itoa(r.TasksDeleted), strconv.Itoa(r.EventsDeleted)}
	}
	printTable(e.stdout, []string{"queue", "task ttl", "event ttl", "tasks deleted", "events deleted"}, table)
	fmt.Fprintf(e.stdout, "deleted %d tasks and %d events\n", tasks, events)
	return exitOK
}

// ceilSeconds is d in whole seconds, rounded up, as the client sends it.
func ceilSeconds(d time.Duration) *int {
	s := int((d + time.Second - 1) / time.Second)
	return &s
}

// ttlSeconds is a policy's ttl in seconds, nil for none (zero).
func ttlSeconds(d time.Duration) *int {
	if d == 0 {
		return nil
	}
	return ceilSeconds(d)
}

func ttlText(s *int) string {
	if s == nil {
		return "-"
	}
	return (time.Duration(*s) * time.Second).String()
}
