// Package strictyaml reads YAML (or JSON) documents as strictly as the project's JSON inputs: through
// JSON, with unknown fields refused and every key and value checked where it is (model.CheckJSON), so
// an error names the path of what was wrong ("steps[0].packets[1].sport: …").
package strictyaml

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"sigs.k8s.io/yaml"

	"github.com/sgsim/sgsim/model"
)

// Decode decodes data, one YAML or JSON document, into v (a pointer). Errors name the path in the
// document; YAML syntax errors carry their line.
func Decode(data []byte, v any) error {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(js)) == 0 || bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
		return errors.New("the document is empty")
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return model.PlaceDecodeError(js, v, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("more than one document")
	}
	return model.CheckJSON(js, v)
}

// IsMapping tells whether data, a YAML or JSON document, is a mapping (false when it does not parse).
func IsMapping(data []byte) bool {
	js, err := yaml.YAMLToJSON(data)
	return err == nil && bytes.HasPrefix(bytes.TrimSpace(js), []byte("{"))
}
