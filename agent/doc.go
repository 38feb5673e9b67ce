// Package agent is nodetrust's node agent. It turns the bootstrap secret
// injected into a VM's metadata into a node identity (a kubelet client
// certificate, and optionally a kubelet serving certificate) obtained
// through the certificates.k8s.io/v1 API, keeps it on disk crash-safely,
// renews it at a random point in 70-90% of its lifetime, and falls back
// to bootstrap on its own when the certificate expired or is corrupt.
package agent
