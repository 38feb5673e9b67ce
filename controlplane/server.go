package controlplane

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nodetrust/nodetrust/controlplane/apiserver"
	"github.com/nodetrust/nodetrust/controlplane/approver"
	"github.com/nodetrust/nodetrust/controlplane/instances"
	"github.com/nodetrust/nodetrust/controlplane/pki"
	"github.com/nodetrust/nodetrust/controlplane/signer"
	"github.com/nodetrust/nodetrust/controlplane/store"
	"github.com/nodetrust/nodetrust/controlplane/tokens"
	"github.com/nodetrust/nodetrust/controlplane/tunnel"
	"github.com/nodetrust/nodetrust/internal/clock"
	"github.com/nodetrust/nodetrust/metadata"
)

// Config configures the API server process.
type Config struct {
	DataDir string
	// SignerSocket is the signer's socket; "" means the data folder's.
	SignerSocket string
	// MetadataFile is the metadata data file whose instances own serving
	// names; "" means only instances registered through the API.
	MetadataFile string
	// Workers is how many requests the approver handles at once.
	Workers int
	// GCInterval is how often old requests are collected; 0 means 1 h.
	GCInterval time.Duration
	Clock      clock.Clock
	Logger     *slog.Logger
	// TunnelListen is where agents' tunnels and the mTLS CONNECT frontend
	// are served ("" for none); TunnelConnectSocket is the UNIX-socket
	// CONNECT frontend ("" for none). See docs/tunnels.md.
	TunnelListen        string
	TunnelConnectSocket string
	// TunnelServerID names this replica to agents (default random) and
	// TunnelServerCount says how many replicas serve behind the address
	// agents dial (default 1): agents keep a tunnel to each.
	TunnelServerID    string
	TunnelServerCount int
	// KonnectivitySocket (UNIX, mode 0600) and KonnectivityListen (TCP,
	// mutual TLS with the cluster CA) serve Konnectivity's gRPC
	// ProxyService over the tunnels ("" for none). See docs/tunnels.md.
	KonnectivitySocket string
	KonnectivityListen string
	// MetricsListen is where /metrics is served over plain HTTP ("" for
	// nowhere; the registry is Server.Metrics either way).
	MetricsListen string
	// MetadataData is the metadata data file whose project attribute
	// nodetrust-ca-bundle carries the trust bundle ("" for none); it is
	// rewritten on every change of the bundle (docs/rotation.md).
	MetadataData string
	// RotationCheck is how often a CA rotation in update-clients looks
	// whether every node moved to the new CA; 0 means 10 s.
	RotationCheck time.Duration
}

// Server is the API server process: HTTPS API, approver and store. It
// holds no CA key.
type Server struct {
	cfg        Config
	Store      *store.Store
	Tokens     *tokens.Manager
	Registry   *instances.Registry
	Controller *approver.Controller
	API        *apiserver.Server
	tlsCfg     *tls.Config
	signer     *signer.Client
	rotator    *rotator
	Tunnel     *tunnel.Server // nil without TunnelListen and TunnelConnectSocket
	Metrics    *prometheus.Registry
}

// NewServer loads the data folder and opens the store. Call Run, which
// closes the store when it returns.
func NewServer(cfg Config) (*Server, error) {
	cfg.Clock = clock.Or(cfg.Clock)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	p := Paths{cfg.DataDir}
	if cfg.SignerSocket == "" {
		cfg.SignerSocket = p.SignerSocket()
	}
	if _, err := pki.ReadCertFile(p.CACert()); err != nil {
		return nil, fmt.Errorf("%w (run 'nodetrust controlplane init --data-dir %s' first)", err, cfg.DataDir)
	}
	var data *metadata.Data
	var err error
	if cfg.MetadataFile != "" {
		if data, err = metadata.LoadFile(cfg.MetadataFile); err != nil {
			return nil, fmt.Errorf("instance registry: %w", err)
		}
	}
	st, err := store.Open(p.StoreDir(), store.Options{Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, Store: st, signer: signer.NewClient(cfg.SignerSocket), Metrics: newMetricsRegistry()}
	if s.rotator, err = newRotator(cfg, p, s.signer, st); err != nil {
		st.Close()
		return nil, err
	}
	s.Metrics.MustRegister(newRotationCollector(s.rotator))
	cur := s.rotator.creds.Load()
	pair, pool := cur.cert, cur.pool
	s.Tokens = &tokens.Manager{Store: st, Clock: cfg.Clock}
	s.Registry = instances.New(data, st)
	s.Controller = &approver.Controller{
		Store: st, Registry: s.Registry, Signer: s.signer, Tokens: s.Tokens,
		Clock: cfg.Clock, Logger: cfg.Logger, Workers: cfg.Workers, GCInterval: cfg.GCInterval,
		OnIssued: s.rotator.issued,
	}
	s.API = apiserver.New(apiserver.Config{
		Store: st, Tokens: s.Tokens, Registry: s.Registry, Clock: cfg.Clock, Logger: cfg.Logger,
		Ready: s.ready, Rotation: s.rotator,
	})
	s.tlsCfg = s.rotator.liveTLS(apiserver.TLSConfig(pair, pool, cfg.Clock))
	if cfg.TunnelListen != "" || cfg.TunnelConnectSocket != "" || cfg.KonnectivitySocket != "" || cfg.KonnectivityListen != "" {
		if s.Tunnel, err = tunnel.New(tunnel.Config{Certificate: &pair, ClientCAs: pool, Clock: cfg.Clock, Logger: cfg.Logger,
			Registerer: s.Metrics, NodeForIP: instances.NewOwners(s.Registry).NodeForIP,
			ServerID: cfg.TunnelServerID, ServerCount: cfg.TunnelServerCount, LiveTLS: s.rotator.liveTLS}); err != nil {
			st.Close()
			return nil, err
		}
	}
	return s, nil
}

// ready reports whether the signer socket is there.
func (s *Server) ready() error {
	if _, err := os.Stat(s.cfg.SignerSocket); err != nil {
		return fmt.Errorf("signer socket: %w", err)
	}
	return nil
}

// Run serves the API on ln and runs the approver until ctx is done, then
// closes the store. It returns after every goroutine has ended.
func (s *Server) Run(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, 6)
	if s.Tunnel != nil {
		wg.Go(func() {
			errs[2] = s.runTunnel(ctx)
			cancel()
		})
		if s.cfg.KonnectivitySocket != "" || s.cfg.KonnectivityListen != "" {
			wg.Go(func() {
				errs[3] = s.runKonnectivity(ctx)
				cancel()
			})
		}
	}
	if s.cfg.MetricsListen != "" {
		wg.Go(func() {
			errs[4] = s.serveMetrics(ctx)
			cancel()
		})
	}
	wg.Go(func() {
		errs[0] = s.API.Serve(ctx, ln, s.tlsCfg)
		cancel()
	})
	wg.Go(func() {
		errs[1] = s.Controller.Run(ctx)
		cancel()
	})
	wg.Go(func() {
		check := s.cfg.RotationCheck
		if check <= 0 {
			check = DefaultRotationCheck
		}
		errs[5] = s.rotator.run(ctx, check)
		cancel()
	})
	s.cfg.Logger.Info("control plane API serving", "addr", ln.Addr().String(), "signer_socket", s.cfg.SignerSocket)
	wg.Wait()
	s.signer.Close()
	return errors.Join(errors.Join(errs...), s.Store.Close())
}

// runTunnel listens on the tunnel addresses and serves until ctx is done.
func (s *Server) runTunnel(ctx context.Context) error {
	var ls tunnel.Listeners
	var err error
	if s.cfg.TunnelListen != "" {
		if ls.TLS, err = net.Listen("tcp", s.cfg.TunnelListen); err != nil {
			return fmt.Errorf("tunnel listen %s: %w", s.cfg.TunnelListen, err)
		}
	}
	if s.cfg.TunnelConnectSocket != "" {
		if ls.Unix, err = tunnel.ListenSocket(s.cfg.TunnelConnectSocket); err != nil {
			if ls.TLS != nil {
				ls.TLS.Close()
			}
			return err
		}
		defer os.Remove(s.cfg.TunnelConnectSocket)
	}
	s.cfg.Logger.Info("tunnel server listening", "addr", s.cfg.TunnelListen, "connect_socket", s.cfg.TunnelConnectSocket)
	return s.Tunnel.Run(ctx, ls)
}

// SignerConfig configures the signer process.
type SignerConfig struct {
	DataDir string
	// Socket is where to listen; "" means the data folder's.
	Socket string
	// MaxDuration caps certificate lifetimes; 0 means one year.
	MaxDuration time.Duration
	// Backdate: see signer.Config (0: 5 minutes).
	Backdate time.Duration
	Clock    clock.Clock
	Logger   *slog.Logger
}

// RunSigner loads the cluster CA (refusing a key file readable by others),
// listens on the socket and signs approved requests until ctx is done.
func RunSigner(ctx context.Context, cfg SignerConfig) error {
	p := Paths{cfg.DataDir}
	if cfg.Socket == "" {
		cfg.Socket = p.SignerSocket()
	}
	held, err := signer.LoadDir(p.SignerDir())
	if err != nil {
		return err
	}
	// The CA made by init: its key is gone once a rotation dropped it.
	cert, key, err := signer.LoadCA(p.CACert(), p.CAKey())
	if err != nil && (len(held) == 0 || !errors.Is(err, fs.ErrNotExist)) {
		return err
	}
	ln, err := signer.Listen(cfg.Socket)
	if err != nil {
		return err
	}
	srv := signer.New(signer.Config{CACert: cert, CAKey: key, CAs: held, Dir: p.SignerDir(),
		MaxDuration: cfg.MaxDuration, Backdate: cfg.Backdate, Clock: cfg.Clock, Logger: cfg.Logger})
	if cfg.Logger != nil {
		cfg.Logger.Info("signer listening", "socket", cfg.Socket, "ca", p.CACert())
	}
	defer os.Remove(cfg.Socket)
	return srv.Serve(ctx, ln)
}
