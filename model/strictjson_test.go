package model_test

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/model"
)

type inner struct {
	Name string `json:"name"`
}

type Embedded struct {
	Shared string `json:"shared"`
}

type outer struct {
	Embedded
	IP       string           `json:"ip"`
	UpperIP  string           `json:"IP"`
	List     []inner          `json:"list"`
	ByName   map[string]inner `json:"byName"`
	Dir      model.Direction  `json:"dir"`
	Anything any              `json:"anything"`
	Skipped  string           `json:"-"`
}

// TestCheckKeys: keys must be spelt as their fields' names, once per object, at every depth, and no
// object may be null; a key that names one of two fields differing in case exactly is that field.
func TestCheckKeys(t *testing.T) {
	for _, tc := range []struct {
		doc, err string
		offset   int64
	}{
		{doc: `{"ip":"a","IP":"b","shared":"s","list":[{"name":"x"}],"byName":{"k":{"name":"y"}},"dir":"ingress","anything":{"NAME":1,"NAME":2}}`},
		{doc: `{"list":[{"name":"x"},{"Name":"y"}]}`, err: `list[1]: key "Name": must be written "name"`, offset: 23},
		{doc: `{"byName":{"k":{"name":"x","name":"y"}}}`, err: `byName.k: key "name" given twice`, offset: 27},
		{doc: `{"Shared":"s"}`, err: `key "Shared": must be written "shared"`, offset: 1},
		{doc: `{"list":[null]}`, err: "list[0]: null is not a JSON object", offset: 9},
		{doc: `null`, err: "null is not a JSON object"},
		{doc: `{"list":null,"byName":null}`},
	} {
		t.Run(tc.doc, func(t *testing.T) {
			var v outer
			require.NoError(t, json.Unmarshal([]byte(tc.doc), &v))
			err := model.CheckKeys([]byte(tc.doc), &v)
			if tc.err == "" {
				require.NoError(t, err)
				return
			}
			require.EqualError(t, err, tc.err)
			var ke *model.KeyError
			require.ErrorAs(t, err, &ke)
			assert.Equal(t, tc.offset, ke.Offset, "the offending key's (or null's) first byte")
		})
	}
}
