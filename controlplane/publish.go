package controlplane

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	"gopkg.in/yaml.v3"

	"github.com/nodetrust/nodetrust/internal/atomicfile"
	"github.com/nodetrust/nodetrust/metadata"
)

// BundleAttribute is the project attribute of the metadata data file that
// carries the cluster trust bundle to booting nodes.
const BundleAttribute = "nodetrust-ca-bundle"

// PublishBundle sets project attribute BundleAttribute of the metadata
// data file at path to bundlePEM. The file is edited as a YAML node tree,
// so that comments, key order and styles of the rest survive; the result
// must pass metadata.Parse, and replaces the file crash-safely (temp file,
// fsync, rename) with the same mode. An unchanged value writes nothing.
func PublishBundle(path string, bundlePEM []byte) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("metadata data file for the trust bundle: %w", err)
	}
	old, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("metadata data file for the trust bundle: %w", err)
	}
	if d, err := metadata.Parse(old); err == nil && d.Project.Attributes[BundleAttribute] == string(bundlePEM) {
		return nil
	}
	out, err := setProjectAttribute(old, BundleAttribute, string(bundlePEM))
	if err != nil {
		return fmt.Errorf("metadata data file %s: %w", path, err)
	}
	d, err := metadata.Parse(out)
	if err != nil {
		return fmt.Errorf("metadata data file %s would be invalid with the trust bundle, left as it was: %w", path, err)
	}
	if d.Project.Attributes[BundleAttribute] != string(bundlePEM) {
		return fmt.Errorf("metadata data file %s: the rewritten file does not carry the bundle; left as it was", path)
	}
	return atomicfile.Write(path, out, fi.Mode().Perm())
}

// setProjectAttribute returns the YAML document b with
// project.attributes[key] = value.
func setProjectAttribute(b []byte, key, value string) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, err
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, errors.New("the document is not a mapping")
	}
	project, err := mappingChild(doc.Content[0], "project")
	if err != nil {
		return nil, err
	}
	attrs, err := mappingChild(project, "attributes")
	if err != nil {
		return nil, fmt.Errorf("project: %w", err)
	}
	style := yaml.LiteralStyle
	if attrs.Style&yaml.FlowStyle != 0 {
		style = yaml.DoubleQuotedStyle
	}
	v := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: value, Style: style}
	for i := 0; i+1 < len(attrs.Content); i += 2 {
		if attrs.Content[i].Value == key {
			attrs.Content[i+1] = v
			return encodeYAML(&doc, indentOf(b))
		}
	}
	attrs.Content = append(attrs.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: key}, v)
	return encodeYAML(&doc, indentOf(b))
}

// mappingChild returns m[key], made an empty mapping if absent or null.
func mappingChild(m *yaml.Node, key string) (*yaml.Node, error) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			c := m.Content[i+1]
			switch {
			case c.Kind == yaml.MappingNode:
			case c.Kind == yaml.ScalarNode && c.Tag == "!!null":
				*c = yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Style: m.Style & yaml.FlowStyle}
			default:
				return nil, fmt.Errorf("%s (line %d) is not a mapping", key, c.Line)
			}
			return c, nil
		}
	}
	c := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Style: m.Style & yaml.FlowStyle}
	m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: key}, c)
	return c, nil
}

// indentOf guesses the indentation of a block YAML file: that of its
// first indented line, 2 when there is none.
func indentOf(b []byte) int {
	for _, line := range bytes.Split(b, []byte("\n")) {
		t := bytes.TrimLeft(line, " ")
		if n := len(line) - len(t); n > 0 && len(t) > 0 && t[0] != '#' && t[0] != '-' {
			return n
		}
	}
	return 2
}

func encodeYAML(doc *yaml.Node, indent int) ([]byte, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(indent)
	if err := enc.Encode(doc); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// kubeconfigServer returns the server URL of a kubeconfig's first
// cluster.
func kubeconfigServer(b []byte) (string, error) {
	var kc struct {
		Clusters []struct {
			Cluster struct {
				Server string `yaml:"server"`
			} `yaml:"cluster"`
		} `yaml:"clusters"`
	}
	if err := yaml.Unmarshal(b, &kc); err != nil {
		return "", err
	}
	if len(kc.Clusters) == 0 || kc.Clusters[0].Cluster.Server == "" {
		return "", errors.New("no cluster server URL")
	}
	return kc.Clusters[0].Cluster.Server, nil
}
