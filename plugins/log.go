package plugins

import (
	"context"
	"io"
	"log"
	"log/slog"

	"github.com/hashicorp/go-hclog"
)

// hclogAdapter sends go-plugin's log lines, and the plugin's own stderr
// lines that go-plugin parses, to slog, tagged with the plugin's name.
// go-plugin's own messages are demoted to debug: they are about the
// transport, and the Supervisor reports a plugin's death in its own words.
type hclogAdapter struct {
	log        *slog.Logger
	fromPlugin bool
	args       []any
}

func newHCLogAdapter(l *slog.Logger, plugin string) *hclogAdapter {
	return &hclogAdapter{log: l.With("plugin", plugin)}
}

func (a *hclogAdapter) level(l hclog.Level) slog.Level {
	var s slog.Level
	switch l {
	case hclog.Trace, hclog.Debug:
		s = slog.LevelDebug
	case hclog.Info, hclog.NoLevel, hclog.DefaultLevel:
		s = slog.LevelInfo
	case hclog.Warn:
		s = slog.LevelWarn
	default:
		s = slog.LevelError
	}
	if !a.fromPlugin {
		s = slog.LevelDebug // the Supervisor reports what matters of these
	}
	return s
}

func (a *hclogAdapter) Log(l hclog.Level, msg string, args ...any) {
	a.log.Log(context.Background(), a.level(l), msg, append(a.args[:len(a.args):len(a.args)], args...)...)
}
func (a *hclogAdapter) Trace(msg string, args ...any) { a.Log(hclog.Trace, msg, args...) }
func (a *hclogAdapter) Debug(msg string, args ...any) { a.Log(hclog.Debug, msg, args...) }
func (a *hclogAdapter) Info(msg string, args ...any)  { a.Log(hclog.Info, msg, args...) }
func (a *hclogAdapter) Warn(msg string, args ...any)  { a.Log(hclog.Warn, msg, args...) }
func (a *hclogAdapter) Error(msg string, args ...any) { a.Log(hclog.Error, msg, args...) }
func (a *hclogAdapter) IsTrace() bool                 { return false }
func (a *hclogAdapter) IsDebug() bool {
	return a.log.Enabled(context.Background(), slog.LevelDebug)
}
func (a *hclogAdapter) IsInfo() bool         { return true }
func (a *hclogAdapter) IsWarn() bool         { return true }
func (a *hclogAdapter) IsError() bool        { return true }
func (a *hclogAdapter) ImpliedArgs() []any   { return a.args }
func (a *hclogAdapter) Name() string         { return "" }
func (a *hclogAdapter) SetLevel(hclog.Level) {}
func (a *hclogAdapter) GetLevel() hclog.Level {
	if a.IsDebug() {
		return hclog.Debug
	}
	return hclog.Info
}

func (a *hclogAdapter) With(args ...any) hclog.Logger {
	c := *a
	c.args = append(a.args[:len(a.args):len(a.args)], args...)
	return &c
}

// Named is how go-plugin makes the logger for the plugin's stderr lines.
func (a *hclogAdapter) Named(string) hclog.Logger {
	c := *a
	c.fromPlugin = true
	return &c
}

func (a *hclogAdapter) ResetNamed(name string) hclog.Logger { return a.Named(name) }

func (a *hclogAdapter) StandardLogger(*hclog.StandardLoggerOptions) *log.Logger {
	return slog.NewLogLogger(a.log.Handler(), slog.LevelInfo)
}

func (a *hclogAdapter) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return a.StandardLogger(nil).Writer()
}
