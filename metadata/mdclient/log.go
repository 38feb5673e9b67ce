package mdclient

import (
	"context"
	"errors"
	"log/slog"
)

// Log attribute keys.
const (
	keyComponent = "component"
	keyPath      = "path"
	keyError     = "error"
	keyRetryIn   = "retry_in"
	keyFailures  = "failures"
)

// retryLogger adapts slog to retryablehttp.LeveledLogger. retryablehttp
// logs the method, the URL (a path and, for watches, the last ETag), the
// error, the status and the wait; never a body, since the Client sets no
// response log hook. Its per-attempt "request failed" lines are warnings,
// except for a cancelled or expired context, which is no failure of the
// server.
type retryLogger struct{ l *slog.Logger }

func (r retryLogger) Error(msg string, kv ...any) {
	level := slog.LevelWarn
	for i := 0; i+1 < len(kv); i += 2 {
		if err, ok := kv[i+1].(error); ok && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
			level = slog.LevelDebug
		}
	}
	r.l.Log(context.Background(), level, msg, kv...)
}

func (r retryLogger) Warn(msg string, kv ...any)  { r.l.Warn(msg, kv...) }
func (r retryLogger) Info(msg string, kv ...any)  { r.l.Info(msg, kv...) }
func (r retryLogger) Debug(msg string, kv ...any) { r.l.Debug(msg, kv...) }
