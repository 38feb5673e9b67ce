// Package systemd ties nodetrust's long-running commands to systemd: the
// sd_notify protocol (READY, STATUS, RELOADING, STOPPING, WATCHDOG) with
// readiness and liveness decided from the agent's Lifecycle, socket
// activation, and structured logging to the journal with secrets redacted.
// Without NOTIFY_SOCKET, LISTEN_FDS or a journal on stderr every part of
// it does nothing and the commands behave as they do by hand. The unit
// files the packages ship are in units/, sysusers.d/ and tmpfiles.d/.
package systemd
