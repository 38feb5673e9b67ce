package metadata

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
)

// format is how a node is rendered.
type format uint8

const (
	formatText    format = iota // a leaf's value, or a directory listing
	formatJSON                  // a leaf as JSON, or a directory's recursive JSON
	formatRecText               // a directory's recursive "path value" lines
	numFormats
)

const (
	contentText = "application/text"
	contentJSON = "application/json"
)

// rendered is a response body with its ETag, computed once per view node.
type rendered struct {
	body  []byte
	etag  string
	ctype string
}

// render returns n in format f, caching the result on the node.
func (n *node) render(f format) *rendered {
	if r := n.cache[f].Load(); r != nil {
		return r
	}
	var b bytes.Buffer
	ctype := contentText
	switch {
	case f == formatJSON || n.jsonOnly:
		ctype = contentJSON
		if n.dir {
			writeJSON(&b, n)
		} else {
			b.Write(n.json)
		}
	case f == formatRecText && n.dir:
		writeRecText(&b, n, "")
	case n.dir:
		for _, c := range n.children {
			b.WriteString(c.name)
			if c.dir {
				b.WriteByte('/')
			}
			b.WriteByte('\n')
		}
	default:
		b.WriteString(n.text)
	}
	r := &rendered{body: b.Bytes(), ctype: ctype, etag: etagOf(ctype, b.Bytes())}
	n.cache[f].Store(r)
	return r
}

// etagOf is a content hash, so a reload that changes nothing in a view keeps
// its ETags, and a change outside a view cannot show through it.
func etagOf(ctype string, body []byte) string {
	h := sha256.New()
	h.Write([]byte(ctype))
	h.Write([]byte{0})
	h.Write(body)
	var sum [sha256.Size]byte
	return hex.EncodeToString(h.Sum(sum[:0])[:8])
}

func writeJSON(b *bytes.Buffer, n *node) {
	if !n.dir {
		b.Write(n.json)
		return
	}
	open, close := byte('{'), byte('}')
	if n.array {
		open, close = '[', ']'
	}
	b.WriteByte(open)
	first := true
	for _, c := range n.children {
		if c.notRecursive {
			continue
		}
		if !first {
			b.WriteByte(',')
		}
		first = false
		if !n.array {
			k, _ := json.Marshal(c.jsonKey)
			b.Write(k)
			b.WriteByte(':')
		}
		writeJSON(b, c)
	}
	b.WriteByte(close)
}

func writeRecText(b *bytes.Buffer, n *node, prefix string) {
	for _, c := range n.children {
		if c.notRecursive {
			continue
		}
		p := prefix + c.name
		if c.dir {
			writeRecText(b, c, p+"/")
			continue
		}
		if lines := bytes.Split([]byte(c.text), []byte{'\n'}); c.json != nil && c.json[0] == '[' && len(lines) > 1 {
			for _, l := range lines {
				if len(l) > 0 {
					b.WriteString(p)
					b.WriteByte(' ')
					b.Write(l)
					b.WriteByte('\n')
				}
			}
			continue
		}
		b.WriteString(p)
		b.WriteByte(' ')
		b.WriteString(c.text)
		b.WriteByte('\n')
	}
}
