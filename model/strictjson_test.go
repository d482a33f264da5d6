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

// TestCheckKeys: keys must be spelt as their fields' names, once per object, at every depth, and no
// object may be null; a key that names one of two fields differing in case exactly is that field.
func TestCheckKeys(t *testing.T) {
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

// BenchmarkParseTopology reads a topology of one 100k-rule SG (as SPEC §4 lets a file hold): with
// encoding/json alone, with CheckKeys alone and with ParseTopology (the decoding, CheckKeys and the
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
		require.NoError(b, model.CheckKeys(data, &t))
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

// FuzzCheckKeys: what encoding/json writes of a value passes CheckKeys; the same document with one of
// its keys spelt in another case is refused at that key, naming the spelling it must have.
func FuzzCheckKeys(f *testing.F) {
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
		require.NoError(t, model.CheckKeys(data, &back))

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
		err = model.CheckKeys(bad, &again)
		require.ErrorContains(t, err, `key "Name": must be written "name"`)
		var ke *model.KeyError
		require.ErrorAs(t, err, &ke)
		require.Equal(t, int64(i), ke.Offset)
	})
}
