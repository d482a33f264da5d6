package model

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"
)

// JSONError is a key or value of a JSON document that a strict reading refuses, and where it is.
type JSONError struct {
	Offset int64  // the key's first byte (for a value, the value's), from 0
	Path   string // the object it is in, as errors name places ("securityGroups[0].ingress[1]"); "" at the top
	Msg    string
}

func (e *JSONError) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

var (
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// CheckJSON walks data, one syntactically valid JSON value meant for v (a pointer), and refuses what
// encoding/json lets through into structs at any depth: a key spelt in another case than its field's
// ("APPID" fills appId), a key given twice in one object (the last would win), and null where an
// object belongs. It also refuses, where they are, what encoding/json refuses without saying where: a
// key no field has (with unknown fields disallowed), and a value of the wrong JSON type or an integer
// out of its field's range. The error is a *JSONError.
//
// It scans the bytes itself: a json.Decoder's tokens would cost several times the decoding on a big
// topology. Values of types that decode themselves (json.Unmarshaler, encoding.TextUnmarshaler, any,
// []byte) are skipped.
func CheckJSON(data []byte, v any) error {
	w := keyScan{data: data, types: map[reflect.Type]*typeInfo{}}
	return w.value(reflect.TypeOf(v).Elem())
}

// PlaceDecodeError returns, for err, encoding/json's error decoding the first JSON value of data into
// v, the error CheckJSON finds in that value, which says where (encoding/json's unknown field errors
// do not, its type errors name Go types); err itself when the value is not valid JSON or CheckJSON
// finds nothing.
func PlaceDecodeError(data []byte, v any, err error) error {
	var syn *json.SyntaxError
	if errors.As(err, &syn) {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	var first json.RawMessage
	if dec.Decode(&first) != nil {
		return err
	}
	placed := CheckJSON(first, v)
	var je *JSONError
	if !errors.As(placed, &je) {
		return err
	}
	je.Offset += dec.InputOffset() - int64(len(first))
	return je
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
	types map[reflect.Type]*typeInfo // what the scan worked out of each type it met
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
	return &JSONError{Offset: int64(at), Path: w.pathString(), Msg: fmt.Sprintf(format, args...)}
}

// value walks the value at pos, of Go type t.
func (w *keyScan) value(t reflect.Type) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	info := w.info(t)
	c := w.byteAt()
	if info.self {
		return w.skip()
	}
	if err := w.kind(t, info.want, c); err != nil {
		return err
	}
	switch {
	case c == 'n':
		if t.Kind() == reflect.Struct {
			return w.fail(w.pos, "null is not a JSON object")
		}
		return w.skip()
	case t.Kind() == reflect.Struct:
		return w.object(info.fields)
	case t.Kind() == reflect.Slice || t.Kind() == reflect.Array:
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
	case t.Kind() == reflect.Map:
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

// jsonKind is a JSON value's type, as its first byte tells.
type jsonKind uint8

const (
	kindOther jsonKind = iota // not a JSON value's first byte
	kindString
	kindNumber
	kindBool
	kindNull
	kindArray
	kindObject
)

func kindOf(c byte) jsonKind {
	switch {
	case c == '"':
		return kindString
	case c == '-' || (c >= '0' && c <= '9'):
		return kindNumber
	case c == 't' || c == 'f':
		return kindBool
	case c == 'n':
		return kindNull
	case c == '[':
		return kindArray
	case c == '{':
		return kindObject
	}
	return kindOther
}

func (k jsonKind) String() string {
	return [...]string{"something else", "a string", "a number", "true or false", "null", "an array", "an object"}[k]
}

// kind refuses the value at pos, which begins with c, where encoding/json does not decode it into t,
// whose values are JSON values of kind want: another kind (but null, which decodes into anything;
// value refuses it for a struct), an integer t cannot hold, a string for a json.Number that holds no
// number.
func (w *keyScan) kind(t reflect.Type, want jsonKind, c byte) error {
	got := kindOf(c)
	switch {
	case got == kindNull:
		return nil
	case t == jsonNumber && got == kindString:
		return w.numberString()
	case got != want:
		if want == kindNumber && t.Kind() != reflect.Float32 && t.Kind() != reflect.Float64 && t != jsonNumber {
			return w.fail(w.pos, "expected an integer, got %s", got)
		}
		return w.fail(w.pos, "expected %s, got %s", want, got)
	case want != kindNumber || t == jsonNumber:
		return nil
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		lit := w.literal()
		if _, err := strconv.ParseFloat(lit, t.Bits()); err != nil {
			return w.fail(w.pos, "the number %s is out of range", lit)
		}
		return nil
	}
	return w.integer(t)
}

var jsonNumber = reflect.TypeFor[json.Number]()

// numberString refuses the string at pos where it does not hold a JSON number, as encoding/json
// does for a json.Number.
func (w *keyScan) numberString() error {
	start := w.pos
	if err := w.skip(); err != nil {
		return err
	}
	raw := w.data[start:w.pos]
	w.pos = start
	var s string
	if err := json.Unmarshal(raw, &s); err != nil || s == "" || !json.Valid([]byte(s)) || kindOf(s[0]) != kindNumber {
		return w.fail(start, "expected a number, got the string %s", raw)
	}
	return nil
}

// literal is the number at pos, left in place.
func (w *keyScan) literal() string {
	end := w.pos
	for end < len(w.data) && strings.IndexByte(",}] \t\r\n", w.data[end]) < 0 {
		end++
	}
	return string(w.data[w.pos:end])
}

// integer refuses the number at pos where encoding/json cannot decode it into t, an integer type.
func (w *keyScan) integer(t reflect.Type) error {
	lit := w.literal()
	var err error
	if t.Kind() >= reflect.Uint && t.Kind() <= reflect.Uintptr {
		_, err = strconv.ParseUint(lit, 10, t.Bits())
	} else {
		_, err = strconv.ParseInt(lit, 10, t.Bits())
	}
	switch {
	case err == nil:
		return nil
	case strings.ContainsAny(lit, ".eE"):
		return w.fail(w.pos, "expected an integer, got %s", lit)
	case t.Kind() >= reflect.Uint && t.Kind() <= reflect.Uintptr:
		return w.fail(w.pos, "%s is out of range: expected an integer from 0 to %d", lit, uint64(1)<<t.Bits()-1)
	}
	least := int64(-1) << (t.Bits() - 1)
	return w.fail(w.pos, "%s is out of range: expected an integer from %d to %d", lit, least, -(least + 1))
}

// step walks the value at pos, of type t, one step st down the path.
func (w *keyScan) step(st pathStep, t reflect.Type) error {
	w.path = append(w.path, st)
	err := w.value(t)
	w.path = w.path[:len(w.path)-1]
	return err
}

// object walks the object at pos ('{'), which decodes into the struct of fields.
func (w *keyScan) object(fields map[string]field) error {
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
		f, exact := fields[string(kb)]
		name := f.name
		if !exact {
			for n, fi := range fields {
				if strings.EqualFold(n, string(kb)) { // as encoding/json matches a key to a field when none is exact
					name, f = n, fi
				}
			}
		}
		switch {
		case name == "":
			return w.fail(at, "unknown field %q", kb)
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
	// Unquoted as encoding/json does (escapes, and invalid UTF-8 as U+FFFD) where it is not plain.
	if len(raw) >= 2 && bytes.IndexByte(raw, '\\') < 0 && utf8.Valid(raw) {
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

// field is a struct field as the scan sees it: its JSON name, its number among the struct's JSON
// fields and its type.
type field struct {
	name  string
	index int
	typ   reflect.Type
}

// typeInfo is what the scan needs of a Go type, worked out once per scan: whether its values decode
// themselves (the scan skips them), the kind of JSON value encoding/json decodes into it, and for a
// struct its fields by JSON name.
type typeInfo struct {
	self   bool
	want   jsonKind
	fields map[string]field
}

func (w *keyScan) info(t reflect.Type) *typeInfo {
	if info, ok := w.types[t]; ok {
		return info
	}
	info := &typeInfo{self: decodesItself(t)}
	switch t.Kind() {
	case reflect.String:
		info.want = kindString
		if t == jsonNumber {
			info.want = kindNumber
		}
	case reflect.Bool:
		info.want = kindBool
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64, reflect.Uint, reflect.Uint8,
		reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr, reflect.Float32, reflect.Float64:
		info.want = kindNumber
	case reflect.Slice, reflect.Array:
		info.want = kindArray
	case reflect.Map:
		info.want = kindObject
	case reflect.Struct:
		info.want = kindObject
		info.fields = jsonFields(t)
	default: // encoding/json decodes into no other kind of type (chan, func, complex)
		info.self = true
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
