package main

import (
	"flag"

	"github.com/nodetrust/nodetrust/controlplane"
)

// tunnelFlags adds the tunnel server's flags to the controlplane command;
// the returned func copies them into the configuration after parsing.
func tunnelFlags(fs *flag.FlagSet) func(*controlplane.Config) {
	listen := fs.String("tunnel-listen", "", "address for agents' reverse tunnels and the mTLS HTTP CONNECT frontend, e.g. 0.0.0.0:8132 (empty: no tunnels)")
	socket := fs.String("tunnel-connect-socket", "", "UNIX socket (mode 0600) for the HTTP CONNECT frontend to <node-name>:<port>")
	return func(c *controlplane.Config) {
		c.TunnelListen, c.TunnelConnectSocket = *listen, *socket
	}
}
