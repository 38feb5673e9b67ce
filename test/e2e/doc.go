// Package e2e runs nodetrust's real binary across network namespaces: a
// metadata host (metadata server, control-plane signer, API and tunnel
// server), nodes running the agent, and pods behind each node on a bridge.
//
// The non-test files are a reusable topology and cluster builder (see
// docs/e2e.md); the tests need root and skip elsewhere.
package e2e
