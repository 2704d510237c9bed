package main

import (
	"context"
	"fmt"
	"slices"

	"github.com/durable-go/durable"
)

func runTask(ctx context.Context, e *env, args []string) int {
	return runGroup(ctx, e, "task", "Lists tasks, shows one with its runs and checkpoints, cancels and retries them.", []command{
		{"list", "list a queue's tasks, filtered by state, name or key", runTaskList},
		{"show", "show a task: its runs with failure reasons, its checkpoints", runTaskShow},
		{"cancel", "cancel an unfinished task", runTaskCancel},
		{"retry", "run a failed or cancelled task again", runTaskRetry},
	}, args)
}

var taskStates = []string{"pending", "running", "sleeping", "completed", "failed", "cancelled"}

func runTaskList(ctx context.Context, e *env, args []string) int {
	fs := newFlagSet(e, "task list", "QUEUE [--state S] [--name N] [--key K] [flags]", `
Lists up to --limit tasks of QUEUE matching every filter given
(durable.list_tasks). Pending and sleeping tasks come in the order workers
claim them, running ones by lease expiry (both read only the indexes of live
runs); other listings come in no particular order and read the task table
until they have --limit rows.`,
		`  durable task list emails --state failed
  durable task list emails --state pending --name send-receipt --limit 20
  durable task list emails --key order-42 --json`)
	db := addDBFlags(e, fs)
	state := fs.String("state", "", "only tasks in this state: pending, running, sleeping, completed, failed or cancelled")
	name := fs.String("name", "", "only tasks of this task name")
	key := fs.String("key", "", "only tasks spawned with this idempotency key")
	limit := fs.Int("limit", 100, "the most tasks to list, 1 to 1000")
	pos, code, ok := parseArgs(e, fs, args, "QUEUE")
	if !ok {
		return code
	}
	if *state != "" && !slices.Contains(taskStates, *state) {
		return usageError(e, fs, "unknown --state %q: use one of pending, running, sleeping, completed, failed, cancelled", *state)
	}
	if *limit < 1 || *limit > 1000 {
		return usageError(e, fs, "--limit must be between 1 and 1000, got %d", *limit)
	}
	c, conn, code, ok := db.connect(ctx, e, fs)
	if !ok {
		return code
	}
	defer conn.Close(context.WithoutCancel(ctx))
	tasks, err := c.ListTasks(ctx, pos[0], &durable.ListTasksOptions{
		State: durable.TaskState(*state), TaskName: *name, IdempotencyKey: *key, Limit: *limit,
	})
	if err != nil {
		return failed(e, fs, err)
	}
	if *db.json {
		if tasks == nil {
			tasks = []durable.TaskSummary{}
		}
		return printJSON(e.stdout, tasks)
	}
	rows := make([][]string, len(tasks))
	for i, t := range tasks {
		when := t.AvailableAt
		if t.FinishedAt != nil {
			when = t.FinishedAt
		}
		rows[i] = []string{
			t.TaskID.String(), t.TaskName, string(t.State), fmt.Sprintf("%d/%d", t.Attempts, t.MaxAttempts),
			textOr(t.IdempotencyKey), timeText(&t.EnqueuedAt), timeText(when),
		}
	}
	printTable(e.stdout, []string{"TASK ID", "NAME", "STATE", "ATTEMPTS", "KEY", "ENQUEUED", "AVAILABLE/FINISHED"}, rows)
	return exitOK
}

func runTaskShow(ctx context.Context, e *env, args []string) int {
	fs := newFlagSet(e, "task show", "QUEUE TASK_ID [flags]", `
Shows the task TASK_ID of QUEUE: its state, params, result or failure
reason, every run (attempt) with its worker, times and failure reason, and
its checkpoints (durable.get_task).`,
		`  durable task show emails 5c0f3a2e-8d5b-4f7e-9a61-0b7d2f3c4e51
  durable task show emails 5c0f3a2e-8d5b-4f7e-9a61-0b7d2f3c4e51 --json`)
	db := addDBFlags(e, fs)
	pos, code, ok := parseArgs(e, fs, args, "QUEUE", "TASK_ID")
	if !ok {
		return code
	}
	id, code, ok := uuidArg(e, fs, "TASK_ID", pos[1])
	if !ok {
		return code
	}
	c, conn, code, ok := db.connect(ctx, e, fs)
	if !ok {
		return code
	}
	defer conn.Close(context.WithoutCancel(ctx))
	t, err := c.GetTask(ctx, pos[0], id)
	if err != nil {
		return failed(e, fs, err)
	}
	if *db.json {
		return printJSON(e.stdout, t)
	}
	parent := "-"
	if t.ParentTaskID != nil {
		parent = t.ParentTaskID.String()
	}
	key := textOr(t.IdempotencyKey)
	if t.IdempotencyKey != nil && t.KeyHeld {
		key += " (held)"
	}
	printFields(e.stdout, [][2]string{
		{"task", t.TaskID.String()},
		{"name", t.TaskName},
		{"state", string(t.State)},
		{"attempts", fmt.Sprintf("%d of %d", t.Attempts, t.MaxAttempts)},
		{"key", key},
		{"params", jsonText(t.Params)},
		{"headers", jsonText(t.Headers)},
		{"result", jsonText(t.Result)},
		{"failure", jsonText(t.FailureReason)},
		{"parent", parent},
		{"enqueued", timeText(&t.EnqueuedAt)},
		{"first started", timeText(t.FirstStartedAt)},
		{"finished", timeText(t.FinishedAt)},
	})
	fmt.Fprintf(e.stdout, "\nruns (%d):\n", len(t.Runs))
	rows := make([][]string, len(t.Runs))
	for i, r := range t.Runs {
		rows[i] = []string{fmt.Sprint(r.Attempt), r.RunID.String(), string(r.State), textOr(r.ClaimedBy),
			timeText(&r.AvailableAt), timeText(r.StartedAt), timeText(r.FinishedAt), reasonText(r.FailureReason)}
	}
	printTable(e.stdout, []string{"  ATTEMPT", "RUN ID", "STATE", "WORKER", "AVAILABLE", "STARTED", "FINISHED", "FAILURE"}, indent(rows))
	fmt.Fprintf(e.stdout, "\ncheckpoints (%d):\n", len(t.Checkpoints))
	if len(t.Checkpoints) > 0 {
		rows = make([][]string, len(t.Checkpoints))
		for i, cp := range t.Checkpoints {
			rows[i] = []string{cp.StepName, fmt.Sprint(cp.Attempt), timeText(&cp.UpdatedAt), jsonText(cp.State)}
		}
		printTable(e.stdout, []string{"  STEP", "ATTEMPT", "UPDATED", "STATE"}, indent(rows))
	}
	return exitOK
}

// indent shifts a table's rows right by two spaces, under its header's.
func indent(rows [][]string) [][]string {
	for _, r := range rows {
		r[0] = "  " + r[0]
	}
	return rows
}

func runTaskCancel(ctx context.Context, e *env, args []string) int {
	fs := newFlagSet(e, "task cancel", "QUEUE TASK_ID [flags]", `
Cancels the task TASK_ID of QUEUE if it has not finished (durable.cancel_task),
with its children; a worker running it learns of it at its next heartbeat.
Prints the task's state afterwards: cancelled, or the final state it already
had. --json prints {"task_id", "state"}.`,
		"  durable task cancel emails 5c0f3a2e-8d5b-4f7e-9a61-0b7d2f3c4e51")
	db := addDBFlags(e, fs)
	pos, code, ok := parseArgs(e, fs, args, "QUEUE", "TASK_ID")
	if !ok {
		return code
	}
	id, code, ok := uuidArg(e, fs, "TASK_ID", pos[1])
	if !ok {
		return code
	}
	c, conn, code, ok := db.connect(ctx, e, fs)
	if !ok {
		return code
	}
	defer conn.Close(context.WithoutCancel(ctx))
	state, err := c.CancelTask(ctx, pos[0], id)
	if err != nil {
		return failed(e, fs, err)
	}
	if *db.json {
		return printJSON(e.stdout, map[string]any{"task_id": id, "state": state})
	}
	if state == durable.StateCancelled {
		fmt.Fprintf(e.stdout, "task %s is cancelled\n", id)
	} else {
		fmt.Fprintf(e.stdout, "task %s had already finished: %s\n", id, state)
	}
	return exitOK
}

func runTaskRetry(ctx context.Context, e *env, args []string) int {
	fs := newFlagSet(e, "task retry", "QUEUE TASK_ID [--spawn-new] [--max-attempts N] [flags]", `
Runs the failed or cancelled task TASK_ID of QUEUE again (durable.retry_task):
in place by default (a new attempt that keeps its checkpoints, so finished
steps do not run again, and takes its key again), or with --spawn-new as a new
task. Prints the result as spawn does; --json prints {"task_id", "run_id",
"attempt", "created", "state"}.`,
		`  durable task retry emails 5c0f3a2e-8d5b-4f7e-9a61-0b7d2f3c4e51
  durable task retry emails 5c0f3a2e-8d5b-4f7e-9a61-0b7d2f3c4e51 --spawn-new --json`)
	db := addDBFlags(e, fs)
	spawnNew := fs.Bool("spawn-new", false, "spawn a new task with the same name, params, key and options")
	maxAttempts := fs.Int("max-attempts", 0, "the task's new max_attempts (0: one more attempt when they are used up)")
	pos, code, ok := parseArgs(e, fs, args, "QUEUE", "TASK_ID")
	if !ok {
		return code
	}
	id, code, ok := uuidArg(e, fs, "TASK_ID", pos[1])
	if !ok {
		return code
	}
	if *maxAttempts < 0 {
		return usageError(e, fs, "--max-attempts must be at least 1, got %d", *maxAttempts)
	}
	c, conn, code, ok := db.connect(ctx, e, fs)
	if !ok {
		return code
	}
	defer conn.Close(context.WithoutCancel(ctx))
	r, err := c.RetryTask(ctx, pos[0], id, &durable.RetryOptions{SpawnNew: *spawnNew, MaxAttempts: *maxAttempts})
	if err != nil {
		return failed(e, fs, err)
	}
	if *db.json {
		return printSpawn(e, true, r)
	}
	switch {
	case !*spawnNew:
		fmt.Fprintf(e.stdout, "task %s retried in place\n", r.TaskID)
		printFields(e.stdout, [][2]string{{"  run", r.RunID.String()}, {"  attempt", fmt.Sprint(r.Attempt)}, {"  state", string(r.State)}})
		return exitOK
	default:
		return printSpawn(e, false, r)
	}
}
