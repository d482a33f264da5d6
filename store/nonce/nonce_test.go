package nonce

import (
	"fmt"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var t0 = time.Unix(1_700_000_000, 0)

const window = 2 * time.Hour

// At a bound a new triple is refused and no live one is forgotten; a SecretId at its own bound does not
// stop another; expired triples make room again.
func TestRecordBounds(t *testing.T) {
	r := New(Limits{PerSecret: 3, Total: 5})
	key := func(secret string, n int) Key { return KeyOf(secret, t0.Unix(), strconv.Itoa(n)) }
	for n := range 3 {
		require.NoError(t, r.UseNonce(key("flood", n), t0, window))
	}
	assert.ErrorIs(t, r.UseNonce(key("flood", 3), t0, window), ErrFull, "per SecretId")
	for n := range 3 {
		assert.ErrorIs(t, r.UseNonce(key("flood", n), t0, window), ErrReplay, "still remembered at the bound")
	}
	require.NoError(t, r.UseNonce(key("calm", 0), t0, window))
	require.NoError(t, r.UseNonce(key("calm", 1), t0, window))
	assert.ErrorIs(t, r.UseNonce(key("third", 0), t0, window), ErrFull, "in total")
	assert.Equal(t, 5, r.Len())

	later := t0.Add(window + 2*time.Second)
	require.NoError(t, r.UseNonce(KeyOf("flood", later.Unix(), "3"), later, window), "the expired made room")
	assert.Equal(t, 1, r.Len())
}

func TestRecordExpiry(t *testing.T) {
	r := New(DefaultLimits())
	k := KeyOf("id", t0.Unix(), "1")
	require.NoError(t, r.UseNonce(k, t0, window))
	assert.ErrorIs(t, r.UseNonce(k, t0.Add(window), window), ErrReplay, "at the edge of the window")
	assert.False(t, k.Expired(t0.Add(window), window))
	assert.True(t, k.Expired(t0.Add(window+time.Second), window))
	// A Timestamp ahead of the clock lives until a window after it.
	ahead := KeyOf("id", t0.Unix()+3600, "1")
	require.NoError(t, r.UseNonce(ahead, t0, window))
	assert.ErrorIs(t, r.UseNonce(ahead, t0.Add(window+time.Minute), window), ErrReplay)
}

// Only a durable record keeps what it accepted for the store to take, and a failed write hands it back.
func TestPending(t *testing.T) {
	mem := New(DefaultLimits())
	require.NoError(t, mem.UseNonce(KeyOf("id", 1, "1"), t0, window))
	assert.Empty(t, mem.TakePending())

	d := NewDurable(DefaultLimits())
	a, b := KeyOf("id", t0.Unix(), "1"), KeyOf("id", t0.Unix(), "2")
	require.NoError(t, d.UseNonce(a, t0, window))
	assert.ErrorIs(t, d.UseNonce(a, t0, window), ErrReplay)
	assert.Equal(t, []Key{a}, d.TakePending())
	require.NoError(t, d.UseNonce(b, t0, window))
	d.Requeue([]Key{a})
	assert.Equal(t, []Key{a, b}, d.TakePending())
	assert.False(t, d.HasPending())
}

func TestNumber(t *testing.T) {
	for _, c := range []struct {
		in   string
		want uint64
	}{{"1", 1}, {"65535", 65535}, {"9223372036854775807", 1<<63 - 1}} {
		assert.Equal(t, c.want, Number(c.in), c.in)
	}
	for _, in := range []string{"9223372036854775808", "-1", "abc", "", "1e3"} {
		assert.NotZero(t, Number(in)&(1<<63), "%q maps above every decimal Nonce", in)
	}
}

func FuzzNumber(f *testing.F) {
	for _, s := range []string{"1", "0", "9223372036854775807", "9223372036854775808", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n := Number(s)
		if v, err := strconv.ParseUint(s, 10, 64); err == nil && v < 1<<63 {
			require.Equal(t, v, n)
			return
		}
		require.NotZero(t, n&(1<<63))
		require.Equal(t, n, Number(s), "stable")
	})
}

// BenchmarkRecordMemory reports the heap a record holds per triple at its default bounds' scale.
func BenchmarkRecordMemory(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("triples=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			var perKey float64
			for range b.N {
				runtime.GC()
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				r := New(Limits{PerSecret: n, Total: n})
				for i := range n {
					if err := r.UseNonce(Key{Secret: 1, Timestamp: t0.Unix(), Nonce: uint64(i)}, t0, window); err != nil {
						b.Fatal(err)
					}
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				perKey = float64(after.HeapAlloc-before.HeapAlloc) / float64(n)
				runtime.KeepAlive(r)
			}
			b.ReportMetric(perKey, "bytes/triple")
		})
	}
}
