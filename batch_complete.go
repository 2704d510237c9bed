package durable

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// runCompletion is one run for completeRuns: its id and its result, already
// JSON (checked by encodeJSON).
type runCompletion struct {
	runID  UUID
	result []byte
}

// runCompleted is one row of durable.complete_runs: whether the run was
// completed, and if not, the code complete_run would have raised for it, or
// codeRunLocked.
type runCompleted struct {
	RunID     UUID
	Completed bool
	Code      string
}

// codeRunLocked is the code complete_runs gives a run that another
// transaction held locked (lock_not_available): complete_run, which waits for
// the lock, settles it.
const codeRunLocked = "55P03"

// completeRuns completes runs through durable.complete_runs and returns one
// row per run, in the order of runs. The queue name is the caller's to check.
func (c *Client) completeRuns(ctx context.Context, queue string, runs []runCompletion) ([]runCompleted, error) {
	var b bytes.Buffer
	b.Grow(len(runs) * 64)
	b.WriteByte('[')
	for i, r := range runs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"run_id":"`)
		b.WriteString(r.runID.String())
		b.WriteString(`","result":`)
		b.Write(r.result)
		b.WriteByte('}')
	}
	b.WriteByte(']')
	rows, err := c.db.Query(ctx,
		"select run_id, completed, coalesce(error_code, '') from durable.complete_runs($1, $2::jsonb)",
		queue, json.RawMessage(b.Bytes()))
	if err != nil {
		return nil, mapError(err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (runCompleted, error) {
		var r runCompleted
		err := row.Scan(&r.RunID, &r.Completed, &r.Code)
		return r, err
	})
	if err != nil {
		return nil, mapError(err)
	}
	if len(out) != len(runs) {
		return nil, fmt.Errorf("durable: complete_runs returned %d rows for %d runs", len(out), len(runs))
	}
	return out, nil
}

// notCompletedError is the error complete_run would have returned for a run
// that complete_runs reported with code: it matches the code's sentinels.
func notCompletedError(queue string, runID UUID, code string) error {
	switch code {
	case "QD010":
		return clientError(code, "cannot complete run %s: no such run in queue %q", runID, queue)
	case "QD011":
		return clientError(code, "cannot complete run %s: the run is not running", runID)
	case "QD012":
		return clientError(code, "cannot complete run %s: its lease expired", runID)
	case "QD013":
		return clientError(code, "cannot complete run %s: its task was cancelled", runID)
	}
	return fmt.Errorf("durable: complete_runs did not complete run %s: code %s", runID, code)
}
