package durable

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/jackc/pgx/v5/pgconn"
)

// Sentinel errors, one per SQLSTATE that the durable schema raises. Match them
// with errors.Is; errors.As with *Error gives the server's message and hint.
var (
	// ErrInvalidQueueName (QD001): a queue name is 1 to 48 ASCII letters,
	// digits, '_' or '-', starting with a letter.
	ErrInvalidQueueName = errors.New("durable: invalid queue name")
	// ErrQueueNotFound (QD002): the queue was never created, or was dropped.
	ErrQueueNotFound = errors.New("durable: queue not found")
	// ErrInvalidTaskName (QD003): the task name is empty.
	ErrInvalidTaskName = errors.New("durable: invalid task name")
	// ErrInvalidIdempotencyKey (QD004): the key is empty, or (checked before
	// any round trip) not valid UTF-8 or contains a NUL byte.
	ErrInvalidIdempotencyKey = errors.New("durable: invalid idempotency key")
	// ErrInvalidOptions (QD005): an unknown spawn option, or one of the wrong
	// type or range.
	ErrInvalidOptions = errors.New("durable: invalid spawn options")
	// ErrInvalidArgument (QD006): another argument out of range, such as an
	// empty worker id or a claim timeout below one second.
	ErrInvalidArgument = errors.New("durable: invalid argument")
	// ErrInvalidEventName (QD007): an event name is empty or starts with '$'.
	ErrInvalidEventName = errors.New("durable: invalid event name")
	// ErrRunNotFound (QD010): no run with that id in the queue.
	ErrRunNotFound = errors.New("durable: run not found")
	// ErrRunNotRunning (QD011): the run already ended or has not started, so
	// it cannot be completed, failed or extended. ErrLeaseLost and
	// ErrTaskCancelled match it too.
	ErrRunNotRunning = errors.New("durable: run is not running")
	// ErrLeaseLost (QD012): the run's lease expired; another claim retries the
	// task. errors.Is(err, ErrRunNotRunning) is true as well.
	ErrLeaseLost = errors.New("durable: lease lost")
	// ErrTaskCancelled (QD013): the run's task was cancelled.
	// errors.Is(err, ErrRunNotRunning) is true as well.
	ErrTaskCancelled = errors.New("durable: task cancelled")
	// ErrKeyHeld (QD014): an in-place retry would revive a task whose
	// idempotency key a newer live task holds; the message names the holder.
	ErrKeyHeld = errors.New("durable: idempotency key held by another task")
	// ErrTaskNotRetryable (QD015): only failed or cancelled tasks can be
	// retried.
	ErrTaskNotRetryable = errors.New("durable: task not retryable")
	// ErrParentFinished (QD016): a child spawned (or retried) under a parent
	// that failed or was cancelled.
	ErrParentFinished = errors.New("durable: parent task finished")
	// ErrTaskNotFound (QD020): no task with that id in the queue.
	ErrTaskNotFound = errors.New("durable: task not found")
	// ErrRolesMissing (QD040): installing the schema needs the roles
	// durable_producer, durable_worker and durable_admin (and their
	// memberships), and the installing role may not create them. The hint
	// gives the statements for a role with CREATEROLE to run once.
	ErrRolesMissing = errors.New("durable: roles missing")
	// ErrFunctionWithoutRole (QD041): a public function of the schema has no
	// role in durable._grant_roles (sql/functions/_grant_roles.sql), or the
	// list names a function that does not exist. A development error: the
	// migration adding the function must give it a role.
	ErrFunctionWithoutRole = errors.New("durable: function without a role")
)

// sqlStates maps each SQLSTATE of the durable schema to its sentinels, most
// specific first. It is the one place where codes and Go errors meet.
var sqlStates = map[string][]error{
	"QD001": {ErrInvalidQueueName},
	"QD002": {ErrQueueNotFound},
	"QD003": {ErrInvalidTaskName},
	"QD004": {ErrInvalidIdempotencyKey},
	"QD005": {ErrInvalidOptions},
	"QD006": {ErrInvalidArgument},
	"QD007": {ErrInvalidEventName},
	"QD010": {ErrRunNotFound},
	"QD011": {ErrRunNotRunning},
	"QD012": {ErrLeaseLost, ErrRunNotRunning},
	"QD013": {ErrTaskCancelled, ErrRunNotRunning},
	"QD014": {ErrKeyHeld},
	"QD015": {ErrTaskNotRetryable},
	"QD016": {ErrParentFinished},
	"QD020": {ErrTaskNotFound},
	"QD040": {ErrRolesMissing},
	"QD041": {ErrFunctionWithoutRole},
}

// Error is an error raised by the durable schema (or refused by the client
// before a round trip). It matches its sentinels with errors.Is and unwraps to
// the *pgconn.PgError when the server raised it.
type Error struct {
	// Code is the SQLSTATE, e.g. "QD002".
	Code string
	// Message names what was wrong, e.g. "queue 'emails' does not exist".
	Message string
	// Hint says what to do about it, when the server gave one.
	Hint string

	sentinels []error
	pgErr     *pgconn.PgError
}

// Error implements error.
func (e *Error) Error() string {
	if e.Hint != "" {
		return fmt.Sprintf("durable: %s (%s; hint: %s)", e.Message, e.Code, e.Hint)
	}
	return fmt.Sprintf("durable: %s (%s)", e.Message, e.Code)
}

// Is reports whether target is one of the sentinels of e's code.
func (e *Error) Is(target error) bool {
	for _, s := range e.sentinels {
		if s == target {
			return true
		}
	}
	return false
}

// Unwrap returns the server's error, or nil for an error found by the client.
func (e *Error) Unwrap() error {
	if e.pgErr == nil {
		return nil
	}
	return e.pgErr
}

// mapError turns a server error with one of our SQLSTATEs into an *Error and
// returns every other error unchanged.
func mapError(err error) error {
	var pgErr *pgconn.PgError
	if err == nil || !errors.As(err, &pgErr) {
		return err
	}
	sentinels, ok := sqlStates[pgErr.Code]
	if !ok {
		return err
	}
	return &Error{Code: pgErr.Code, Message: pgErr.Message, Hint: pgErr.Hint, sentinels: sentinels, pgErr: pgErr}
}

// clientError builds an *Error for input refused before any round trip.
func clientError(code, format string, args ...any) error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), sentinels: sqlStates[code]}
}

// retryableStates are the SQLSTATEs after which the same call (or the whole
// transaction) may simply be made again.
var retryableStates = map[string]bool{
	"40001": true, // serialization_failure (also: a key changed hands too often)
	"40P01": true, // deadlock_detected
	"55P03": true, // lock_not_available (lock_timeout)
	"53300": true, // too_many_connections
	"57P01": true, // admin_shutdown: the backend was terminated or the server is stopping
	"57P02": true, // crash_shutdown: another backend crashed
	"57P03": true, // cannot_connect_now: the server is starting up
	"25P03": true, // idle_in_transaction_session_timeout: the connection was closed
}

// IsRetryable reports whether err is a transient failure after which the
// same call may be made again (for a call inside the caller's transaction:
// the whole transaction): the connection was lost or could not be made (the
// server restarted, the backend was terminated, the network failed), or the
// server gave up on work it may redo (SQLSTATE class 08, 40001, 40P01, 55P03,
// 53300, 57P01-57P03, 25P03).
//
// A call whose connection was lost may or may not have taken effect. Retrying
// is safe where the schema makes it so: a spawn retried with the same
// idempotency key (or OnlyOnce) returns the task the first call created, with
// Created false, instead of creating another; a retried CompleteRun or FailRun
// of a run the lost call did end returns an error matching ErrRunNotRunning;
// claims that were lost with their reply are recovered when their lease
// expires. A spawn without a key has no such protection: its retry after a
// lost commit acknowledgement may create a second task.
//
// Errors raised by the durable schema (*Error) and the end of the caller's
// own context are not retryable.
func IsRetryable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var de *Error
	if errors.As(err, &de) {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return retryableStates[pgErr.Code] || len(pgErr.Code) == 5 && pgErr.Code[:2] == "08"
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	return pgconn.SafeToRetry(err) || errors.As(err, &connectErr) || errors.As(err, &netErr) ||
		errors.Is(err, pgconn.ErrConnClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}
