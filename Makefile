# sgsim — see README.md. Every target works on a fresh Debian machine with Go; `make generate` also needs
# clang/llvm/libbpf-dev (the generated BPF objects are committed, so nothing else does).
GO          ?= go
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
BIN         := bin/sgsim
DEMO        := testdata/demo.json

SHELL       := /bin/bash
.SHELLFLAGS := -eo pipefail -c

.PHONY: build test test-deps soak demo demo-host fleet-demo lint bench generate clean

build:
	$(GO) build -o $(BIN) ./cmd/sgsim

# The whole suite, race detector on. Kernel (BPF, netns) tests need root; under CI they must not skip.
# ./... leaves out testdata/, whose programs (the demo drivers, the capture generator) are vetted by name.
TESTDATA_PROGRAMS := ./testdata/gen ./testdata/demohost ./testdata/fleetdemo
test: test-deps
	$(GO) vet ./... $(TESTDATA_PROGRAMS)
	$(GO) test -race -count=1 -timeout 9m ./...

# The tools the tests drive besides Go, command:Debian package; a fresh Debian machine has few of them.
# Run as root with apt-get, the missing ones are installed; otherwise they are named, and the tests that
# need them fail (or, not as root, skip with the kernel tests).
TEST_TOOLS := ip:iproute2 tc:iproute2 iptables-legacy:iptables nft:nftables systemd-analyze:systemd \
	setpriv:util-linux nsenter:util-linux losetup:mount fsfreeze:util-linux mkfs.ext4:e2fsprogs
test-deps:
	@missing=$$(for t in $(TEST_TOOLS); do PATH=$$PATH:/usr/sbin:/sbin command -v $${t%%:*} >/dev/null || echo $${t#*:}; done | sort -u | tr '\n' ' '); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing $$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else echo "missing packages for the tests: $$missing"; fi

# The reliability suite run long (32 clients, 20 SIGKILLs, 3 s of load between kills); `make test` runs it
# short (16 clients, 4 kills).
soak:
	SGSIM_SOAK=1 $(GO) test -race -count=1 -timeout 30m -v -run . ./internal/reliability/

demo: build
	@echo "== compiled tables of the demo topology ($(DEMO))"
	$(BIN) compile --topology $(DEMO)
	@echo "== explained checks"
	$(BIN) check --topology $(DEMO) --eni eni-web1 --direction ingress --protocol tcp --remote 203.0.113.7 --port 80
	$(BIN) check --topology $(DEMO) --eni eni-web1 --direction ingress --protocol tcp --remote 198.18.66.9 --port 80
	$(BIN) check --topology $(DEMO) --eni eni-web2 --direction ingress --protocol tcp --remote 198.18.5.1 --port 22
	$(BIN) check --topology $(DEMO) --eni eni-web1 --direction ingress --protocol tcp --remote 198.18.5.1 --port 22
	$(BIN) check --topology $(DEMO) --eni eni-db1 --direction ingress --protocol tcp --remote 198.18.1.11 --port 5432
	$(BIN) check --topology $(DEMO) --eni eni-db1 --direction ingress --protocol tcp --remote 198.18.3.10 --port 5432
	$(BIN) check --topology $(DEMO) --eni eni-db1 --direction egress --protocol udp --remote 198.18.1.10 --port 53
	$(BIN) check --topology $(DEMO) --eni eni-spare --direction ingress --protocol icmp --remote 198.18.1.10
	@echo "== replay of the demo capture (testdata/pcaps/demo.pcap), checked against its expectations"
	$(BIN) replay --topology $(DEMO) --pcap testdata/pcaps/demo.pcap --expect testdata/pcaps/demo.expect.yaml
	@echo "== what-if: lift the lockdown on eni-web2"
	$(BIN) diff --topology $(DEMO) --pcap testdata/pcaps/demo.pcap --apply 'tencent:ModifySecurityGroupsOfNetworkInterface?networkInterfaceSet.0.networkInterfaceId=eni-web2&networkInterfaceSet.0.sgIds.0=sg-web&networkInterfaceSet.0.sgIds.1=sg-ssh'

# What a host operator sees in a minute (root): two namespaces as VMs on veths, serve --dataplane ebpf
# --guard, ENIs created through the API after the veths, real traffic allowed and refused, sgsim flows
# naming the rule that dropped it, a rule change taking effect; everything is removed afterwards.
demo-host: build
	$(GO) run ./testdata/demohost

# A fleet on this machine: an embedded etcd, two API replicas and three agents (Go dataplane), no root.
fleet-demo: build
	$(GO) run ./testdata/fleetdemo --sgsim $(BIN)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./... $(TESTDATA_PROGRAMS)
	$(GO) run $(STATICCHECK) ./... $(TESTDATA_PROGRAMS)

# Every benchmark, one run on this machine, then bench/REPORT.md and its plots (needs root for the BPF and
# network-namespace peers).
BENCH_OUT := bench/bench.txt
bench: build
	$(GO) test -run '^$$' -bench 'Classifier$$|Linear$$' -benchmem -timeout 20m ./dataplane/ | tee $(BENCH_OUT)
	$(GO) test -run '^$$' -bench 'Run$$|PacketCost$$' -benchtime 300x -timeout 20m ./bpf/ | tee -a $(BENCH_OUT)
	$(GO) test -run '^$$' -bench 'Load$$|TableMemory$$' -benchtime 5x -timeout 20m ./bpf/ | tee -a $(BENCH_OUT)
	$(GO) test -run '^$$' -bench PeerUDP -benchtime 1x -timeout 20m ./bench/peers/ | tee -a $(BENCH_OUT)
	$(GO) test -run '^$$' -bench PeerUpdate -benchtime 1x -timeout 20m ./bench/peers/ | tee -a $(BENCH_OUT)
	$(GO) test -run '^$$' -bench ModifyToEnforced -benchtime 300x -timeout 20m ./api/ | tee -a $(BENCH_OUT)
	$(GO) test -run '^$$' -bench ModifyBigPolicy -benchtime 20x -timeout 20m ./api/ | tee -a $(BENCH_OUT)
	$(GO) test -run '^$$' -bench Replay -benchtime 3x -cpu 1 -timeout 20m ./replay/ | tee -a $(BENCH_OUT)
	$(GO) test -run '^$$' -bench 'ENIPut|LinkAttach|ENIChurn' -benchtime 200x -timeout 20m ./node/ | tee -a $(BENCH_OUT)
	$(GO) test -run '^$$' -bench 'ChangeEnforced|AgentRestart' -benchtime 20x -timeout 20m ./agent/ | tee -a $(BENCH_OUT)
	$(GO) test -run '^$$' -bench . -benchmem -timeout 20m ./packet/ ./conntrack/ ./compiler/ | tee -a $(BENCH_OUT)
	$(GO) run ./bench/report -in $(BENCH_OUT) -out bench/REPORT.md -notes bench/READING.md \
		-compare 'Matching cost per packet vs rules (ns)=Classifier:p50-ns/lookup,Linear:ns/lookup,Run:ns/pkt' \
		-ratio 'Linear/Classifier:ns/lookup' \
		-versus 'PeerUDP:pkt/s:sgsim-tc' -versus 'PeerUDP:path-cpu-ns/pkt:sgsim-tc' \
		-versus 'PeerUpdate:enforce-p50-ms:sgsim-api' -versus 'PeerUpdate:call-p50-ms:sgsim-api'

generate:
	$(GO) generate ./...

clean:
	rm -rf bin
