// Package metadata is nodetrust's GCE-compatible metadata server. It serves
// the /computeMetadata/v1/ tree of each instance in a data file to callers
// identified by their source address: the instance's own processes get the
// full view, its pods a concealed view from which the bootstrap secrets are
// absent in every form (paths, listings, recursive dumps, ETags, long-polls),
// and anyone else is refused.
package metadata
