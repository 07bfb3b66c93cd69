package main

import (
	"errors"
	"fmt"
)

// Exit codes, the same numbers etcdctl uses so that scripts can tell a bad
// argument from a server error.
const (
	exitOK            = 0
	exitError         = 1 // the server or the client library answered with an error
	exitBadConnection = 2 // no client could be built for the endpoints
	exitInvalidInput  = 3 // txn input could not be read or parsed
	exitBadFeature    = 4 // an option value or output format that the command does not have
	exitIO            = 6 // writing the output failed
	exitBadArgs       = 128
)

// codedError carries the exit code an error should end the process with. Its
// message is the message of the error it wraps, unchanged.
//
// Errors from the server are the one kind plinthctl does not wrap with
// context: they print exactly as etcdctl prints them ("Error: etcdserver:
// mvcc: required revision has been compacted"), which scripts match on.
type codedError struct {
	code int
	err  error
	// reported is set when the command already told the user (on stderr)
	// what went wrong; run then prints nothing more.
	reported bool
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }

// withCode gives err an exit code; nil stays nil.
func withCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &codedError{code: code, err: err}
}

// badArgs is an error in the command line: exit code 128, as in etcdctl.
func badArgs(format string, a ...any) error {
	return &codedError{code: exitBadArgs, err: fmt.Errorf(format, a...)}
}

// badFeature is an option value the command does not know: exit code 4.
func badFeature(format string, a ...any) error {
	return &codedError{code: exitBadFeature, err: fmt.Errorf(format, a...)}
}

// exitCode is the process exit code for err: the code it carries, or
// exitError for an error that carries none (server and client errors).
func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	var ee *codedError
	if errors.As(err, &ee) {
		return ee.code
	}
	return exitError
}
