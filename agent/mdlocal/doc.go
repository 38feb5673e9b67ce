// Package mdlocal is the node-local concealing metadata server: it mirrors
// the upstream metadata server (read from the host, so with everything the
// host may see) into a metadata.Data, and serves it to pods through
// metadata.Server's pod view. Callers are told apart by kernel facts only:
// a connection whose source is one of the node's own addresses is the host,
// anything else is a pod.
package mdlocal
