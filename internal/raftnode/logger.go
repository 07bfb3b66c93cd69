package raftnode

import (
	"fmt"
	"log/slog"
)

// raftLogger adapts slog to raft's Logger; raft's fatal errors panic, as its
// own default logger does. Raft's own info messages (votes,
// elections, term changes) are worth keeping at info level.
type raftLogger struct{ l *slog.Logger }

func (r raftLogger) Debug(v ...any) { r.l.Debug(fmt.Sprint(v...), "component", "raft") }
func (r raftLogger) Debugf(format string, v ...any) {
	r.l.Debug(fmt.Sprintf(format, v...), "component", "raft")
}
func (r raftLogger) Info(v ...any) { r.l.Info(fmt.Sprint(v...), "component", "raft") }
func (r raftLogger) Infof(format string, v ...any) {
	r.l.Info(fmt.Sprintf(format, v...), "component", "raft")
}
func (r raftLogger) Warning(v ...any) { r.l.Warn(fmt.Sprint(v...), "component", "raft") }
func (r raftLogger) Warningf(format string, v ...any) {
	r.l.Warn(fmt.Sprintf(format, v...), "component", "raft")
}
func (r raftLogger) Error(v ...any) { r.l.Error(fmt.Sprint(v...), "component", "raft") }
func (r raftLogger) Errorf(format string, v ...any) {
	r.l.Error(fmt.Sprintf(format, v...), "component", "raft")
}
func (r raftLogger) Fatal(v ...any) {
	r.l.Error(fmt.Sprint(v...), "component", "raft")
	panic(fmt.Sprint(v...))
}
func (r raftLogger) Fatalf(format string, v ...any) {
	r.l.Error(fmt.Sprintf(format, v...), "component", "raft")
	panic(fmt.Sprintf(format, v...))
}
func (r raftLogger) Panic(v ...any) { panic(fmt.Sprint(v...)) }
func (r raftLogger) Panicf(format string, v ...any) {
	panic(fmt.Sprintf(format, v...))
}
