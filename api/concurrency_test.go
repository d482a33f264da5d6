package api

import (
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/compiler"
)

// sameDesc reports whether every row of sg in t carries one desc (one version of the SG's rules).
func sameDesc(entries []compiler.Entry, sg string) (string, bool) {
	desc := ""
	for _, e := range entries {
		if e.SgID != sg {
			continue
		}
		if desc == "" {
			desc = e.Rule.Desc
		} else if e.Rule.Desc != desc {
			return desc + " vs " + e.Rule.Desc, false
		}
	}
	return desc, true
}

// Writers change sg-web's rules and move two ENIs together while readers check that every table they see
// is one version: all of sg-web's rows from one call, and both ENIs in the same SG order.
// It stays whole: the writers and readers run together over one API.
func TestConcurrentWritersAndReaders(t *testing.T) {
	a := newTestAPI(t)
	const rounds = 25
	var done atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan string, 100)
	// Start from rules that all carry one desc (the demo's differ).
	require.Equal(t, 0, a.tc("Action", ActModifyPolicy, "sgId", "sg-web", "ingress.0.action", "ACCEPT", "ingress.0.desc", "init").Code)

	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := range rounds {
			kv := []string{"Action", ActModifyPolicy, "sgId", "sg-web"}
			for j := range 10 {
				p := "ingress." + strconv.Itoa(j) + "."
				kv = append(kv, p+"ipProtocol", "tcp", p+"portRange", strconv.Itoa(80+j), p+"action", "ACCEPT", p+"desc", fmt.Sprintf("v%d", i))
			}
			if r := a.tc(kv...); r.Code != 0 {
				errs <- r.Message
			}
		}
	}()
	go func() {
		defer wg.Done()
		for i := range rounds {
			first, second := "sg-web", "sg-ssh"
			if i%2 == 0 {
				first, second = second, first
			}
			r := a.tc("Action", ActModifyENISGs,
				"networkInterfaceSet.0.networkInterfaceId", "eni-web1", "networkInterfaceSet.0.sgIds.0", first, "networkInterfaceSet.0.sgIds.1", second,
				"networkInterfaceSet.1.networkInterfaceId", "eni-web2", "networkInterfaceSet.1.sgIds.0", first, "networkInterfaceSet.1.sgIds.1", second)
			if r.Code != 0 {
				errs <- r.Message
			}
		}
	}()
	var readers sync.WaitGroup
	var reads atomic.Int64
	for range 4 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for !done.Load() {
				snap := a.ctrl.Engine().Snapshot()
				w1, _ := snap.ENI("eni-web1")
				w2, _ := snap.ENI("eni-web2")
				if w1.Tables.Ingress.Entries[0].SgID != w2.Tables.Ingress.Entries[0].SgID {
					errs <- "eni-web1 and eni-web2 from different calls in one snapshot"
				}
				if d, ok := sameDesc(w1.Tables.Ingress.Entries, "sg-web"); !ok {
					errs <- "mixed table: " + d
				}
				_, body := a.get("/sgsim/v1/enis/eni-web2/table")
				var tab TableResponse
				if err := json.Unmarshal([]byte(body), &tab); err != nil {
					errs <- err.Error()
					continue
				}
				descs := map[string]bool{}
				for _, e := range tab.Ingress {
					if e.SgID == "sg-web" {
						descs[e.Desc] = true
					}
				}
				if len(descs) > 1 {
					errs <- fmt.Sprintf("mixed table over HTTP: %v", descs)
				}
				a.check("eni-web1", "ingress", "tcp", "198.18.1.1", 85)
				reads.Add(1)
			}
		}()
	}
	wg.Wait()
	done.Store(true)
	readers.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	assert.Positive(t, reads.Load())
	d, ok := sameDesc(a.ctrl.Engine().Snapshot().ENIs()["eni-web1"].Tables.Ingress.Entries, "sg-web")
	require.True(t, ok)
	assert.Equal(t, fmt.Sprintf("v%d", rounds-1), d)
	assert.Equal(t, uint64(2+2*rounds), a.ctrl.View().Generation)
}
