package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/sgsim/sgsim/model"
)

// decodeObject decodes body, which must be one JSON object and nothing else, into v, a pointer to a
// struct. encoding/json alone would take a key spelt in another case for a field's ("ENI" for "eni"),
// let the last of a repeated key win, leave what follows the object unread ("{…}}" too) and take null
// for an object; each is refused here (model.CheckJSON for the keys and values). An error names the
// byte (counted from 1) where the body went wrong and, for a key or value, its path.
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
		return placed(model.PlaceDecodeError(body, v, err))
	}
	if err := model.CheckJSON(body, v); err != nil {
		return placed(err)
	}
	end := dec.InputOffset()
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		more := len(body) - len(bytes.TrimLeft(body[end:], " \t\r\n")) + 1
		return fmt.Errorf("byte %d: one JSON object expected, more follows", more)
	}
	return nil
}

// placed prefixes a *model.JSONError with its byte, counted from 1.
func placed(err error) error {
	var je *model.JSONError
	if errors.As(err, &je) {
		return fmt.Errorf("byte %d: %w", je.Offset+1, err)
	}
	return err
}
