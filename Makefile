# sgsim — see README.md. Every target works on a fresh Debian machine with Go; `make generate` also needs
# clang/llvm/libbpf-dev (the generated BPF objects are committed, so nothing else does).
GO          ?= go
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
BIN         := bin/sgsim
DEMO        := testdata/demo.json

.PHONY: build test demo lint bench generate fuzz clean

build:
	$(GO) build -o $(BIN) ./cmd/sgsim

# The whole suite, race detector on. Kernel (BPF, netns) tests need root; under CI they must not skip.
test:
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 9m ./...

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

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

bench: build
	$(GO) test -run '^$$' -bench . -benchmem ./...

generate:
	$(GO) generate ./...

clean:
	rm -rf bin
