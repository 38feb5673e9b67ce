// Package harness starts nodetrust's server side in-process for tests and
// benchmarks of other packages: the control plane (its signer on a UNIX
// socket, the API on loopback) and a metadata server whose instances carry
// a bootstrap token and the cluster CA, as a VM's metadata would.
package harness

import (
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nodetrust/nodetrust/controlplane"
	"github.com/nodetrust/nodetrust/internal/clock"
	"github.com/nodetrust/nodetrust/metadata"
	"github.com/nodetrust/nodetrust/metadata/mdclient"
)

// T is the part of T the harness uses, so benchmark programs can
// pass their own.
type T interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// Options configures an Env.
type Options struct {
	// Nodes are the instances in metadata (default one, "node-1"); node i
	// (from 0) reads metadata from HostAddr(i).
	Nodes []string
	// Clock is the control plane's clock (default a fake clock at now).
	Clock clock.Clock
	// TokenTTL is the bootstrap token's lifetime (default 24h).
	TokenTTL time.Duration
	// RotationCheck is how often a cluster-CA rotation in update-clients
	// looks whether every node moved (0: the control plane's default).
	RotationCheck time.Duration
}

// Env is a running server side.
type Env struct {
	t        T
	Dir      string
	APIAddr  string
	APIURL   string
	CAPEM    []byte
	Clock    clock.Clock
	CP       *controlplane.Server
	Token    string
	Nodes    []string
	Metadata *metadata.Server
	MDAddr   string

	rotationCheck time.Duration

	mu         sync.Mutex
	stopAPI    func()
	stopSigner func()
}

// HostAddr is the source address node i's own processes use towards the
// metadata server. Node 0 may also use 127.0.0.1.
func HostAddr(i int) string { return fmt.Sprintf("127.%d.%d.%d", 10+i/(250*250), i/250%250, i%250+1) }

// Start starts the server side; everything stops at the end of the test.
func Start(t T, opt Options) *Env {
	t.Helper()
	if len(opt.Nodes) == 0 {
		opt.Nodes = []string{"node-1"}
	}
	if len(opt.Nodes) > 250*250*10 {
		t.Fatalf("harness: too many nodes")
	}
	if opt.Clock == nil {
		opt.Clock = clock.NewFake(time.Now().Truncate(time.Second))
	}
	if opt.TokenTTL == 0 {
		opt.TokenTTL = 24 * time.Hour
	}
	// UNIX socket paths are limited to about 100 bytes; t.TempDir can be longer.
	dir, err := os.MkdirTemp("", "nth")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	e := &Env{t: t, Dir: dir, APIAddr: addr, APIURL: "https://" + addr, Clock: opt.Clock, Nodes: opt.Nodes,
		rotationCheck: opt.RotationCheck}
	if err := controlplane.Init(controlplane.InitOptions{DataDir: dir, Server: e.APIURL, Clock: opt.Clock}); err != nil {
		t.Fatal(err)
	}
	e.CAPEM, err = os.ReadFile(controlplane.Paths{DataDir: dir}.CACert())
	if err != nil {
		t.Fatal(err)
	}
	e.StartSigner()
	e.writeRegistry()
	e.StartAPI()
	tok, _, err := e.CP.Tokens.Create(opt.TokenTTL, "harness", nil)
	if err != nil {
		t.Fatal(err)
	}
	e.Token = tok
	e.startMetadata()
	return e
}

// writeRegistry writes the metadata file the control plane's approver
// reads node addresses from.
func (e *Env) writeRegistry() {
	b := []byte("project: {projectId: p, numericProjectId: 1}\ninstances:\n")
	for i, n := range e.Nodes {
		b = fmt.Appendf(b, "- name: %s\n  hostname: %s\n  hostAddresses: [%s]\n", n, n, HostAddr(i))
	}
	if err := os.WriteFile(filepath.Join(e.Dir, "registry.yaml"), b, 0o600); err != nil {
		e.t.Fatal(err)
	}
}

// MetadataData returns metadata for the nodes: each instance carries the
// bootstrap token in nodetrust-bootstrap-token and kube-env, and the
// cluster CA in kube-env's CA_CERT.
func (e *Env) MetadataData(token string) *metadata.Data {
	d := &metadata.Data{Project: metadata.Project{ProjectID: "p", NumericProjectID: 1}}
	ca := base64.StdEncoding.EncodeToString(e.CAPEM)
	for i, n := range e.Nodes {
		hosts := []string{HostAddr(i)}
		if i == 0 {
			hosts = append(hosts, "127.0.0.1")
		}
		d.Instances = append(d.Instances, metadata.Instance{
			Name: n, Hostname: n, Zone: "z",
			Attributes: map[string]string{
				"nodetrust-bootstrap-token": token,
				"kube-env":                  "CA_CERT: " + ca + "\nKUBELET_BOOTSTRAP_TOKEN: " + token + "\n",
			},
			HostAddresses: hosts,
		})
	}
	return d
}

func (e *Env) startMetadata() {
	srv, err := metadata.NewServer(metadata.Config{}, e.MetadataData(e.Token))
	if err != nil {
		e.t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, ln) }()
	e.Metadata, e.MDAddr = srv, ln.Addr().String()
	e.t.Cleanup(func() {
		cancel()
		<-done
	})
}

// MetadataClient returns a metadata client for node i (its host view).
func (e *Env) MetadataClient(i int) *mdclient.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(HostAddr(i))}, Timeout: 2 * time.Second}
	return mdclient.New(mdclient.Config{
		Host:       e.MDAddr,
		HTTPClient: &http.Client{Transport: &http.Transport{DialContext: d.DialContext}},
		RetryMax:   -1,
	})
}

// StartSigner starts the signer process's server in-process.
func (e *Env) StartSigner() {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- controlplane.RunSigner(ctx, controlplane.SignerConfig{DataDir: e.Dir, Clock: e.Clock})
	}()
	sock := controlplane.Paths{DataDir: e.Dir}.SignerSocket()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case err := <-done:
			e.t.Fatalf("signer: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			e.t.Fatal("signer socket did not appear")
		}
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
	e.mu.Lock()
	e.stopSigner = stop
	e.mu.Unlock()
	e.t.Cleanup(stop)
}

// StartAPI starts (or restarts) the API server on the same address.
func (e *Env) StartAPI() {
	e.t.Helper()
	srv, err := controlplane.NewServer(controlplane.Config{DataDir: e.Dir, MetadataFile: filepath.Join(e.Dir, "registry.yaml"),
		Clock: e.Clock, Workers: 4, RotationCheck: e.rotationCheck})
	if err != nil {
		e.t.Fatal(err)
	}
	var ln net.Listener
	for i := 0; ; i++ {
		if ln, err = net.Listen("tcp", e.APIAddr); err == nil {
			break
		}
		if i > 100 {
			e.t.Fatalf("listen %s: %v", e.APIAddr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, ln) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
	e.mu.Lock()
	e.CP, e.stopAPI = srv, stop
	e.mu.Unlock()
	e.t.Cleanup(stop)
}

// StopAPI stops the API server (the control plane is "down").
func (e *Env) StopAPI() {
	e.mu.Lock()
	stop := e.stopAPI
	e.mu.Unlock()
	stop()
}
