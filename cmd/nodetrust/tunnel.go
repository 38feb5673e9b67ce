package main

import (
	"flag"

	"github.com/nodetrust/nodetrust/controlplane"
)

// tunnelFlags adds the flags of the tunnel server, its Konnectivity
// frontend and the metrics endpoint to the controlplane command;
// the returned func copies them into the configuration after parsing.
func tunnelFlags(fs *flag.FlagSet) func(*controlplane.Config) {
	listen := fs.String("tunnel-listen", "", "address for agents' reverse tunnels and the mTLS HTTP CONNECT frontend, e.g. 0.0.0.0:8132 (empty: no tunnels)")
	socket := fs.String("tunnel-connect-socket", "", "UNIX socket (mode 0600) for the HTTP CONNECT frontend to <node-name>:<port>")
	konnSocket := fs.String("konnectivity-socket", "", "UNIX socket (mode 0600) for Konnectivity's gRPC ProxyService frontend (kube-apiserver egress selector, proxyProtocol GRPC)")
	konnListen := fs.String("konnectivity-listen", "", "address for Konnectivity's gRPC ProxyService frontend over mutual TLS with the cluster CA, e.g. 127.0.0.1:8131")
	serverID := fs.String("tunnel-server-id", "", "this replica's name, told to agents (default: random)")
	serverCount := fs.Int("tunnel-server-count", 1, "how many control-plane replicas serve behind the address agents dial; agents keep a tunnel to each")
	metrics := fs.String("metrics-listen", "", "address to serve Prometheus /metrics on over plain HTTP, e.g. 127.0.0.1:8095 (empty: none)")
	return func(c *controlplane.Config) {
		c.TunnelListen, c.TunnelConnectSocket = *listen, *socket
		c.KonnectivitySocket, c.KonnectivityListen = *konnSocket, *konnListen
		c.MetricsListen = *metrics
		c.TunnelServerID, c.TunnelServerCount = *serverID, *serverCount
	}
}
