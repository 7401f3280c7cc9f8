# cxr-retrieval. `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CXR := $(BIN)/cxr
MODEL ?=
CHECKPOINT ?=
TARGET ?= local
FP16 ?=
INT8 ?=
FP32 ?=
DEMO_MODEL ?= cxr-mini
MODELS ?=
DATA ?= ../shared/data
TRAIN_OUT ?= .cache/train/cxr-mini

export_flags = $(if $(MODEL),--model $(MODEL)) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) \
	--target $(TARGET) $(if $(FP16),--fp16) $(if $(INT8),--int8) $(if $(FP32),--fp32)

.PHONY: help setup protos client-wheel setup-buf lint-protos export serve serve-detached stop models demo train-default test \
	test-unit bench bench-quick \
	bench-towers bench-gateway bench-faiss bench-scale bench-freshness bench-quality bench-suggestions bench-quantization bench-gpu bench-labeler bench-reports \
	bench-decode bench-refine tune fuzz soak faults clean setup-pacs setup-browser setup-oidc

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

PROTO := protos/cxr/retrieval/v1/retrieval.proto
STUBS := cxr/retrieval/v1/retrieval_pb2.py
CLIENT := clients/python
CLIENT_STUBS := $(CLIENT)/cxr_client/_proto/retrieval_pb2.py
# buf (lint and breaking-change checks of protos/) from npm, whose @bufbuild/buf ships the binary.
BUF_VERSION := 1.75.0
BUF := .cache/npm/node_modules/.bin/buf

setup: $(VENV)/.installed $(STUBS) $(CLIENT_STUBS) ## install everything (pinned, the client package too) into .venv and generate the gRPC stubs

# Real outside parts the tests drive (Debian packages; .ci/run installs them, tests skip with the reason without).
APT_INSTALL = DEBIAN_FRONTEND=noninteractive apt-get install -y -qq
setup-pacs: ## install Orthanc, its DICOMweb plugin and dcmtk (Debian): the PACS the DICOMweb tests start on loopback, the transfer-syntax tests' encoders
	@command -v Orthanc >/dev/null && test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so && \
		command -v dcmcjpls >/dev/null || \
		(apt-get update -qq && $(APT_INSTALL) orthanc orthanc-dicomweb dcmtk >/dev/null) || \
		echo "warning: could not install orthanc orthanc-dicomweb dcmtk: the PACS and transfer-syntax tests will skip"

setup-browser: setup ## install Debian's chromium, which Playwright drives in the search-page test
	@test -x /usr/bin/chromium || (apt-get update -qq && $(APT_INSTALL) chromium >/dev/null) || \
		echo "warning: could not install chromium: the browser tests will skip"

# The OpenID provider the search page's sign-in tests start on loopback: npm's oidc-provider, pinned with its
# lock in tests/support/oidc, installed into .cache (tests/support/oidc_provider.py runs it).
OIDC_DIR := .cache/oidc-provider
OIDC_LOCK := tests/support/oidc/package.json tests/support/oidc/package-lock.json
setup-oidc: ## install the OpenID provider of the sign-in tests (npm's oidc-provider, pinned) into .cache; without node and npm they skip
	@command -v node >/dev/null && command -v npm >/dev/null || \
		(apt-get update -qq && $(APT_INSTALL) nodejs npm >/dev/null) || \
		echo "warning: could not install nodejs and npm: the sign-in tests will skip"
	@if command -v npm >/dev/null; then $(MAKE) -s $(OIDC_DIR)/.installed; fi

$(OIDC_DIR)/.installed: $(OIDC_LOCK)
	mkdir -p $(OIDC_DIR)
	cp $(OIDC_LOCK) $(OIDC_DIR)/
	cd $(OIDC_DIR) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

protos: $(STUBS) $(CLIENT_STUBS) ## generate the Python gRPC stubs from protos/, the gateway's and the client package's (never edit them by hand)

$(STUBS): $(PROTO) $(VENV)/.installed
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO)

# The editable install of the client package made them; a changed proto makes them again.
$(CLIENT_STUBS): $(PROTO) $(VENV)/.installed
	cd $(CLIENT) && ../../$(BIN)/python stubs.py

client-wheel: setup ## build the client package's wheel (cxr-retrieval-client) into clients/python/dist
	$(BIN)/pip wheel --quiet --no-deps --no-build-isolation -w $(CLIENT)/dist ./$(CLIENT)
	@ls -l $(CLIENT)/dist/*.whl

setup-buf: ## install buf (pinned) from npm into .cache/npm (the proto lint and breaking-change tests skip without it)
	@test -x $(BUF) && $(BUF) --version | grep -qx $(BUF_VERSION) || \
		npm install --prefix .cache/npm --no-save --no-audit --no-fund --silent @bufbuild/buf@$(BUF_VERSION) || \
		echo "warning: could not install @bufbuild/buf from npm: the proto lint and breaking-change tests will skip"

lint-protos: setup-buf ## buf lint, and buf breaking against protos/released (the proto as last released)
	$(BUF) lint protos
	$(BUF) breaking protos --against protos/released

# Then the client package `cxr search` uses, built with the tools just installed (grpcio-tools, googleapis-common-protos)
# and a setuptools newer than the one a venv starts with (its pyproject's license needs 77 or later).
$(VENV)/.installed: pyproject.toml constraints.txt $(CLIENT)/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[serve,milvus,export,test,bench]'
	$(BIN)/pip install --quiet -c constraints.txt setuptools
	$(BIN)/pip install --quiet -c constraints.txt --no-build-isolation -e ./$(CLIENT)
	touch $@

export: setup ## export MODEL (default: the active one) to ONNX + config.pbtxt; CHECKPOINT=dir TARGET=local|gpu FP16=1|INT8=1|FP32=1
	$(CXR) export $(export_flags)

serve: setup ## start Triton and the gateway (port 50051); Ctrl-C stops both
	$(CXR) serve

serve-detached: setup ## start Triton and the gateway in the background (stop them with `make stop`)
	$(CXR) serve --detach

stop: ## stop the Triton and gateway started in the background
	$(CXR) stop

models: setup ## list models: active, exported, ready in Triton
	$(CXR) models

demo: setup ## export, serve (mutual TLS, tokens, audit) and query the demo model, then stop; INSECURE=1: plaintext
	$(BIN)/python -m cxr_cli.demo --model $(DEMO_MODEL) $(if $(INSECURE),--insecure)

train-default: setup ## retrain the shipped cxr-mini from scratch on $(DATA)/nih800 into weights/cxr-mini (deterministic)
	rm -rf $(TRAIN_OUT)
	$(CXR) train --model cxr-mini --from-scratch --labels-csv $(DATA)/nih800/labels.csv --out $(TRAIN_OUT) \
		--publish-to weights/cxr-mini

test: setup setup-oidc ## install and run every test
	$(BIN)/python -m pytest

test-unit: setup ## run the unit tests alone (tests/unit and the client package's: no Triton, Orthanc, browser or Milvus started)
	$(BIN)/python -m pytest tests/unit clients/python/tests

bench-towers: setup ## export each family at true size (random weights) and time it in Triton
	$(BIN)/python -m benchmarks.triton_towers

bench-gateway: setup ## gateway overhead over a direct Triton call, and index build images/s
	$(BIN)/python -m benchmarks.gateway_overhead

bench-faiss: setup ## FAISS search p50 and recall@10 per index type on 1M synthetic 1152-d vectors
	$(BIN)/python -m benchmarks.faiss_search

bench: setup ## quality + speed per model (MODELS="cxr-mini medsiglip-tiny"): gateway vs in-process, batching on/off; JSON + Markdown report
	$(CXR) compare --profile full $(foreach m,$(MODELS),--model $(m))

bench-quick: setup ## the same, CI-sized (a few minutes)
	$(CXR) compare --profile quick $(foreach m,$(MODELS),--model $(m))

fuzz: setup ## 10,000 hostile gRPC and 10,000 hostile HTTP requests (and slow clients) at the secured gateway: 0 UNKNOWN/INTERNAL/5xx, 0 hangs, RSS bounded, a bystander's p99
	$(BIN)/python -m benchmarks.fuzz

soak: setup ## 32 clients, mixed queries, 10 min secured then 10 min open: errors, latency ratio, RSS, audit check
	$(BIN)/python -m benchmarks.soak

faults: setup ## Triton and the gateway SIGKILLed under load, a corrupt index, a rebuild: recovery seconds, client codes
	$(BIN)/python -m benchmarks.faults

bench-scale: setup ## cost of archive size per store and index type (SIZES= DIMS= TYPES= BACKENDS= PART=store|gateway); hours in full
	$(BIN)/python -m benchmarks.scale $(if $(PART),--part $(PART)) $(if $(SIZES),--sizes $(SIZES)) \
		$(if $(DIMS),--dims $(DIMS)) $(if $(TYPES),--types $(TYPES)) $(if $(BACKENDS),--backends $(BACKENDS))

bench-freshness: setup ## the living index on 100k and 1M synthetic images (SIZES= SAMPLES=): STOW-RS to searchable, deletion to gone, image q/s while ingesting 10/s, commit and compaction cost; JSON + Markdown + PNG
	$(BIN)/python -m benchmarks.freshness $(if $(SIZES),--sizes $(SIZES)) $(if $(SAMPLES),--samples $(SAMPLES))

bench-decode: setup ## decode ms per DICOM transfer syntax for a 2k x 2k 12-bit CR (dcmtk writes the variants): JSON + Markdown
	$(BIN)/python -m benchmarks.decode_speed

bench-gpu: setup ## on a GPU host: the four families at true size, ORT CUDA/TensorRT, Triton, FAISS GPU, 7,500-image index (never in CI)
	$(BIN)/python -m benchmarks.gpu $(if $(MODELS),--models $(MODELS))

bench-quality: setup ## image->image and text->image mAP through the gateway on the NIH validation split, beside random
	$(BIN)/python -m benchmarks.retrieval_quality

bench-suggestions: setup ## finding suggestions on the NIH validation split (MODEL, default cxr-mini): AUC and ECE per finding, cross-fitted, beside random
	$(BIN)/python -m benchmarks.suggestions $(if $(MODEL),--model $(MODEL))

bench-refine: setup ## relevance feedback mAP per round (Rocchio), with_text / exclude_text hit rates per weight, cxr-mini in-process on the NIH validation split
	$(BIN)/python -m benchmarks.refine

bench-labeler: setup ## the report labeler against IU-Xray's manual annotations: P/R/F1 per label, micro/macro F1, on both halves
	$(BIN)/python -m benchmarks.labeler_quality

bench-quantization: setup ## int8 and fp16 against fp32 (MODEL, default cxr-mini): parity, mAP with bootstrap noise, speed, size, ORT session options
	$(BIN)/python -m benchmarks.quantization $(if $(MODEL),--model $(MODEL))

bench-reports: setup ## an ORU^R01 to its ACK through `cxr reports listen`, then the ACK to the report in GetStudy
	$(BIN)/python -m benchmarks.hl7_ack
	$(BIN)/python -m benchmarks.report_freshness

tune: setup ## sweep Triton instances, queue delay, preferred batch sizes for MODEL's towers (default cxr-mini); WRITE=1 stores the best in the registry
	$(BIN)/python -m benchmarks.tune $(if $(MODEL),--model $(MODEL)) $(if $(WRITE),--write)

clean: ## remove exported models, caches and logs (keeps .venv)
	rm -rf model_repository/*/ .cache .run
