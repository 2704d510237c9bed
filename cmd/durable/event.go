package main

import (
	"context"
	"fmt"
)

func runEvent(ctx context.Context, e *env, args []string) int {
	return runGroup(ctx, e, "event", "Emits events that durable tasks wait for (Task.AwaitEvent, durable.await_event).", []command{
		{"emit", "record an event and wake the tasks waiting for it", runEventEmit},
	}, args)
}

func runEventEmit(ctx context.Context, e *env, args []string) int {
	fs := newFlagSet(e, "event emit", "QUEUE NAME [--payload JSON] [flags]", `
Records the event NAME of QUEUE with the payload JSON and wakes every task
waiting for it (durable.emit_event). The first emit of a name wins; a later
one changes nothing and says so. --json prints {"event_name", "emitted"}.`,
		`  durable event emit shop packed:order-42 --payload '{"boxes": 2}'`)
	db := addDBFlags(e, fs)
	payload := fs.String("payload", "null", "the event's payload, as JSON")
	pos, code, ok := parseArgs(e, fs, args, "QUEUE", "NAME")
	if !ok {
		return code
	}
	p, code, ok := jsonArg(e, fs, "payload", *payload)
	if !ok {
		return code
	}
	c, conn, code, ok := db.connect(ctx, e, fs)
	if !ok {
		return code
	}
	defer conn.Close(context.WithoutCancel(ctx))
	stored, err := c.EmitEvent(ctx, pos[0], pos[1], p)
	if err != nil {
		return failed(e, fs, err)
	}
	if *db.json {
		return printJSON(e.stdout, map[string]any{"event_name": pos[1], "emitted": stored})
	}
	if stored {
		fmt.Fprintf(e.stdout, "event %s emitted; tasks waiting for it are woken\n", pos[1])
	} else {
		fmt.Fprintf(e.stdout, "event %s was emitted before; nothing changed (the first emit wins)\n", pos[1])
	}
	return exitOK
}
