package systemd

import (
	"errors"
	"net"
	"strings"
	"sync"

	"github.com/coreos/go-systemd/v22/activation"
)

// Listeners returns the stream sockets systemd passed to this process
// (LISTEN_FDS, LISTEN_PID) for name: those a socket unit labels with
// FileDescriptorName=name, and, for name "" or when no socket carries a
// name, every unnamed one. It returns nil when none were passed (not
// socket-activated: bind the configured address), and unsets the
// LISTEN_* variables so child processes do not inherit them.
func Listeners(name string) ([]net.Listener, error) {
	byName, err := activation.ListenersWithNames()
	if err != nil {
		return nil, err
	}
	if ls := byName[name]; name != "" && len(ls) > 0 {
		return ls, nil
	}
	var unnamed []net.Listener
	for n, ls := range byName {
		if strings.HasPrefix(n, "LISTEN_FD_") {
			unnamed = append(unnamed, ls...)
		}
	}
	return unnamed, nil
}

// Merge returns one listener accepting from all of ls (a socket unit may
// list an IPv4 and an IPv6 address); Close closes them all.
func Merge(ls []net.Listener) net.Listener {
	if len(ls) == 1 {
		return ls[0]
	}
	m := &merged{ls: ls, conns: make(chan accepted), done: make(chan struct{})}
	for _, l := range ls {
		m.wg.Go(func() { m.accept(l) })
	}
	return m
}

type accepted struct {
	c   net.Conn
	err error
}

type merged struct {
	ls    []net.Listener
	conns chan accepted
	done  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

func (m *merged) accept(l net.Listener) {
	for {
		c, err := l.Accept()
		select {
		case m.conns <- accepted{c, err}:
		case <-m.done:
			if c != nil {
				c.Close()
			}
			return
		}
		if err != nil && errors.Is(err, net.ErrClosed) {
			return
		}
	}
}

func (m *merged) Accept() (net.Conn, error) {
	select {
	case a := <-m.conns:
		return a.c, a.err
	case <-m.done:
		return nil, net.ErrClosed
	}
}

func (m *merged) Close() error {
	var errs []error
	m.once.Do(func() {
		close(m.done)
		for _, l := range m.ls {
			errs = append(errs, l.Close())
		}
		m.wg.Wait()
	})
	return errors.Join(errs...)
}

func (m *merged) Addr() net.Addr { return m.ls[0].Addr() }
