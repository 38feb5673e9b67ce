// Package controlplane wires nodetrust's control plane together: the trust
// roots created by Init, the signer process that alone holds the cluster
// CA key (RunSigner), and the API server with its approver (Server.Run).
package controlplane

import (
	"path/filepath"
)

// Paths names the files of a data folder.
type Paths struct{ DataDir string }

func (p Paths) join(elem ...string) string {
	return filepath.Join(append([]string{p.DataDir}, elem...)...)
}

// CACert is the cluster root CA certificate, trusted by everyone.
func (p Paths) CACert() string { return p.join("pki", "ca.crt") }

// CAKey is the cluster root CA key, read only by the signer process.
func (p Paths) CAKey() string { return p.join("signer", "ca.key") }

// EtcdCACert is the etcd CA certificate; it is never trusted for API
// clients.
func (p Paths) EtcdCACert() string { return p.join("etcd", "ca.crt") }

// EtcdCAKey is the etcd CA key.
func (p Paths) EtcdCAKey() string { return p.join("etcd", "ca.key") }

// APIServerCert and APIServerKey are the API's serving pair.
func (p Paths) APIServerCert() string { return p.join("pki", "apiserver.crt") }

// APIServerKey is the API's serving key.
func (p Paths) APIServerKey() string { return p.join("pki", "apiserver.key") }

// AdminCert is the admin client certificate (O=system:masters).
func (p Paths) AdminCert() string { return p.join("pki", "admin.crt") }

// AdminKey is the admin client key.
func (p Paths) AdminKey() string { return p.join("pki", "admin.key") }

// AdminKubeconfig is the admin's kubeconfig.
func (p Paths) AdminKubeconfig() string { return p.join("admin.kubeconfig") }

// StoreDir holds the API's object store.
func (p Paths) StoreDir() string { return p.join("store") }

// SignerSocket is the signer's UNIX socket.
func (p Paths) SignerSocket() string { return p.join("run", "signer.sock") }
