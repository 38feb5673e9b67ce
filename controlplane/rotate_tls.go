package controlplane

import (
	"crypto/tls"
	"crypto/x509"
	"sync/atomic"
)

// creds is what the TLS servers present and accept now.
type creds struct {
	gen  uint64
	cert tls.Certificate
	pool *x509.CertPool
}

// liveTLS returns base with GetConfigForClient presenting the current
// serving certificate and accepting the current client CAs; the derived
// configuration is rebuilt once per change.
func (r *rotator) liveTLS(base *tls.Config) *tls.Config {
	type derived struct {
		gen uint64
		cfg *tls.Config
	}
	var cache atomic.Pointer[derived]
	out := base.Clone()
	out.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		c := r.creds.Load()
		if d := cache.Load(); d != nil && d.gen == c.gen {
			return d.cfg, nil
		}
		cfg := base.Clone()
		cfg.Certificates = []tls.Certificate{c.cert}
		cfg.ClientCAs = c.pool
		cache.Store(&derived{c.gen, cfg})
		return cfg, nil
	}
	return out
}
