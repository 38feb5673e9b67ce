// Package doccheck holds tests that keep the operator documentation in
// step with the code: every warning and error the node agent can log is
// explained in docs/troubleshooting.md.
package doccheck
