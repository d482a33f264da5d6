package model

import (
	"bytes"
	"encoding"
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
)

// KeyError is a key of a JSON document that encoding/json takes but a strict reading refuses.
type KeyError struct {
	Offset int64  // the key's first byte (for null where an object belongs, the null's), from 0
	Path   string // the object it is in, as errors name places ("securityGroups[0].ingress[1]"); "" at the top
	Msg    string
}

func (e *KeyError) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

var (
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// CheckKeys walks data, one JSON value that has decoded into v (a pointer) with unknown fields
// disallowed, and refuses what encoding/json lets through into structs at any depth: a key spelt in
// another case than its field's ("APPID" fills appId), a key given twice in one object (the last
// would win), and null where an object belongs. The error is a *KeyError.
//
// It scans the bytes itself: the decoding has checked the syntax, and a json.Decoder's tokens would
// cost several times the decoding on a big topology. Values whose type holds no struct are skipped.
func CheckKeys(data []byte, v any) error {
	w := keyScan{data: data, types: map[reflect.Type]*typeInfo{}}
	return w.value(reflect.TypeOf(v).Elem())
}

// pathStep is one step of the path to the value being walked: a key, or an element's index.
type pathStep struct {
	key   string // "" for an element
	index int
}

type keyScan struct {
	data  []byte
	pos   int
	path  []pathStep                 // rendered only for an error
	types map[reflect.Type]*typeInfo // what the scan has worked out of each type it met
}

func (w *keyScan) pathString() string {
	var b strings.Builder
	for _, st := range w.path {
		switch {
		case st.key == "":
			b.WriteString("[" + strconv.Itoa(st.index) + "]")
		case b.Len() > 0:
			b.WriteString("." + st.key)
		default:
			b.WriteString(st.key)
		}
	}
	return b.String()
}

func (w *keyScan) space() {
	for w.pos < len(w.data) && strings.IndexByte(" \t\r\n", w.data[w.pos]) >= 0 {
		w.pos++
	}
}

// byteAt is the byte at pos, after white space; 0 at the end.
func (w *keyScan) byteAt() byte {
	w.space()
	if w.pos >= len(w.data) {
		return 0
	}
	return w.data[w.pos]
}

func (w *keyScan) fail(at int, format string, args ...any) error {
	return &KeyError{Offset: int64(at), Path: w.pathString(), Msg: fmt.Sprintf(format, args...)}
}

// value walks the value at pos, of Go type t.
func (w *keyScan) value(t reflect.Type) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	info := w.typeInfo(t)
	c := w.byteAt()
	switch {
	case !info.hasStruct:
		return w.skip()
	case c == 'n':
		if t.Kind() == reflect.Struct {
			return w.fail(w.pos, "null is not a JSON object")
		}
		return w.skip()
	case t.Kind() == reflect.Struct && c == '{':
		return w.object(info)
	case (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) && c == '[':
		w.pos++
		for i := 0; w.byteAt() != ']'; i++ {
			if w.byteAt() == ',' {
				w.pos++
			}
			if err := w.step(pathStep{index: i}, t.Elem()); err != nil {
				return err
			}
		}
		w.pos++
		return nil
	case t.Kind() == reflect.Map && c == '{':
		w.pos++
		for w.byteAt() != '}' {
			if w.byteAt() == ',' {
				w.pos++
			}
			w.space()
			kb, err := w.key()
			if err != nil {
				return err
			}
			if err := w.step(pathStep{key: string(kb)}, t.Elem()); err != nil {
				return err
			}
		}
		w.pos++
		return nil
	}
	return w.skip()
}

// step walks the value at pos, of type t, one step st down the path.
func (w *keyScan) step(st pathStep, t reflect.Type) error {
	w.path = append(w.path, st)
	err := w.value(t)
	w.path = w.path[:len(w.path)-1]
	return err
}

// object walks the object at pos ('{'), which decodes into the struct of info.
func (w *keyScan) object(info *typeInfo) error {
	w.pos++
	var seen uint64           // by field index, for the first 64 fields
	var seenMore map[int]bool // the others
	for w.byteAt() != '}' {
		if w.byteAt() == ',' {
			w.pos++
		}
		w.space()
		at := w.pos
		kb, err := w.key()
		if err != nil {
			return err
		}
		f, exact := info.fields[string(kb)]
		name := f.name
		if !exact {
			for n, fi := range info.fields {
				if strings.EqualFold(n, string(kb)) { // as encoding/json matches a key to a field when none is exact
					name, f = n, fi
				}
			}
		}
		switch {
		case name == "":
			return w.fail(at, "json: unknown field %q", kb)
		case !exact:
			return w.fail(at, "key %q: must be written %q", kb, name)
		case f.index < 64 && seen&(1<<f.index) != 0, seenMore[f.index]:
			return w.fail(at, "key %q given twice", kb)
		}
		if f.index < 64 {
			seen |= 1 << f.index
		} else {
			if seenMore == nil {
				seenMore = map[int]bool{}
			}
			seenMore[f.index] = true
		}
		if err := w.step(pathStep{key: name}, f.typ); err != nil {
			return err
		}
	}
	w.pos++
	return nil
}

// key reads a key and the ':' after it, and returns the key's bytes, unescaped.
func (w *keyScan) key() ([]byte, error) {
	start := w.pos
	if err := w.skip(); err != nil {
		return nil, err
	}
	raw := w.data[start:w.pos]
	k := raw
	if len(raw) >= 2 && bytes.IndexByte(raw, '\\') < 0 {
		k = raw[1 : len(raw)-1]
	} else {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("key at byte %d: %w", start+1, err)
		}
		k = []byte(s)
	}
	if w.byteAt() != ':' {
		return nil, fmt.Errorf("byte %d: want ':' after a key", w.pos+1)
	}
	w.pos++
	return k, nil
}

// skip moves pos past the value at it (or, at a ',' or ':', past that byte's value).
func (w *keyScan) skip() error {
	c := w.byteAt()
	start := w.pos
	switch c {
	case '"':
		for w.pos++; w.pos < len(w.data); w.pos++ {
			switch w.data[w.pos] {
			case '\\':
				w.pos++
			case '"':
				w.pos++
				return nil
			}
		}
	case '{', '[':
		depth := 0
		for w.pos < len(w.data) {
			switch w.data[w.pos] {
			case '"':
				if err := w.skip(); err != nil {
					return err
				}
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					w.pos++
					return nil
				}
			}
			w.pos++
		}
	case 0:
	default:
		for w.pos < len(w.data) && strings.IndexByte(",}] \t\r\n", w.data[w.pos]) < 0 {
			w.pos++
		}
		return nil
	}
	return fmt.Errorf("byte %d: the value does not end", start+1)
}

// typeInfo is what the scan needs of a Go type: whether a struct is anywhere inside it (else its
// values are skipped), and for a struct its fields by JSON name.
type typeInfo struct {
	hasStruct bool
	fields    map[string]field
}

// field is a struct field as the scan sees it: its JSON name, its number among the struct's JSON
// fields and its type.
type field struct {
	name  string
	index int
	typ   reflect.Type
}

func (w *keyScan) typeInfo(t reflect.Type) *typeInfo {
	if info, ok := w.types[t]; ok {
		return info
	}
	info := &typeInfo{hasStruct: hasStruct(t, map[reflect.Type]bool{})}
	if t.Kind() == reflect.Struct {
		info.fields = jsonFields(t)
	}
	w.types[t] = info
	return info
}

// decodesItself tells whether values of t are decoded by t's own methods (or are []byte, a base64
// string): the scan does not look inside them.
func decodesItself(t reflect.Type) bool {
	return t.Kind() == reflect.Interface || reflect.PointerTo(t).Implements(jsonUnmarshaler) ||
		reflect.PointerTo(t).Implements(textUnmarshaler) ||
		(t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Uint8)
}

func hasStruct(t reflect.Type, seen map[reflect.Type]bool) bool {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if decodesItself(t) || seen[t] {
		return false
	}
	seen[t] = true
	switch t.Kind() {
	case reflect.Struct:
		return true
	case reflect.Slice, reflect.Array, reflect.Map:
		return hasStruct(t.Elem(), seen)
	}
	return false
}

// jsonFields maps the JSON names of t's fields (those of untagged embedded structs and struct
// pointers included, as encoding/json promotes them, outer fields first) to the fields, numbered.
func jsonFields(t reflect.Type) map[string]field {
	types := map[string]reflect.Type{}
	var order []string
	collectFields(t, types, &order)
	out := make(map[string]field, len(order))
	for i, n := range order {
		out[n] = field{name: n, index: i, typ: types[n]}
	}
	return out
}

func collectFields(t reflect.Type, types map[string]reflect.Type, order *[]string) {
	var embedded []reflect.Type
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		ft := f.Type
		if f.Anonymous && ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch {
		case f.Tag.Get("json") == "-" || (!f.IsExported() && !f.Anonymous):
			continue
		case f.Anonymous && name == "" && ft.Kind() == reflect.Struct:
			embedded = append(embedded, ft)
			continue
		case name == "":
			name = f.Name
		}
		if _, ok := types[name]; !ok {
			*order = append(*order, name)
		}
		types[name] = f.Type
	}
	for _, e := range embedded { // shallower fields win, as in encoding/json
		inner := map[string]reflect.Type{}
		var innerOrder []string
		collectFields(e, inner, &innerOrder)
		for _, n := range innerOrder {
			if _, shadowed := types[n]; !shadowed {
				types[n] = inner[n]
				*order = append(*order, n)
			}
		}
	}
}
