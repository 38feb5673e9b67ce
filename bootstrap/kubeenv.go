package bootstrap

import (
	"errors"
	"fmt"

	"gopkg.in/yaml.v3"
)

// ParseKubeEnv parses GKE's kube-env: a YAML map of string keys to scalar
// values. Scalars are returned as written (42 and true become "42" and
// "true"; null becomes ""). Keys whose value is a list or map are left out,
// since no key nodetrust reads has one. An empty document is an empty map.
// A duplicate key is an error naming the key. Errors never quote a value.
func ParseKubeEnv(b []byte) (map[string]string, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("kube-env is not YAML: %w", yamlError(err))
	}
	env := map[string]string{}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return env, nil
	}
	root := doc.Content[0]
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return env, nil
	}
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("kube-env is not a YAML map (line %d)", root.Line)
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return nil, fmt.Errorf("kube-env line %d: key is not a string", k.Line)
		}
		if _, dup := env[k.Value]; dup {
			return nil, fmt.Errorf("kube-env line %d: key %s defined twice", k.Line, k.Value)
		}
		for v.Kind == yaml.AliasNode && v.Alias != nil {
			v = v.Alias
		}
		switch {
		case v.Kind != yaml.ScalarNode:
			continue
		case v.Tag == "!!null":
			env[k.Value] = ""
		default:
			env[k.Value] = v.Value
		}
	}
	return env, nil
}

// yamlError keeps yaml's line-level syntax errors, which carry no value.
func yamlError(err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		return errors.New("unexpected types")
	}
	return err
}
