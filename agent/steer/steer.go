package steer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
)

// Defaults of Config.
const (
	DefaultTable    = 16925
	DefaultPriority = 1699
	DefaultResync   = 30 * time.Second
)

// MetadataAddress is the metadata server's link-local address.
var MetadataAddress = netip.MustParseAddr("169.254.169.254")

// Config says which traffic is steered. The zero value steers nothing.
type Config struct {
	// Interfaces are pod interface names, or path.Match patterns such as
	// "veth*" and "cni*". A plain name gets its rule even before the
	// interface exists; a pattern gets one rule per matching interface,
	// followed as interfaces come and go.
	Interfaces []string
	// CIDRs are pod address ranges (IPv4): traffic from them to the
	// metadata address is steered whatever interface it enters on.
	CIDRs []netip.Prefix
	// Table is the dedicated routing table (default 16925). Every rule
	// pointing at it is treated as this package's own.
	Table int
	// Priority of the rules (default 1699); it must come before the main
	// table's rule (32766).
	Priority int
	// Address is what is steered (default 169.254.169.254).
	Address netip.Addr
	// Resync is how often the rules are checked against what they should
	// be, repairing outside changes (default 30s).
	Resync time.Duration
	Logger *slog.Logger
}

// Steerer keeps the rules in place while it runs.
type Steerer struct {
	cfg      Config
	log      *slog.Logger
	names    []string // plain interface names
	patterns []string
	mu       sync.Mutex // serialises Apply and Remove
}

// New checks cfg and fills in defaults.
func New(cfg Config) (*Steerer, error) {
	s := &Steerer{cfg: cfg, log: cfg.Logger}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.cfg.Table == 0 {
		s.cfg.Table = DefaultTable
	}
	if s.cfg.Priority == 0 {
		s.cfg.Priority = DefaultPriority
	}
	if !s.cfg.Address.IsValid() {
		s.cfg.Address = MetadataAddress
	}
	if s.cfg.Resync <= 0 {
		s.cfg.Resync = DefaultResync
	}
	switch t := s.cfg.Table; {
	case t < 0, t == 253, t == 254, t == 255: // default, main, local
		return nil, fmt.Errorf("steer: table %d is not a dedicated table", t)
	}
	if s.cfg.Priority < 1 || s.cfg.Priority >= 32766 {
		return nil, fmt.Errorf("steer: rule priority %d must be between 1 and 32765, before the main table", s.cfg.Priority)
	}
	if !s.cfg.Address.Is4() {
		return nil, fmt.Errorf("steer: address %s is not IPv4", s.cfg.Address)
	}
	for _, n := range cfg.Interfaces {
		if _, err := path.Match(n, ""); err != nil || n == "" || len(n) > 15 && !hasMeta(n) {
			return nil, fmt.Errorf("steer: %q is not an interface name or pattern", n)
		}
		if hasMeta(n) {
			s.patterns = append(s.patterns, n)
		} else {
			s.names = append(s.names, n)
		}
	}
	for _, p := range cfg.CIDRs {
		if !p.IsValid() || !p.Addr().Is4() {
			return nil, fmt.Errorf("steer: pod CIDR %s is not an IPv4 prefix", p)
		}
	}
	return s, nil
}

func hasMeta(s string) bool {
	for _, c := range s {
		if c == '*' || c == '?' || c == '[' || c == '\\' {
			return true
		}
	}
	return false
}

// matches reports whether an interface name is a pod interface.
func (s *Steerer) matches(name string) bool {
	if slices.Contains(s.names, name) {
		return true
	}
	for _, p := range s.patterns {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}

// ruleKey identifies one of the rules this package wants.
type ruleKey struct {
	iif string
	src netip.Prefix
}

// Apply makes the table and rules what they should be now: the local route,
// a rule for every plain name, matching interface and CIDR, and no other
// rule pointing at the table. Applying again changes nothing.
func (s *Steerer) Apply() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	dst := s.dst()
	route := &netlink.Route{LinkIndex: lo.Attrs().Index, Dst: dst, Table: s.cfg.Table, Type: syscall.RTN_LOCAL,
		Scope: netlink.SCOPE_HOST, Protocol: netlink.RouteProtocol(syscall.RTPROT_STATIC)}
	if err := netlink.RouteReplace(route); err != nil {
		return fmt.Errorf("add local route %s to table %d: %w", dst, s.cfg.Table, err)
	}

	want := map[ruleKey]bool{}
	for _, n := range s.names {
		want[ruleKey{iif: n}] = true
	}
	if len(s.patterns) > 0 {
		links, err := netlink.LinkList()
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return fmt.Errorf("list interfaces: %w", err)
		}
		for _, l := range links {
			if name := l.Attrs().Name; s.matches(name) {
				want[ruleKey{iif: name}] = true
			}
		}
	}
	for _, p := range s.cfg.CIDRs {
		want[ruleKey{src: p.Masked()}] = true
	}

	have, err := s.rules()
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range have {
		k, ok := s.keyOf(r)
		if ok && want[k] {
			delete(want, k) // present already
			continue
		}
		if err := netlink.RuleDel(&r); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("delete stale rule %v: %w", r, err))
		} else {
			s.log.Info("removed pod metadata rule", "rule", r.String(), "iif", r.IifName)
		}
	}
	for k := range want {
		r := s.rule(k)
		if err := netlink.RuleAdd(r); err != nil && !errors.Is(err, syscall.EEXIST) {
			errs = append(errs, fmt.Errorf("add rule %v iif %q: %w", r, k.iif, err))
		} else {
			s.log.Info("added pod metadata rule", "rule", r.String(), "iif", k.iif)
		}
	}
	return errors.Join(errs...)
}

func (s *Steerer) dst() *net.IPNet {
	return &net.IPNet{IP: net.IP(s.cfg.Address.AsSlice()), Mask: net.CIDRMask(32, 32)}
}

func (s *Steerer) rule(k ruleKey) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = netlink.FAMILY_V4
	r.Priority = s.cfg.Priority
	r.Table = s.cfg.Table
	r.Dst = s.dst()
	r.IifName = k.iif
	if k.src.IsValid() {
		r.Src = &net.IPNet{IP: net.IP(k.src.Addr().AsSlice()), Mask: net.CIDRMask(k.src.Bits(), 32)}
	}
	return r
}

// keyOf maps an existing rule to the key it would have been added for;
// false for a rule of the table that no key would have made.
func (s *Steerer) keyOf(r netlink.Rule) (ruleKey, bool) {
	if r.Priority != s.cfg.Priority || r.Dst == nil || r.Dst.String() != s.dst().String() ||
		r.OifName != "" || r.Invert || r.Mark != 0 || r.Mask != nil || r.Goto > 0 {
		return ruleKey{}, false
	}
	switch {
	case r.IifName != "" && r.Src == nil:
		return ruleKey{iif: r.IifName}, true
	case r.IifName == "" && r.Src != nil:
		p, err := netip.ParsePrefix(r.Src.String())
		if err != nil {
			return ruleKey{}, false
		}
		return ruleKey{src: p.Masked()}, true
	}
	return ruleKey{}, false
}

// rules lists the IPv4 rules pointing at the table.
func (s *Steerer) rules() ([]netlink.Rule, error) {
	rs, err := netlink.RuleListFiltered(netlink.FAMILY_V4, &netlink.Rule{Table: s.cfg.Table}, netlink.RT_FILTER_TABLE)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("list rules: %w", err)
	}
	return rs, nil
}

// Remove deletes every rule pointing at the table and the table's routes.
func (s *Steerer) Remove() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	rs, err := s.rules()
	if err != nil {
		errs = append(errs, err)
	}
	for _, r := range rs {
		if err := netlink.RuleDel(&r); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("delete rule %v: %w", r, err))
		}
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: s.cfg.Table}, netlink.RT_FILTER_TABLE)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		errs = append(errs, fmt.Errorf("list routes of table %d: %w", s.cfg.Table, err))
	}
	for _, r := range routes {
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %v: %w", r, err))
		}
	}
	return errors.Join(errs...)
}

// Run applies the rules, follows pod interfaces as they appear and go
// (netlink link notifications, plus a check every Resync), and removes
// everything when ctx is done. It fails at once when the first Apply does
// (for example without CAP_NET_ADMIN); later failures are logged and
// retried. It returns after every goroutine it started has ended.
func (s *Steerer) Run(ctx context.Context) error {
	if err := s.Apply(); err != nil {
		if rerr := s.Remove(); rerr != nil {
			s.log.Error("could not remove pod metadata rules", "err", rerr)
		}
		return err
	}
	defer func() {
		if err := s.Remove(); err != nil {
			s.log.Error("could not remove pod metadata rules on stop", "err", err)
		} else {
			s.log.Info("pod metadata rules removed")
		}
	}()
	var sub *subscription
	defer func() { sub.stop() }()
	tick := time.NewTicker(s.cfg.Resync)
	defer tick.Stop()
	for {
		if sub == nil && (len(s.patterns) > 0) {
			var err error
			if sub, err = subscribe(); err != nil {
				s.log.Error("cannot follow pod interfaces; checking every resync instead", "err", err)
			} else if err := s.Apply(); err != nil { // nothing missed between the first Apply and now
				s.log.Error("pod metadata rules not applied; pods may reach the upstream metadata server unconcealed", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case u, ok := <-sub.updates():
			if !ok {
				s.log.Warn("link notifications ended; subscribing again")
				sub.stop()
				sub = nil
				continue
			}
			if !s.matches(u.Attrs().Name) || len(s.patterns) == 0 {
				continue
			}
			if err := s.Apply(); err != nil {
				s.log.Error("pod metadata rules not applied; pods may reach the upstream metadata server unconcealed", "err", err)
			}
		case <-tick.C:
			if err := s.Apply(); err != nil {
				s.log.Error("pod metadata rules not applied; pods may reach the upstream metadata server unconcealed", "err", err)
			}
		}
	}
}

// subscription is one netlink link subscription.
type subscription struct {
	ch   chan netlink.LinkUpdate
	done chan struct{}
}

func subscribe() (*subscription, error) {
	s := &subscription{ch: make(chan netlink.LinkUpdate, 64), done: make(chan struct{})}
	if err := netlink.LinkSubscribeWithOptions(s.ch, s.done, netlink.LinkSubscribeOptions{}); err != nil {
		return nil, fmt.Errorf("subscribe to link changes: %w", err)
	}
	return s, nil
}

// updates is nil (never ready) on a nil subscription.
func (s *subscription) updates() <-chan netlink.LinkUpdate {
	if s == nil {
		return nil
	}
	return s.ch
}

// stop ends the subscription and waits for its reader goroutine to end.
func (s *subscription) stop() {
	if s == nil {
		return
	}
	close(s.done)
	for range s.ch {
	}
}
