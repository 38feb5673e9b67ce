package metadata

import (
	"encoding/json"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
)

// node is one entry of a view's /computeMetadata/v1/ tree. A view's tree is
// immutable once built; concealed entries are simply never added to a pod
// view, so no request form can reach them.
type node struct {
	name     string // path segment
	jsonKey  string // key in a recursive JSON dump
	children []*node
	index    map[string]*node
	dir      bool
	array    bool // a directory whose recursive JSON is an array (0/, 1/, ...)
	// leaves
	text     string // the value as a non-recursive GET returns it
	json     []byte // the value as JSON
	jsonOnly bool   // token: JSON even without alt=json
	// notRecursive leaves (token, identity) are listed but left out of
	// recursive dumps, as on GCE.
	notRecursive bool
	// needsAudience marks the identity endpoint.
	needsAudience bool
	// redacted is set on a pod view's directory when something concealed
	// was left out of its subtree.
	redacted bool

	cache [numFormats]atomic.Pointer[rendered]
}

func newDir(name, jsonKey string) *node {
	return &node{name: name, jsonKey: jsonKey, dir: true, index: map[string]*node{}}
}

func (n *node) add(c *node) *node {
	n.children = append(n.children, c)
	n.index[c.name] = c
	return c
}

func (n *node) sortChildren() {
	if n.array {
		sort.Slice(n.children, func(i, j int) bool {
			a, _ := strconv.Atoi(n.children[i].name)
			b, _ := strconv.Atoi(n.children[j].name)
			return a < b
		})
	} else {
		sort.Slice(n.children, func(i, j int) bool { return n.children[i].name < n.children[j].name })
	}
	for _, c := range n.children {
		if c.dir {
			c.sortChildren()
		}
	}
}

func stringLeaf(name, jsonKey, v string) *node {
	j, _ := json.Marshal(v)
	return &node{name: name, jsonKey: jsonKey, text: v, json: j}
}

func numberLeaf(name, jsonKey string, v uint64) *node {
	s := strconv.FormatUint(v, 10)
	return &node{name: name, jsonKey: jsonKey, text: s, json: []byte(s)}
}

func listLeaf(name, jsonKey string, v []string) *node {
	if v == nil {
		v = []string{}
	}
	j, _ := json.Marshal(v)
	var b strings.Builder
	for _, s := range v {
		b.WriteString(s)
		b.WriteByte('\n')
	}
	return &node{name: name, jsonKey: jsonKey, text: b.String(), json: j}
}

// jsonListLeaf is a list GCE returns as a JSON array even as text (tags).
func jsonListLeaf(name, jsonKey string, v []string) *node {
	n := listLeaf(name, jsonKey, v)
	n.text = string(n.json)
	return n
}

// View says which tree of an instance a caller gets.
type View uint8

// The views. A Config.Classify that is unsure must answer ViewPod (or
// ViewNone): the server fails closed.
const (
	ViewNone View = iota // unknown caller: refused with 403
	ViewHost             // the instance's own processes: everything
	ViewPod              // the instance's pods: concealed
)

func (v View) String() string {
	switch v {
	case ViewHost:
		return "host"
	case ViewPod:
		return "pod"
	}
	return "none"
}

// treeOptions says what a view leaves out.
type treeOptions struct {
	concealed    map[string]bool // lower-case attribute keys
	hideTokens   bool
	hideIdentity bool
}

// buildTree returns the /computeMetadata/v1/ tree of an instance for one view.
func buildTree(d *Data, in *Instance, opt treeOptions) *node {
	root := newDir("", "")
	root.add(buildInstance(d, in, opt))
	root.add(buildProject(d, opt))
	root.sortChildren()
	markRedacted(root)
	return root
}

// markRedacted propagates redacted from directories to their ancestors.
func markRedacted(n *node) bool {
	for _, c := range n.children {
		if c.dir && markRedacted(c) {
			n.redacted = true
		}
	}
	return n.redacted
}

func attributesDir(attrs map[string]string, opt treeOptions) *node {
	dir := newDir("attributes", "attributes")
	for k, v := range attrs {
		if opt.concealed[strings.ToLower(k)] {
			dir.redacted = true
			continue
		}
		dir.add(stringLeaf(k, k, v))
	}
	return dir
}

func buildProject(d *Data, opt treeOptions) *node {
	p := newDir("project", "project")
	p.add(attributesDir(d.Project.Attributes, opt))
	p.add(numberLeaf("numeric-project-id", "numericProjectId", d.Project.NumericProjectID))
	p.add(stringLeaf("project-id", "projectId", d.Project.ProjectID))
	return p
}

func buildInstance(d *Data, in *Instance, opt treeOptions) *node {
	i := newDir("instance", "instance")
	i.add(attributesDir(in.Attributes, opt))
	i.add(stringLeaf("hostname", "hostname", in.Hostname))
	i.add(numberLeaf("id", "id", in.ID))
	i.add(stringLeaf("name", "name", in.Name))
	i.add(stringLeaf("description", "description", in.Description))
	i.add(stringLeaf("image", "image", in.Image))
	i.add(stringLeaf("cpu-platform", "cpuPlatform", in.CPUPlatform))
	i.add(stringLeaf("maintenance-event", "maintenanceEvent", "NONE"))
	i.add(stringLeaf("preempted", "preempted", "FALSE"))
	i.add(jsonListLeaf("tags", "tags", in.Tags))
	i.add(stringLeaf("zone", "zone", "projects/"+strconv.FormatUint(d.Project.NumericProjectID, 10)+"/zones/"+in.Zone))
	i.add(stringLeaf("machine-type", "machineType", "projects/"+strconv.FormatUint(d.Project.NumericProjectID, 10)+"/machineTypes/"+in.MachineType))

	nis := i.add(newDir("network-interfaces", "networkInterfaces"))
	nis.array = true
	for idx, ni := range in.NetworkInterfaces {
		e := nis.add(newDir(strconv.Itoa(idx), ""))
		e.add(stringLeaf("ip", "ip", ni.IP))
		e.add(stringLeaf("mac", "mac", ni.MAC))
		e.add(stringLeaf("network", "network", ni.Network))
		e.add(stringLeaf("gateway", "gateway", ni.Gateway))
		e.add(stringLeaf("subnetmask", "subnetmask", ni.Subnetmask))
		e.add(numberLeaf("mtu", "mtu", uint64(max(ni.MTU, 0))))
		e.add(listLeaf("dns-servers", "dnsServers", ni.DNSServers))
		e.add(listLeaf("ip-aliases", "ipAliases", ni.IPAliases))
		acs := e.add(newDir("access-configs", "accessConfigs"))
		acs.array = true
		for j, ac := range ni.AccessConfigs {
			a := acs.add(newDir(strconv.Itoa(j), ""))
			a.add(stringLeaf("external-ip", "externalIp", ac.ExternalIP))
			t := ac.Type
			if t == "" {
				t = "ONE_TO_ONE_NAT"
			}
			a.add(stringLeaf("type", "type", t))
		}
	}

	sas := i.add(newDir("service-accounts", "serviceAccounts"))
	for key, sa := range in.ServiceAccounts {
		if sa.Aliases == nil && key == "default" {
			sa.Aliases = []string{"default"}
		}
		addServiceAccount(sas, key, sa, opt)
		if key == "default" && sa.Email != "" && sas.index[sa.Email] == nil {
			addServiceAccount(sas, sa.Email, sa, opt)
		}
	}
	return i
}

func addServiceAccount(sas *node, key string, sa ServiceAccount, opt treeOptions) {
	dir := sas.add(newDir(key, key))
	aliases := sa.Aliases
	email := sa.Email
	if email == "" && key != "default" {
		email = key
	}
	dir.add(listLeaf("aliases", "aliases", aliases))
	dir.add(stringLeaf("email", "email", email))
	dir.add(listLeaf("scopes", "scopes", sa.Scopes))
	if sa.Token != nil {
		if opt.hideTokens {
			dir.redacted = true
		} else {
			tt := sa.Token.TokenType
			if tt == "" {
				tt = "Bearer"
			}
			exp := sa.Token.ExpiresIn
			if exp == 0 {
				exp = 3599
			}
			j, _ := json.Marshal(struct {
				AccessToken string `json:"access_token"`
				ExpiresIn   int    `json:"expires_in"`
				TokenType   string `json:"token_type"`
			}{sa.Token.AccessToken, exp, tt})
			dir.add(&node{name: "token", jsonKey: "token", text: string(j), json: j, jsonOnly: true, notRecursive: true})
		}
	}
	if sa.Identity != "" {
		if opt.hideIdentity {
			dir.redacted = true
		} else {
			l := stringLeaf("identity", "identity", sa.Identity)
			l.notRecursive = true
			l.needsAudience = true
			dir.add(l)
		}
	}
}

// lookup walks segs from n; nil when absent.
func (n *node) lookup(segs []string) *node {
	for _, s := range segs {
		if !n.dir {
			return nil
		}
		c := n.index[s]
		if c == nil {
			return nil
		}
		n = c
	}
	return n
}
