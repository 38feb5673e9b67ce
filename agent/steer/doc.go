// Package steer routes pods' traffic for the metadata server's address
// (169.254.169.254) to a listener of the node itself, with policy routing
// set up over netlink, no iptables: one rule per pod interface or pod CIDR
// sends those packets to a dedicated table in which the address is a local
// route. The node's own processes match no rule and keep reaching the real
// metadata server.
package steer
