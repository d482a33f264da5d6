package api

import (
	"cmp"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
)

// form is a request's parameters as name=value pairs stably sorted by name, so every value of a name
// keeps its arrival order (query before body, as url.Values appends them). A sorted list serves the tree
// and the signature without a map of tens of thousands of names, and costs no sort at all when the
// client sent its names sorted, as the signature's string makes clients do.
type form struct {
	keys, vals []string // every pair, sorted by key
	names      []string // distinct keys in sorted order
	at         []int    // names[i]'s values are vals[at[i]:at[i+1]]; nil when every name is given once
}

// add appends a pair in arrival order; done must follow the last add.
func (f *form) add(k, v string) {
	f.keys = append(f.keys, k)
	f.vals = append(f.vals, v)
}

// done sorts the pairs (unless they arrived sorted) and groups them by name.
func (f *form) done() {
	// One comparison per neighbouring pair tells both whether the keys are sorted and whether one repeats.
	sorted, repeats := true, false
	for i := 1; i < len(f.keys) && sorted; i++ {
		switch strings.Compare(f.keys[i-1], f.keys[i]) {
		case 1:
			sorted = false
		case 0:
			repeats = true
		}
	}
	if !sorted {
		idx := make([]int, len(f.keys))
		for i := range idx {
			idx[i] = i
		}
		slices.SortStableFunc(idx, func(a, b int) int { return cmp.Compare(f.keys[a], f.keys[b]) })
		keys, vals := make([]string, len(idx)), make([]string, len(idx))
		for i, j := range idx {
			keys[i], vals[i] = f.keys[j], f.vals[j]
		}
		f.keys, f.vals = keys, vals
	}
	f.names, f.at = f.keys, nil
	for i := 1; i < len(f.keys) && (repeats || !sorted); i++ {
		if f.keys[i] != f.keys[i-1] {
			continue
		}
		// A name given twice: names can no longer share the keys' array, and values need at.
		f.names = slices.Clone(f.keys[:i])
		f.at = make([]int, 0, len(f.keys)+1)
		for j := range i {
			f.at = append(f.at, j)
		}
		for j := i; j < len(f.keys); j++ {
			if f.keys[j] != f.keys[j-1] {
				f.names = append(f.names, f.keys[j])
				f.at = append(f.at, j)
			}
		}
		f.at = append(f.at, len(f.keys))
		return
	}
}

// formOf is the form of params.
func formOf(params url.Values) *form {
	f := &form{}
	for _, k := range slices.Sorted(maps.Keys(params)) {
		for _, v := range params[k] {
			f.add(k, v)
		}
	}
	f.done()
	return f
}

// values returns every value of names[i].
func (f *form) values(i int) []string {
	if f.at == nil {
		return f.vals[i : i+1]
	}
	return f.vals[f.at[i]:f.at[i+1]]
}

// get returns the first value of k, "" when absent (url.Values.Get).
func (f *form) get(k string) string {
	if i, ok := slices.BinarySearch(f.names, k); ok {
		return f.values(i)[0]
	}
	return ""
}

// flatNode is a decoded Tencent flattened parameter: `a.0.b=v` becomes a tree a → 0 → b = v.
type flatNode struct {
	name     string // full dotted name, for errors
	seg      string // last segment of name: the key under the parent
	value    string
	hasValue bool
	children []*flatNode // in creation order; nil for a value
}

// child returns the child named s, or nil. The tree's readers ask small nodes (a rule's fields, the
// top level) or nodes bounded by the parameter limit.
func (n *flatNode) child(s string) *flatNode {
	for _, c := range n.children {
		if c.seg == s {
			return c
		}
	}
	return nil
}

// buildChild is child while the tree is built in sorted name order. Every child created after s then
// has s as a strict prefix (`s!x` sorts between `s` and `s.y`), so the search walks back only over
// those: one step for the next index of a list of thousands.
func (n *flatNode) buildChild(s string) *flatNode {
	for i := len(n.children) - 1; i >= 0; i-- {
		c := n.children[i]
		if c.seg == s {
			return c
		}
		if !strings.HasPrefix(c.seg, s) {
			return nil
		}
	}
	return nil
}

// decodeFlat builds the tree of every parameter of f, in f's sorted name order. A name used twice, an
// empty name segment, or a name that is both a value and a parent is an error naming the parameter; the
// first in sorted order is reported.
func decodeFlat(f *form) (*flatNode, error) {
	root := &flatNode{}
	// Nodes come from chunks rather than one allocation each: a big policy has tens of thousands.
	var arena []flatNode
	newNode := func(name, seg string) *flatNode {
		if len(arena) == cap(arena) {
			arena = make([]flatNode, 0, max(16, len(f.names)/4))
		}
		arena = append(arena, flatNode{name: name, seg: seg})
		return &arena[len(arena)-1]
	}
	// The nodes along the previous name, and where its segments end: a sorted name mostly shares its
	// leading segments with the previous one (ingress.7.action, ingress.7.cidrIp), and those are taken
	// from here rather than looked up again.
	var prev string
	var path []*flatNode
	var ends []int
	for i, k := range f.names {
		vs := f.values(i)
		if len(vs) != 1 {
			return nil, fmt.Errorf("parameter %q given %d times", k, len(vs))
		}
		n, start, depth := root, 0, 0
		for ; depth < len(path); depth++ {
			end := ends[depth]
			// Only a parent segment of k is shared, and only a node without a value (a value node
			// below which k goes on is an error the general step reports).
			if end >= len(k) || k[end] != '.' || k[:end] != prev[:end] || path[depth].hasValue {
				break
			}
			n, start = path[depth], end+1
		}
		path, ends, prev = path[:depth], ends[:depth], k
		// Segments and node names are substrings of k: no allocation per segment.
		for {
			end := len(k)
			if i := strings.IndexByte(k[start:], '.'); i >= 0 {
				end = start + i
			}
			s := k[start:end]
			if s == "" {
				return nil, fmt.Errorf("parameter %q: empty name segment", k)
			}
			if n.hasValue {
				return nil, fmt.Errorf("parameter %q: %q is a value, not a list or object", k, n.name)
			}
			c := n.buildChild(s)
			if c == nil {
				c = newNode(k[:end], s)
				if n.children == nil {
					n.children = make([]*flatNode, 0, 4)
				}
				n.children = append(n.children, c)
			}
			n = c
			path, ends = append(path, c), append(ends, end)
			if end == len(k) {
				break
			}
			start = end + 1
		}
		if len(n.children) > 0 || n.hasValue {
			return nil, fmt.Errorf("parameter %q is both a value and a list or object", k)
		}
		n.value, n.hasValue = vs[0], true
	}
	return root, nil
}

// str returns the value of child k ("" and false when absent); a child that is a list is an error.
func (n *flatNode) str(k string) (string, bool, error) {
	c := n.child(k)
	if c == nil {
		return "", false, nil
	}
	if !c.hasValue {
		return "", false, fmt.Errorf("parameter %q must be a single value", c.name)
	}
	return c.value, true, nil
}

// list returns the elements of child k in index order; indexes must be dense from 0 (SPEC §4).
func (n *flatNode) list(k string) ([]*flatNode, error) {
	c := n.child(k)
	if c == nil {
		return nil, nil
	}
	if c.hasValue {
		return nil, fmt.Errorf("parameter %q must be a list (%s.0, %s.1, …)", c.name, c.name, c.name)
	}
	out := make([]*flatNode, len(c.children))
	for _, e := range c.children {
		i, ok := listIndex(e.seg)
		if !ok || i >= len(out) {
			return nil, fmt.Errorf("parameter %q: list indexes must be dense from 0, got %q", e.name, e.seg)
		}
		out[i] = e
	}
	return out, nil
}

// listIndex reads a list index written as strconv.Itoa writes a non-negative int: digits, no sign, no
// leading zero.
func listIndex(s string) (int, bool) {
	if s == "" || len(s) > 9 || (s[0] == '0' && len(s) > 1) {
		return 0, false
	}
	i := 0
	for j := 0; j < len(s); j++ {
		c := s[j]
		if c < '0' || c > '9' {
			return 0, false
		}
		i = 10*i + int(c-'0')
	}
	return i, true
}

// strList returns a list of single values (e.g. sgIds.0, sgIds.1).
func (n *flatNode) strList(k string) ([]string, error) {
	l, err := n.list(k)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(l))
	for i, e := range l {
		if !e.hasValue {
			return nil, fmt.Errorf("parameter %q must be a single value", e.name)
		}
		out[i] = e.value
	}
	return out, nil
}
