package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
)

// decodeObject decodes body, which must be one JSON object and nothing else, into v, a pointer to a
// struct of plain (not embedded) fields. encoding/json alone would take a key spelt in another case
// for a field's ("ENI" for "eni"), let the last of a repeated key win, leave what follows the object
// unread ("{…}}" too) and take null for an object; each is refused here. An error names the key, the
// field, or the byte (counted from 1) where the body went wrong.
func decodeObject(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var se *json.SyntaxError
		switch {
		case errors.Is(err, io.EOF):
			return errors.New("the body is empty")
		case errors.Is(err, io.ErrUnexpectedEOF):
			return fmt.Errorf("unexpected end of JSON input after byte %d", len(body))
		case errors.As(err, &se):
			return fmt.Errorf("byte %d: %w", se.Offset, err) // the offending byte is the Offset-th
		}
		return err
	}
	if err := exactFields(body, reflect.TypeOf(v).Elem()); err != nil {
		return err
	}
	end := dec.InputOffset()
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		more := len(body) - len(bytes.TrimLeft(body[end:], " \t\r\n")) + 1
		return fmt.Errorf("byte %d: one JSON object expected, more follows", more)
	}
	return nil
}

// exactFields walks the top-level keys of the first JSON value of body, which decoded into a t with
// unknown fields disallowed: it must be an object whose every key is one of t's JSON names exactly,
// once.
func exactFields(body []byte, t reflect.Type) error {
	var names []string
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch {
		case !f.IsExported() || name == "-":
			continue
		case name == "":
			name = f.Name
		}
		names = append(names, name)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	// Only null decodes into a struct and is no object.
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return errors.New("null is not a JSON object")
	}
	seen := make(map[string]bool, len(names))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		k, _ := tok.(string)
		var field string
		for _, n := range names {
			if strings.EqualFold(n, k) { // as encoding/json matches keys to fields
				field = n
			}
		}
		switch {
		case field == "":
			return fmt.Errorf("json: unknown field %q", k)
		case k != field:
			return fmt.Errorf("key %q: must be written %q", k, field)
		case seen[k]:
			return fmt.Errorf("key %q given twice", k)
		}
		seen[k] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return err
		}
	}
	return nil
}
