package mdlocal

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/nodetrust/nodetrust/metadata"
)

// upstreamInstance is the part of GCE's instance/?recursive=true that
// metadata.Data can hold; other keys (disks, scheduling, licenses, ...) are
// not mirrored.
type upstreamInstance struct {
	Attributes        map[string]string          `json:"attributes"`
	CPUPlatform       string                     `json:"cpuPlatform"`
	Description       string                     `json:"description"`
	Hostname          string                     `json:"hostname"`
	ID                flexUint                   `json:"id"`
	Image             string                     `json:"image"`
	MachineType       string                     `json:"machineType"`
	Name              string                     `json:"name"`
	NetworkInterfaces []upstreamInterface        `json:"networkInterfaces"`
	ServiceAccounts   map[string]upstreamAccount `json:"serviceAccounts"`
	Tags              []string                   `json:"tags"`
	Zone              string                     `json:"zone"`
}

type upstreamInterface struct {
	AccessConfigs []metadata.AccessConfig `json:"accessConfigs"`
	DNSServers    []string                `json:"dnsServers"`
	Gateway       string                  `json:"gateway"`
	IP            string                  `json:"ip"`
	IPAliases     []string                `json:"ipAliases"`
	MAC           string                  `json:"mac"`
	MTU           flexUint                `json:"mtu"`
	Network       string                  `json:"network"`
	Subnetmask    string                  `json:"subnetmask"`
}

type upstreamAccount struct {
	Aliases []string `json:"aliases"`
	Email   string   `json:"email"`
	Scopes  []string `json:"scopes"`
}

type upstreamProject struct {
	Attributes       map[string]string `json:"attributes"`
	NumericProjectID flexUint          `json:"numericProjectId"`
	ProjectID        string            `json:"projectId"`
}

// flexUint accepts a JSON number or a string of digits: GCE sends numbers,
// some emulators strings.
type flexUint uint64

func (f *flexUint) UnmarshalJSON(b []byte) error {
	b = bytes.Trim(b, `"`)
	if len(b) == 0 || string(b) == "null" {
		*f = 0
		return nil
	}
	v, err := strconv.ParseUint(string(b), 10, 64)
	if err != nil {
		return fmt.Errorf("%q is not an unsigned integer", b)
	}
	*f = flexUint(v)
	return nil
}

// convert builds the data the node-local server serves from the upstream
// instance/ and project/ recursive dumps. The result has one instance;
// hostAddresses are loopback only because callers are classified by the
// server's classifier, not by the data.
func convert(instanceJSON, projectJSON string, concealed []string, exposeTokens bool) (*metadata.Data, error) {
	var in upstreamInstance
	if err := json.Unmarshal([]byte(instanceJSON), &in); err != nil {
		return nil, fmt.Errorf("decode upstream instance/: %w", err)
	}
	var p upstreamProject
	if err := json.Unmarshal([]byte(projectJSON), &p); err != nil {
		return nil, fmt.Errorf("decode upstream project/: %w", err)
	}
	inst := metadata.Instance{
		Name:          in.Name,
		ID:            uint64(in.ID),
		Zone:          lastSegment(in.Zone),
		Hostname:      in.Hostname,
		MachineType:   lastSegment(in.MachineType),
		Description:   in.Description,
		Image:         in.Image,
		CPUPlatform:   in.CPUPlatform,
		Tags:          in.Tags,
		Attributes:    in.Attributes,
		HostAddresses: []string{"127.0.0.1", "::1"},
	}
	for _, ni := range in.NetworkInterfaces {
		inst.NetworkInterfaces = append(inst.NetworkInterfaces, metadata.NetworkInterface{
			IP: ni.IP, MAC: ni.MAC, Network: ni.Network, Gateway: ni.Gateway, Subnetmask: ni.Subnetmask,
			MTU: int(ni.MTU), DNSServers: ni.DNSServers, IPAliases: ni.IPAliases, AccessConfigs: ni.AccessConfigs,
		})
	}
	if len(in.ServiceAccounts) > 0 {
		inst.ServiceAccounts = map[string]metadata.ServiceAccount{}
		def := in.ServiceAccounts["default"].Email
		for k, sa := range in.ServiceAccounts {
			if k != "default" && k == def {
				continue // the server lists the default account under its email itself
			}
			inst.ServiceAccounts[k] = metadata.ServiceAccount{Email: sa.Email, Aliases: sa.Aliases, Scopes: sa.Scopes}
		}
	}
	d := &metadata.Data{
		Project: metadata.Project{
			ProjectID:        p.ProjectID,
			NumericProjectID: uint64(p.NumericProjectID),
			Attributes:       p.Attributes,
		},
		Instances:           []metadata.Instance{inst},
		ConcealedAttributes: append([]string{}, concealed...),
		PodView:             metadata.PodView{ServiceAccountTokens: exposeTokens},
	}
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("upstream metadata: %w", err)
	}
	return d, nil
}

// lastSegment turns "projects/123/zones/europe-west1-b" into
// "europe-west1-b"; the server adds the prefix back from the project.
func lastSegment(s string) string {
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		return s[i+1:]
	}
	return s
}
