package model

import (
	"bytes"
	"encoding"
	"encoding/json"
	"fmt"
	"reflect"
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
func CheckKeys(data []byte, v any) error {
	w := keyWalker{data: data, dec: json.NewDecoder(bytes.NewReader(data))}
	return w.value(reflect.TypeOf(v).Elem(), "")
}

type keyWalker struct {
	data []byte
	dec  *json.Decoder
}

// next returns the offset of the next token's first byte.
func (w *keyWalker) next() int64 {
	off := w.dec.InputOffset()
	for off < int64(len(w.data)) && strings.IndexByte(" \t\r\n,:", w.data[off]) >= 0 {
		off++
	}
	return off
}

// value walks one JSON value of Go type t, at path.
func (w *keyWalker) value(t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() == reflect.Interface || reflect.PointerTo(t).Implements(jsonUnmarshaler) ||
		reflect.PointerTo(t).Implements(textUnmarshaler) {
		var skip json.RawMessage
		return w.dec.Decode(&skip)
	}
	off := w.next()
	tok, err := w.dec.Token()
	if err != nil {
		return err
	}
	if tok == nil {
		if t.Kind() == reflect.Struct {
			return &KeyError{Offset: off, Path: path, Msg: "null is not a JSON object"}
		}
		return nil
	}
	switch t.Kind() {
	case reflect.Struct:
		return w.object(t, path)
	case reflect.Slice, reflect.Array:
		for i := 0; w.dec.More(); i++ {
			if err := w.value(t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		_, err = w.dec.Token()
		return err
	case reflect.Map:
		for w.dec.More() {
			k, err := w.dec.Token()
			if err != nil {
				return err
			}
			if err := w.value(t.Elem(), joinPath(path, fmt.Sprint(k))); err != nil {
				return err
			}
		}
		_, err = w.dec.Token()
		return err
	}
	return nil // a scalar: its one token is read
}

// object walks the keys of an object (its '{' read) that decodes into struct type t.
func (w *keyWalker) object(t reflect.Type, path string) error {
	fields := jsonFields(t)
	seen := map[string]bool{}
	for w.dec.More() {
		off := w.next()
		tok, err := w.dec.Token()
		if err != nil {
			return err
		}
		k, _ := tok.(string)
		name, ft := k, fields[k]
		if ft == nil {
			name = ""
			for n, typ := range fields {
				if strings.EqualFold(n, k) { // as encoding/json matches a key to a field when none is exact
					name, ft = n, typ
				}
			}
		}
		switch {
		case name == "":
			return &KeyError{Offset: off, Path: path, Msg: fmt.Sprintf("json: unknown field %q", k)}
		case k != name:
			return &KeyError{Offset: off, Path: path, Msg: fmt.Sprintf("key %q: must be written %q", k, name)}
		case seen[k]:
			return &KeyError{Offset: off, Path: path, Msg: fmt.Sprintf("key %q given twice", k)}
		}
		seen[k] = true
		if err := w.value(ft, joinPath(path, k)); err != nil {
			return err
		}
	}
	_, err := w.dec.Token()
	return err
}

// jsonFields maps the JSON names of t's fields (those of untagged embedded structs included, as
// encoding/json promotes them) to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch {
		case name == "-" || (!f.IsExported() && !f.Anonymous):
			continue
		case f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct:
			for n, typ := range jsonFields(f.Type) {
				out[n] = typ
			}
			continue
		case name == "":
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}
