package model_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"
	"time"

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

type Pointed struct {
	Deep string `json:"deep"`
}

type outer struct {
	Embedded
	*Pointed
	Raw      []byte           `json:"raw"`
	IP       string           `json:"ip"`
	UpperIP  string           `json:"IP"`
	List     []inner          `json:"list"`
	ByName   map[string]inner `json:"byName"`
	Dir      model.Direction  `json:"dir"`
	Anything any              `json:"anything"`
	Skipped  string           `json:"-"`
}

// TestCheckJSON: keys must be spelt as their fields' names, once per object, at every depth, and no
// object may be null; a key that names one of two fields differing in case exactly is that field.
func TestCheckJSON(t *testing.T) {
	for _, tc := range []struct {
		doc, err string
		offset   int64
	}{
		{doc: `{"ip":"a","IP":"b","shared":"s","list":[{"name":"x"}],"byName":{"k":{"name":"y"}},"dir":"ingress","anything":{"NAME":1,"NAME":2}}`},
		{doc: `{"raw":"AAEC","deep":"d","list":[{"name":"x\"y"}],"ip":"\u0041"}`},
		{doc: `{"Deep":"d"}`, err: `key "Deep": must be written "deep"`, offset: 1},
		{doc: `{"list":[{"name":"x"}],"list":[]}`, err: `key "list" given twice`, offset: 23},
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
			err := model.CheckJSON([]byte(tc.doc), &v)
			if tc.err == "" {
				require.NoError(t, err)
				return
			}
			require.EqualError(t, err, tc.err)
			var ke *model.JSONError
			require.ErrorAs(t, err, &ke)
			assert.Equal(t, tc.offset, ke.Offset, "the offending key's (or null's) first byte")
		})
	}
}

// BenchmarkParseTopology reads a topology of one 100k-rule SG (as SPEC §4 lets a file hold): with
// encoding/json alone, with CheckJSON alone and with ParseTopology (the decoding, CheckJSON and the
// model's checks); it reports the last two as ratios to the decoding in the same run.
func BenchmarkParseTopology(b *testing.B) {
	topo := model.Topology{Accounts: []model.Account{{AppID: "A"}},
		NetworkInterfaces: []model.NetworkInterface{{NetworkInterfaceID: "eni-1", AppID: "A",
			PrivateIPAddresses: []string{"198.18.0.1"}, SgIDs: []string{"sg-big"}}}}
	g := model.SecurityGroup{SgID: "sg-big", AppID: "A"}
	for i := range 100_000 {
		g.Ingress = append(g.Ingress, model.Rule{IPProtocol: "tcp", CidrIP: fmt.Sprintf("10.%d.%d.0/24", i/256%256, i%256),
			PortRange: fmt.Sprintf("%d", 1+i%65535), Action: "ACCEPT", Desc: "rule"})
	}
	topo.SecurityGroups = []model.SecurityGroup{g}
	data, err := json.Marshal(topo)
	require.NoError(b, err)
	b.ReportAllocs()
	var decode, keys, parse time.Duration
	for b.Loop() {
		start := time.Now()
		var t model.Topology
		require.NoError(b, json.Unmarshal(data, &t))
		decode += time.Since(start)
		start = time.Now()
		require.NoError(b, model.CheckJSON(data, &t))
		keys += time.Since(start)
		start = time.Now()
		_, err := model.ParseTopology("big.json", data)
		require.NoError(b, err)
		parse += time.Since(start)
	}
	b.ReportMetric(float64(len(data))/1e6, "MB")
	b.ReportMetric(float64(keys)/float64(decode), "keys-x-decode")
	b.ReportMetric(float64(parse)/float64(decode), "parse-x-decode")
}

// typed has a field of each kind CheckJSON checks values of (and none that decodes itself).
type typed struct {
	Name   string           `json:"name"`
	I8     int8             `json:"i8"`
	U16    uint16           `json:"u16"`
	I64    int64            `json:"i64"`
	F32    float32          `json:"f32"`
	F64    float64          `json:"f64"`
	Flag   bool             `json:"flag"`
	Num    json.Number      `json:"num"`
	Strs   []string         `json:"strs"`
	Pair   [2]int           `json:"pair"`
	List   []inner          `json:"list"`
	Ptr    *inner           `json:"ptr"`
	ByName map[string]inner `json:"byName"`
	Counts map[string]uint8 `json:"counts"`
}

// TestCheckJSONTypes: a value of the wrong JSON type, or an integer its field cannot hold, is refused
// where it is, naming the type wanted and the one given.
func TestCheckJSONTypes(t *testing.T) {
	for _, tc := range []struct {
		doc, err string
		offset   int64
	}{
		{doc: `{"name":"n","i8":-128,"u16":65535,"i64":-9223372036854775808,"f32":1.5e38,"f64":1e308,"flag":true,` +
			`"num":"-1.5e3","strs":["a",null],"pair":[1,2],"list":[{"name":"x"}],"ptr":{"name":"p"},"byName":{"k":{}},"counts":{"a":255}}`},
		{doc: `{"num":12}`},
		{doc: `{"name":1}`, err: "name: expected a string, got a number", offset: 8},
		{doc: `{"i8":128}`, err: "i8: 128 is out of range: expected an integer from -128 to 127", offset: 6},
		{doc: `{"u16":-1}`, err: "u16: -1 is out of range: expected an integer from 0 to 65535", offset: 7},
		{doc: `{"i64":1e3}`, err: "i64: expected an integer, got 1e3", offset: 7},
		{doc: `{"i64":"1"}`, err: "i64: expected an integer, got a string", offset: 7},
		{doc: `{"f32":1e39}`, err: "f32: the number 1e39 is out of range", offset: 7},
		{doc: `{"f64":[]}`, err: "f64: expected a number, got an array", offset: 7},
		{doc: `{"flag":0}`, err: "flag: expected true or false, got a number", offset: 8},
		{doc: `{"num":"x"}`, err: `num: expected a number, got the string "x"`, offset: 7},
		{doc: `{"num":true}`, err: "num: expected a number, got true or false", offset: 7},
		{doc: `{"strs":["a",{}]}`, err: "strs[1]: expected a string, got an object", offset: 13},
		{doc: `{"pair":{"0":1}}`, err: "pair: expected an array, got an object", offset: 8},
		{doc: `{"list":[[]]}`, err: "list[0]: expected an object, got an array", offset: 9},
		{doc: `{"ptr":"x"}`, err: "ptr: expected an object, got a string", offset: 7},
		{doc: `{"byName":[]}`, err: "byName: expected an object, got an array", offset: 10},
		{doc: `{"counts":{"a":256}}`, err: "counts.a: 256 is out of range: expected an integer from 0 to 255", offset: 15},
		{doc: `{"list":[{"nom":"x"}]}`, err: `list[0]: unknown field "nom"`, offset: 10},
		{doc: "{\"list\":[{\"n\xffme\":\"x\"}]}", err: "list[0]: unknown field \"n\ufffdme\"", offset: 10}, // as encoding/json reads the key
	} {
		t.Run(tc.doc, func(t *testing.T) {
			dec := json.NewDecoder(bytes.NewReader([]byte(tc.doc)))
			dec.DisallowUnknownFields()
			var v typed
			decodeErr := dec.Decode(&v)
			err := model.CheckJSON([]byte(tc.doc), &typed{})
			if tc.err == "" {
				require.NoError(t, decodeErr)
				require.NoError(t, err)
				return
			}
			require.Error(t, decodeErr, "encoding/json refuses it too")
			require.EqualError(t, err, tc.err)
			var je *model.JSONError
			require.ErrorAs(t, err, &je)
			assert.Equal(t, tc.offset, je.Offset, "the offending value's (or key's) first byte")
			assert.Equal(t, err, model.PlaceDecodeError([]byte(tc.doc), &typed{}, decodeErr))
		})
	}
}

// FuzzPlaceDecodeError: whatever valid JSON encoding/json refuses to decode into a struct (unknown
// fields disallowed), CheckJSON refuses too, so PlaceDecodeError always says where.
func FuzzPlaceDecodeError(f *testing.F) {
	for _, seed := range []string{`{"name":"n","i8":1,"list":[{"name":"x"}],"byName":{"k":{"name":"y"}}}`,
		`{"u16":70000}`, `{"num":"1e5"}`, `{"pair":[1,2,3]}`, `{"strs":[1]}`, `{"f32":-3.5e38}`, `[]`, `{"counts":{"a":-1}}`} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, doc string) {
		if !json.Valid([]byte(doc)) {
			return
		}
		dec := json.NewDecoder(bytes.NewReader([]byte(doc)))
		dec.DisallowUnknownFields()
		var v typed
		decodeErr := dec.Decode(&v)
		checkErr := model.CheckJSON([]byte(doc), &typed{})
		if decodeErr != nil {
			require.Error(t, checkErr, "%q: encoding/json refused it (%v)", doc, decodeErr)
			var je *model.JSONError
			require.ErrorAs(t, checkErr, &je)
			require.GreaterOrEqual(t, je.Offset, int64(0))
			require.Less(t, je.Offset, int64(len(doc)))
		}
	})
}

// FuzzCheckJSON: what encoding/json writes of a value passes CheckJSON; the same document with one of
// its keys spelt in another case is refused at that key, naming the spelling it must have.
func FuzzCheckJSON(f *testing.F) {
	f.Add("a", "b", uint8(2), uint8(1))
	f.Add(`"name":`, "\\u0041", uint8(3), uint8(0))
	f.Fuzz(func(t *testing.T, s1, s2 string, n, which uint8) {
		v := outer{Embedded: Embedded{Shared: s2}, Pointed: &Pointed{Deep: s1}, IP: s1, Raw: []byte(s2),
			List: make([]inner, n%4), ByName: map[string]inner{"k": {Name: s2}}}
		for i := range v.List {
			v.List[i].Name = s1
		}
		data, err := json.Marshal(v)
		require.NoError(t, err)
		var back outer
		require.NoError(t, json.Unmarshal(data, &back))
		require.NoError(t, model.CheckJSON(data, &back))

		// The keys "name" of the inner objects: where a quote begins the key (a value's quotes are
		// escaped) and ':' ends it.
		var at []int
		for i := 0; i+7 <= len(data); i++ {
			if string(data[i:i+7]) == `"name":` && (i == 0 || data[i-1] != '\\') {
				at = append(at, i)
			}
		}
		if len(at) == 0 {
			return
		}
		i := at[int(which)%len(at)]
		bad := bytes.Clone(data)
		bad[i+1] = 'N'
		var again outer
		require.NoError(t, json.Unmarshal(bad, &again), "encoding/json takes it")
		err = model.CheckJSON(bad, &again)
		require.ErrorContains(t, err, `key "Name": must be written "name"`)
		var ke *model.JSONError
		require.ErrorAs(t, err, &ke)
		require.Equal(t, int64(i), ke.Offset)
	})
}
