// Package mdclient is the client for GCE-compatible metadata servers: the
// one nodetrust embeds, and the real one on Compute Engine. It reads values
// under http://HOST/computeMetadata/v1/ with the Metadata-Flavor header,
// retries transient failures with capped, jittered exponential backoff, and
// watches a value with the wait_for_change/ETag long poll.
//
// The host is Config.Host, else the GCE_METADATA_HOST environment variable
// (host:port, as Google's own clients read it), else 169.254.169.254.
//
// Values may be secrets (the node's bootstrap token is one). The client
// never logs a response body, and its errors name paths and hosts, never
// values.
package mdclient
