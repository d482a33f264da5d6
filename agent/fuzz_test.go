package agent

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
)

// objectID is the ID of an object decodeObject returns, with the kind it is of.
func objectID(t *testing.T, obj any) (store.Kind, string) {
	switch o := obj.(type) {
	case model.Account:
		return store.KindAccount, o.AppID
	case model.SecurityGroup:
		return store.KindSG, o.SgID
	case model.NetworkInterface:
		return store.KindENI, o.NetworkInterfaceID
	}
	require.Failf(t, "not an object of a share", "%T", obj)
	return 0, ""
}

// FuzzDecodeObject: an object of a share encoded as the store writes it (its JSON) decodes to itself;
// and a record of any kind, ID and bytes decodes to an object of its kind holding its key's ID, which
// re-encoded decodes to itself again, or is refused with an error naming the record's key (a kind no
// share holds, the admin tokens included, saying so).
func FuzzDecodeObject(f *testing.F) {
	f.Add(byte(store.KindAccount), "1250000001", []byte(`{"appId":"1250000001","huaweiTokens":["t"]}`), uint8(0), "A", "x")
	f.Add(byte(store.KindSG), "sg-1", []byte(`{"sgId":"sg-1","appId":"A","ingress":[{"sgId":"sg-2","action":"ACCEPT"}],"egress":null}`), uint8(1), "A", "é <b>&</b>")
	f.Add(byte(store.KindSG), "sg-1", []byte(`{"sgId":"sg-2","appId":"A"}`), uint8(2), "A", "10.0.0.1")
	f.Add(byte(store.KindENI), "eni-1", []byte(`{"networkInterfaceId":"eni-1","appId":"A","privateIpAddresses":["10.0.0.1"],"sgIds":["sg-1"],"host":"h1"}`), uint8(2), "A", "fd00::1")
	f.Add(byte(store.KindENI), "eni-1", []byte(`null`), uint8(2), "", "")
	f.Add(byte(store.KindENI), "eni-1", []byte(`{"networkInterfaceId":"eni-1","sgIds":"sg-1"}`), uint8(2), "", "")
	f.Add(byte(store.KindAdmin), "adminTokens", []byte(`["tok"]`), uint8(0), "", "\xff")
	f.Add(byte('x'), "A", []byte(`{"appId":"A"}`), uint8(0), "", "")
	f.Fuzz(func(t *testing.T, kind byte, id string, value []byte, pick uint8, appID, text string) {
		// encoding/json writes strings as UTF-8: the store's objects are (they come in as JSON).
		id, appID, text = strings.ToValidUTF8(id, "?"), strings.ToValidUTF8(appID, "?"), strings.ToValidUTF8(text, "?")
		var obj any
		var k store.Kind
		switch pick % 3 {
		case 0:
			k, obj = store.KindAccount, model.Account{AppID: id, SecretID: text, HuaweiTokens: []string{text, appID}}
		case 1:
			k, obj = store.KindSG, model.SecurityGroup{SgID: id, AppID: appID, ProjectID: int(pick), SgName: text,
				Ingress: []model.Rule{{IPProtocol: "tcp", SgID: text, PortRange: "22", Action: "ACCEPT", Desc: text}}, Egress: []model.Rule{}}
		default:
			k, obj = store.KindENI, model.NetworkInterface{NetworkInterfaceID: id, AppID: appID, PrivateIPAddresses: []string{text},
				SgIDs: []string{appID, text}, Host: text, HostInterface: id}
		}
		encoded, err := json.Marshal(obj)
		require.NoError(t, err)
		got, err := decodeObject(store.Record{Key: store.Key{Kind: k, ID: id}, Seq: 1, Revision: 2, Value: encoded})
		require.NoError(t, err)
		require.Equal(t, obj, got, "decoded from %s", encoded)

		rec := store.Record{Key: store.Key{Kind: store.Kind(kind), ID: id}, Seq: 1, Revision: 2, Value: value}
		got, err = decodeObject(rec)
		if err != nil {
			require.ErrorContains(t, err, rec.Key.String())
			if rec.Kind != store.KindAccount && rec.Kind != store.KindSG && rec.Kind != store.KindENI {
				require.ErrorContains(t, err, "not an object of a share")
			}
			return
		}
		gotKind, gotID := objectID(t, got)
		require.Equal(t, rec.Key, store.Key{Kind: gotKind, ID: gotID}, "decoded from %q", value)
		again, err := json.Marshal(got)
		require.NoError(t, err)
		rec.Value = again
		back, err := decodeObject(rec)
		require.NoError(t, err, "re-encoded %s", again)
		require.Equal(t, got, back, "re-encoded %s", again)
	})
}
