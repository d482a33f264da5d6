package etcdstore

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
)

// The fuzz targets of this file decode what etcd holds without an etcd: a Store with no client is
// enough for the functions that turn keys and values into records, changes, intents and shares.

const fuzzPrefix = "/sgsim"

// decoder is a Store with no client under fuzzPrefix, logging into log.
func decoder(log *bytes.Buffer, maxOps int) *Store {
	if log == nil {
		log = &bytes.Buffer{}
	}
	return &Store{prefix: fuzzPrefix, maxOps: maxOps, maxBytes: DefaultMaxRequestBytes,
		log: slog.New(slog.NewJSONHandler(log, nil)), leases: map[int64]clientv3.LeaseID{}, paying: map[string]bool{}}
}

var fuzzKinds = []store.Kind{store.KindAccount, store.KindSG, store.KindENI, store.KindAdmin}

// FuzzParseObjectKey: an object's key as the Store writes it parses back to the object's Key (an
// empty ID is no object's, and is refused); and any key parses to a Key of a known kind and a
// non-empty ID whose key is exactly those bytes, or is refused with an error quoting the key.
func FuzzParseObjectKey(f *testing.F) {
	for _, k := range []string{"/sgsim/objects/sg/sg-1", "/sgsim/objects/account/1250000001", "/sgsim/objects/admin/adminTokens",
		"/sgsim/objects/eni/a/b", "/sgsim/objects/generation", "/sgsim/objects/eni/", "/sgsim/objects/nic/eni-1", "/other/objects/sg/sg-1",
		"/sgsim/index/members/sg-1", "/sgsim/objects/sg"} {
		f.Add([]byte(k), uint8(1), "sg-1")
	}
	f.Add([]byte("\xff"), uint8(0), "a/b\x00\xff")
	f.Add([]byte(""), uint8(3), "")
	f.Fuzz(func(t *testing.T, key []byte, kind uint8, id string) {
		s := decoder(nil, DefaultMaxTxnOps)
		k := store.Key{Kind: fuzzKinds[int(kind)%len(fuzzKinds)], ID: id}
		written := s.objectKey(k)
		got, err := s.parseObjectKey([]byte(written))
		if id == "" {
			require.ErrorContains(t, err, fmt.Sprintf("%q", written))
		} else {
			require.NoError(t, err, written)
			require.Equal(t, k, got)
		}

		got, err = s.parseObjectKey(key)
		if err != nil {
			require.ErrorContains(t, err, fmt.Sprintf("%q", key))
			require.Equal(t, store.Key{}, got)
			return
		}
		require.Contains(t, fuzzKinds, got.Kind)
		require.NotEmpty(t, got.ID)
		require.Equal(t, string(key), s.objectKey(got), "the key of what %q parses to", key)
	})
}

// FuzzDecodeRecord: a record as the Store writes it (its key, its envelope) decodes to itself at the
// revision of its key; and any key and value at any revision decode to a record of the key's object
// at that revision holding a JSON value, which the Store's encoding writes back to the same record,
// or are refused with an error naming the key (and the revision, once the key is an object's).
func FuzzDecodeRecord(f *testing.F) {
	f.Add([]byte("/sgsim/objects/sg/sg-1"), []byte(`{"seq":3,"object":{"sgId":"sg-1"}}`), int64(7), uint64(3), []byte(`{"sgId":"sg-1"}`), uint8(1), "sg-1")
	f.Add([]byte("/sgsim/objects/admin/adminTokens"), []byte(`{"seq":1,"object":["t"]}`), int64(1), uint64(1), []byte(`["t"]`), uint8(3), "adminTokens")
	f.Add([]byte("/sgsim/objects/eni/eni-1"), []byte(`{"seq":1}`), int64(2), uint64(0), []byte(` null `), uint8(2), "eni-1")
	f.Add([]byte("/sgsim/objects/eni/eni-1"), []byte(`{"seq":-1,"object":{}}`), int64(2), uint64(math.MaxUint64), []byte(`{}`), uint8(2), "a/b")
	f.Add([]byte("/sgsim/objects/account/A"), []byte(`{"SEQ":2,"Object":"x","object":{"appId":"A"}}`), int64(math.MaxInt64), uint64(2), []byte(`1e400`), uint8(0), "A")
	f.Add([]byte("/sgsim/objects/generation"), []byte(`{"nextSeq":3,"hosts":["h1"]}`), int64(4), uint64(9), []byte(`"\u2028<&>"`), uint8(0), "\xff")
	f.Fuzz(func(t *testing.T, key, value []byte, rev int64, seq uint64, object []byte, kind uint8, id string) {
		s := decoder(nil, DefaultMaxTxnOps)
		rev &= math.MaxInt64 // etcd's revisions are never negative

		if k := (store.Key{Kind: fuzzKinds[int(kind)%len(fuzzKinds)], ID: id}); id != "" && json.Valid(object) {
			want := store.Record{Key: k, Seq: seq, Revision: uint64(rev), Value: object}
			kv := &mvccpb.KeyValue{Key: []byte(s.objectKey(k)), Value: []byte(encodeEnvelope(want)), ModRevision: rev}
			got, err := s.decodeRecord(kv)
			require.NoError(t, err, "%s", kv.Value)
			want.Value = bytes.TrimSpace(object) // JSON's white space around the object is not part of it
			require.Equal(t, want, got)
		}

		kv := &mvccpb.KeyValue{Key: key, Value: value, ModRevision: rev}
		got, err := s.decodeRecord(kv)
		if err != nil {
			if k, kerr := s.parseObjectKey(key); kerr != nil {
				require.Equal(t, kerr, err)
			} else {
				require.ErrorContains(t, err, k.String())
				require.ErrorContains(t, err, fmt.Sprintf("revision %d", rev))
			}
			return
		}
		k, err := s.parseObjectKey(key)
		require.NoError(t, err)
		require.Equal(t, k, got.Key)
		require.Equal(t, uint64(rev), got.Revision)
		require.True(t, json.Valid(got.Value), "the object of %s is not JSON: %q", value, got.Value)
		again, err := s.decodeRecord(&mvccpb.KeyValue{Key: key, Value: []byte(encodeEnvelope(got)), ModRevision: rev})
		require.NoError(t, err, "re-encoded %s", encodeEnvelope(got))
		require.Equal(t, got, again)
	})
}

// FuzzChangeOf: the events of any keys and values up to a commit (the generation's write at rev)
// make a Change of the last event of every key but the generation, puts at rev and deletes each in
// key order, or are refused with an error naming the key at fault.
func FuzzChangeOf(f *testing.F) {
	f.Add([]byte{0, 1, 2, 0x80 | 1, 3, 4}, []byte(`{"seq":1,"object":{"sgId":"sg-1"}}`), int64(9))
	f.Add([]byte{2, 6, 0x80 | 5, 7}, []byte(`{"nextSeq":4,"hosts":[]}`), int64(1))
	f.Add([]byte{0, 0, 0x80, 0}, []byte(`{"seq":2,"object":null}`), int64(3))
	f.Add([]byte{8}, []byte(`{"seq":`), int64(5))
	f.Fuzz(func(t *testing.T, script, value []byte, rev int64) {
		s := decoder(nil, DefaultMaxTxnOps)
		rev &= math.MaxInt64
		keys := []string{s.objectKey(store.Key{Kind: store.KindAccount, ID: "A"}), s.objectKey(store.Key{Kind: store.KindSG, ID: "sg-1"}),
			s.objectKey(store.Key{Kind: store.KindENI, ID: "eni-1"}), s.objectKey(store.Key{Kind: store.KindAdmin, ID: "adminTokens"}),
			s.objectKey(store.Key{Kind: store.KindSG, ID: "a/b"}), s.genKey(), s.objectsPrefix() + "nic/eni-1", s.objectsPrefix() + "sg/",
			s.objectsPrefix() + string(value)}
		// Each byte of script is an event: its low bits the key, its high bit a deletion; a put's value
		// is value cut after as many bytes as the event's place, or whole.
		var events []*clientv3.Event
		for i, b := range script {
			ev := &clientv3.Event{Kv: &mvccpb.KeyValue{Key: []byte(keys[int(b&0x7f)%len(keys)]), ModRevision: rev}}
			if b&0x80 != 0 {
				ev.Type = clientv3.EventTypeDelete
			} else {
				ev.Kv.Value = value[:min(len(value), len(value)*(i+1)/len(script))]
			}
			events = append(events, ev)
		}
		c, err := s.changeOf(uint64(rev), events)
		last := map[string]*clientv3.Event{}
		for _, ev := range events {
			if string(ev.Kv.Key) != s.genKey() {
				last[string(ev.Kv.Key)] = ev
			}
		}
		if err != nil {
			for _, ev := range last {
				_, kerr := s.parseObjectKey(ev.Kv.Key)
				_, derr := s.decodeRecord(ev.Kv)
				if kerr != nil && err.Error() == kerr.Error() || ev.Type != clientv3.EventTypeDelete && derr != nil && err.Error() == derr.Error() {
					return
				}
			}
			require.Failf(t, "refused for no event's fault", "%v", err)
		}
		require.Equal(t, uint64(rev), c.Revision)
		require.True(t, slices.IsSortedFunc(c.Puts, func(a, b store.Record) int { return store.CompareKeys(a.Key, b.Key) }))
		require.True(t, slices.IsSortedFunc(c.Deletes, store.CompareKeys))
		require.Len(t, append(slices.Clone(c.Deletes), keysOfPuts(c.Puts)...), len(last), "one entry per key written")
		for key, ev := range last {
			k, err := s.parseObjectKey([]byte(key))
			require.NoError(t, err)
			if ev.Type == clientv3.EventTypeDelete {
				require.Contains(t, c.Deletes, k)
				continue
			}
			i := slices.IndexFunc(c.Puts, func(r store.Record) bool { return r.Key == k })
			require.GreaterOrEqual(t, i, 0, "%s put", k)
			want, err := s.decodeRecord(ev.Kv)
			require.NoError(t, err)
			want.Revision = uint64(rev)
			require.Equal(t, want, c.Puts[i])
		}
	})
}

func keysOfPuts(puts []store.Record) []store.Key {
	out := make([]store.Key, len(puts))
	for i, r := range puts {
		out[i] = r.Key
	}
	return out
}

// logged keeps the records a Store logs.
type logged struct{ records *[]slog.Record }

func (l logged) Enabled(context.Context, slog.Level) bool { return true }
func (l logged) Handle(_ context.Context, r slog.Record) error {
	*l.records = append(*l.records, r.Clone())
	return nil
}
func (l logged) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l logged) WithGroup(string) slog.Handler      { return l }

// attrs returns a log record's attributes by key.
func attrs(r slog.Record) map[string]slog.Value {
	out := map[string]slog.Value{}
	r.Attrs(func(a slog.Attr) bool {
		out[a.Key] = a.Value
		return true
	})
	return out
}

// FuzzDecodeIntent: the intents a commit (planFeeds) and its split (splitBatches, as payWhole writes
// them) write decode to exactly the hosts they owe, every host once across the commit's feeds and
// its batches; and any key and value at any revision decode to an intent one payment settles (hosts
// named once each, as many as this Store's transactions hold), which re-encoded decodes the same, or
// are left alone with an error logged naming the key, the revision and the fault.
func FuzzDecodeIntent(f *testing.F) {
	f.Add([]byte("/sgsim/feedq/41"), []byte(`["h1","h2","h3"]`), int64(41), "h1,h2,h3,h4,h5,h6,h7,h8,h9,h10,h11", uint8(5), uint8(0))
	f.Add([]byte("/sgsim/feedq/41/2"), []byte(`["h1","h1"]`), int64(43), "a,b/c,é", uint8(7), uint8(3))
	f.Add([]byte("/sgsim/feedq/7"), []byte(`[""]`), int64(9), "", uint8(0), uint8(0))
	f.Add([]byte("/sgsim/feedq/7"), []byte(`null`), int64(9), "x", uint8(1), uint8(200))
	f.Add([]byte("/sgsim/feedq/7/1"), []byte(`["1","2","3","4","5","6","7","8"]`), int64(9), "x", uint8(1), uint8(0))
	f.Add([]byte("/sgsim/feedq/x"), []byte(`{"hosts":["h1"]}`), int64(0), "h1", uint8(2), uint8(0))
	f.Fuzz(func(t *testing.T, key, value []byte, rev int64, text string, opsUsed, limit uint8) {
		maxOps := 8 + int(limit)%24
		var records []slog.Record
		s := decoder(nil, maxOps)
		s.log = slog.New(logged{&records})
		rev &= math.MaxInt64

		hosts := slices.Compact(slices.Sorted(slices.Values(strings.Split(strings.ToValidUTF8(text, "?"), ","))))
		hosts = slices.DeleteFunc(hosts, func(h string) bool { return h == "" })
		plan, err := s.planFeeds(hosts, 1+int(opsUsed)%maxOps, requestSlack, rev)
		if err != nil {
			require.ErrorIs(t, err, ErrTooLarge)
		} else {
			var told []string
			values := map[string][]byte{}
			for _, op := range plan.ops {
				k := string(op.KeyBytes())
				if h, ok := strings.CutPrefix(k, s.feedKey("")); ok {
					told = append(told, h)
				} else {
					values[k] = op.ValueBytes()
				}
			}
			require.Len(t, values, len(plan.owed))
			for _, whole := range plan.owed {
				got, ok := s.decodeIntent(&mvccpb.KeyValue{Key: []byte(whole.key), Value: values[whole.key], ModRevision: rev})
				require.True(t, ok, "%s: %s", whole.key, values[whole.key])
				require.Equal(t, intent{key: s.intentKey(rev), rev: rev, hosts: whole.hosts}, got)
				require.False(t, s.isBatch(got))
				batches, err := s.splitBatches(got.hosts)
				require.NoError(t, err)
				require.LessOrEqual(t, 1+len(batches)-1+len(batches[0]), maxOps, "the split's transaction")
				told = append(told, batches[0]...)
				for i, b := range batches[1:] {
					bk := got.key + "/" + strconv.Itoa(i+1)
					v, err := json.Marshal(b)
					require.NoError(t, err)
					batch, ok := s.decodeIntent(&mvccpb.KeyValue{Key: []byte(bk), Value: v, ModRevision: rev + 1})
					require.True(t, ok, "%s: %s", bk, v)
					require.Equal(t, intent{key: bk, rev: rev + 1, hosts: b}, batch)
					require.True(t, s.isBatch(batch))
					require.LessOrEqual(t, len(b)+1, maxOps, "its payment's transaction")
					told = append(told, b...)
				}
			}
			require.Equal(t, nilIfEmpty(hosts), nilIfEmpty(told), "every host told once")
		}
		require.Empty(t, records)

		got, ok := s.decodeIntent(&mvccpb.KeyValue{Key: key, Value: value, ModRevision: rev})
		if !ok {
			require.Equal(t, intent{}, got)
			require.Len(t, records, 1)
			require.Equal(t, slog.LevelError, records[0].Level)
			a := attrs(records[0])
			require.Equal(t, string(key), a["key"].String())
			require.Equal(t, rev, a["revision"].Int64())
			require.Error(t, a["err"].Any().(error))
			return
		}
		require.Empty(t, records)
		require.Equal(t, string(key), got.key)
		require.Equal(t, rev, got.rev)
		seen := map[string]bool{}
		for _, h := range got.hosts {
			require.NotEmpty(t, h, "%s", value)
			require.False(t, seen[h], "%s named twice in %s", h, value)
			seen[h] = true
		}
		if s.isBatch(got) {
			require.LessOrEqual(t, len(got.hosts)+1, maxOps, "a batch's payment, one transaction: %s", value)
		} else {
			_, err := s.splitBatches(got.hosts)
			require.NoError(t, err, "a whole intent's split")
		}
		again, err := json.Marshal(got.hosts)
		require.NoError(t, err)
		back, ok := s.decodeIntent(&mvccpb.KeyValue{Key: key, Value: again, ModRevision: rev})
		require.True(t, ok, "re-encoded %s", again)
		require.Equal(t, got, back)
	})
}

// FuzzAckView: whatever acknowledgements and registrations of whatever hosts come in (as written or
// deleted, with any value), a wait's view of them is the last word of each: a host counts as acked
// when its last ack, a decimal revision as Ack writes it, is at least the one waited for, as alive
// while its registration stands; hosts not waited for change nothing. The hosts still awaited are
// counted exactly, and the result splits the hosts waited for into pending, down and done, sorted.
func FuzzAckView(f *testing.F) {
	f.Add([]byte{0x00, 0, 0x10, 1, 0x21, 2, 0x31, 0, 0x02, 3}, "h1,h2,h/3", uint64(41), "41,40,0042,-1, 41,x")
	f.Add([]byte{0x13, 0, 0x13, 1, 0x03, 2}, "h1", uint64(math.MaxUint64), "18446744073709551615,18446744073709551616")
	f.Add([]byte{}, ",,", uint64(0), "")
	f.Fuzz(func(t *testing.T, script []byte, hostList string, rev uint64, valueList string) {
		s := decoder(nil, DefaultMaxTxnOps)
		want := strings.Split(hostList, ",")
		hosts := append(slices.Clone(want), "other", "h1x") // the second pair, never waited for
		values := append(strings.Split(valueList, ","), strconv.FormatUint(rev, 10), strconv.FormatUint(rev+1, 10), strconv.FormatUint(rev-1, 10))
		v := newAckView(s, rev, want)
		acked, alive := map[string]bool{}, map[string]bool{}
		// Each event is two bytes: the host (low nibble), an ack or a registration (bit 4), written
		// or deleted (bit 5); the value.
		for i := 0; i+1 < len(script); i += 2 {
			b, val := script[i], values[int(script[i+1])%len(values)]
			h := hosts[int(b&0x0f)%len(hosts)]
			isAck, deleted := b&0x10 != 0, b&0x20 != 0
			key := s.hostKey(h)
			if isAck {
				key = s.ackKey(h)
			}
			kv := &mvccpb.KeyValue{Key: []byte(key), Value: []byte(val)}
			if deleted {
				kv.Value = nil
			}
			v.update(kv, deleted)
			if !slices.Contains(want, h) {
				continue
			}
			if isAck {
				n, err := strconv.ParseUint(val, 10, 64)
				acked[h] = !deleted && err == nil && n >= rev
			} else {
				alive[h] = !deleted
			}
		}
		var pending, down []string
		waiting := map[string]bool{}
		for _, h := range want {
			switch {
			case !alive[h]:
				down = append(down, h)
			case !acked[h]:
				pending = append(pending, h)
				waiting[h] = true
			}
		}
		require.Equal(t, len(waiting), v.waiting, "hosts awaited")
		gotPending, gotDown := v.result()
		require.Equal(t, nilIfEmpty(slices.Compact(slices.Sorted(slices.Values(pending)))), gotPending)
		require.Equal(t, nilIfEmpty(slices.Compact(slices.Sorted(slices.Values(down)))), gotDown)
	})
}

// FuzzShareDecode feeds an agent's share read any bytes as a host index, an ENI record, an SG record
// and a member list. Each is refused with an error naming its key, or decodes: the host index to a
// list that re-encodes to the same; the ENI's SGs and the SGs the SG's rules name to sorted lists
// holding at least what the record's object names (a share never lacks an SG its tables need);
// the member list to what it says, under its SG.
func FuzzShareDecode(f *testing.F) {
	f.Add([]byte(`["eni-1","eni-2"]`), []byte(`{"seq":1,"object":{"networkInterfaceId":"eni-1","sgIds":["sg-2","sg-1","sg-2"]}}`),
		[]byte(`{"seq":2,"object":{"sgId":"sg-1","ingress":[{"sgId":"sg-3","action":"ACCEPT"},{"action":"DROP"}],"egress":[{"sgId":"sg-1"}]}}`),
		[]byte(`[{"id":"eni-1","appId":"A","ips":["10.0.0.1"]}]`), int64(5))
	f.Add([]byte(`null`), []byte(`{"seq":1,"object":5,"object":{"sgIds":["a"]}}`), []byte(`{"object":{"ingress":{}}}`), []byte(`{}`), int64(1))
	f.Add([]byte(`[1]`), []byte(`{"seq":1,"object":{"sgIds":["a"]},"object":{}}`), []byte(`{"seq":1,"object":null}`), []byte(`null`), int64(0))
	f.Add([]byte(``), []byte(`{"seq":1}`), []byte(`{"SEQ":1,"OBJECT":{"EGRESS":[{"SGID":"x"}]}}`), []byte(`[{"ID":"x","ips":null}]`), int64(math.MaxInt64))
	f.Fuzz(func(t *testing.T, hostIndex, eniValue, sgValue, members []byte, rev int64) {
		s := decoder(nil, DefaultMaxTxnOps)
		rev &= math.MaxInt64
		kv := func(key string, value []byte) *mvccpb.KeyValue {
			return &mvccpb.KeyValue{Key: []byte(key), Value: value, ModRevision: rev, CreateRevision: rev}
		}

		index := kv(s.hostIndexKey("h1"), hostIndex)
		if ids, err := indexList([]*mvccpb.KeyValue{index}); err != nil {
			require.ErrorContains(t, err, string(index.Key))
		} else {
			again, err := json.Marshal(ids)
			require.NoError(t, err)
			back, err := indexList([]*mvccpb.KeyValue{kv(s.hostIndexKey("h1"), again)})
			require.NoError(t, err, "re-encoded %s", again)
			require.Equal(t, nilIfEmpty(ids), nilIfEmpty(back))
		}

		r := &shareRead{s: s, cache: &ShareCache{}, got: map[string]*mvccpb.KeyValue{}, rev: rev}
		eni, sg := kv(s.eniKey("eni-1"), eniValue), kv(s.sgKey("sg-1"), sgValue)
		for _, c := range []struct {
			kv    *mvccpb.KeyValue
			of    func([]byte) ([]string, error)
			named func(obj []byte) ([]string, bool)
		}{
			{eni, enisSGs, func(obj []byte) ([]string, bool) {
				var n model.NetworkInterface
				return n.SgIDs, json.Unmarshal(obj, &n) == nil
			}},
			{sg, sgRefs, func(obj []byte) ([]string, bool) {
				var g model.SecurityGroup
				if json.Unmarshal(obj, &g) != nil {
					return nil, false
				}
				var ids []string
				for _, rule := range slices.Concat(g.Ingress, g.Egress) {
					if rule.SgID != "" {
						ids = append(ids, rule.SgID)
					}
				}
				return ids, true
			}},
		} {
			ids, err := r.names([]*mvccpb.KeyValue{c.kv}, c.of)
			if err != nil {
				require.ErrorContains(t, err, string(c.kv.Key))
				continue
			}
			require.True(t, slices.IsSorted(ids))
			require.Equal(t, len(ids), len(slices.Compact(slices.Clone(ids))), "each once: %v", ids)
			rec, err := s.decodeRecord(c.kv)
			if err != nil {
				continue
			}
			if want, ok := c.named(rec.Value); ok {
				for _, id := range want {
					require.Contains(t, ids, id, "named by %s", c.kv.Value)
				}
			}
		}

		list := kv(s.membersKey("sg-1"), members)
		keys := []string{string(eni.Key), string(sg.Key), string(list.Key)}
		for _, k := range keys {
			r.got[k] = map[string]*mvccpb.KeyValue{string(eni.Key): eni, string(sg.Key): sg, string(list.Key): list}[k]
		}
		sh, err := r.share(uint64(rev), []*mvccpb.KeyValue{eni, sg}, []*mvccpb.KeyValue{list}, keys)
		if err != nil { // a record's names its object, a member list's its key
			for _, k := range []string{"network interface eni-1 at revision", "security group sg-1 at revision", "index " + string(list.Key)} {
				if strings.Contains(err.Error(), k) {
					return
				}
			}
			require.Failf(t, "the error names no key", "%v", err)
		}
		var want []Member
		require.NoError(t, json.Unmarshal(members, &want))
		require.Equal(t, map[string][]Member{"sg-1": want}, sh.Members)
		require.Len(t, sh.Records, 2)
		for i, kv := range []*mvccpb.KeyValue{eni, sg} {
			rec, err := s.decodeRecord(kv)
			require.NoError(t, err)
			require.Equal(t, rec, sh.Records[i])
		}
	})
}
