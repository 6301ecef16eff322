# Thin aliases for exactly what the README and CI run. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SOURCE ?= BAAI/bge-small-en-v1.5
OUT ?= models
NAME ?=
PYTEST_ARGS ?=
EXPORT_ARGS ?=
BENCH_ARGS ?=

.PHONY: help setup export demo test docs bench bench-avx2 bench-rerank soak gpu-payload clean

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of PyTorch first (a plain `torch` requirement would fetch GBs of CUDA).
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,export,test,eval,serve,corpus,docs,langchain,llama-index,haystack,mteb,ray,test-integrations,bench,bench-serve]' torch==2.13.0
	touch $@

setup: $(VENV)/.installed  ## create .venv with bgeort, the export stack and the test tools

export: setup  ## export SOURCE (hub id or local folder) to OUT/NAME, then embed (or rerank) a few examples with it
	folder="$$($(PY) -m export $(SOURCE) --out $(OUT) $(if $(NAME),--name $(NAME)) $(EXPORT_ARGS))" && $(PY) -m bgeort demo "$$folder"

test: setup  ## run the test suite (exports tiny models and the real MiniLM from ../shared)
	$(PY) -m pytest $(PYTEST_ARGS)

docs: setup  ## build the docs site into site/ (strict: a broken link or a missing page fails)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict -d site

$(VENV)/.bench-installed: $(VENV)/.installed pyproject.toml
	# Naming torch==2.13.0 again keeps the CPU build from setup: pip may not swap it for a CUDA one.
	$(PY) -m pip install -q -e '.[cpu,export,test,bench,bench-serve]' torch==2.13.0
	touch $@

bench: $(VENV)/.bench-installed  ## CPU benchmark vs sentence-transformers, fastembed, optimum -> bench/results/cpu.md (~25 min; BENCH_ARGS=--quick for a smoke run)
	$(PY) bench/cpu.py $(BENCH_ARGS)

bench-avx2: $(VENV)/.bench-installed  ## the CPU benchmark with cpuid hiding AVX-512, VNNI and AMX (bench/isa.py) -> bench/results/avx2/cpu.md (~35 min)
	$(PY) bench/cpu.py --isa avx2 $(BENCH_ARGS)

bench-rerank: $(VENV)/.bench-installed  ## reranker CPU benchmark: bge-reranker-base shape vs CrossEncoder -> bench/results/rerank.md (~15 min)
	$(PY) bench/rerank.py $(BENCH_ARGS)

.PHONY: bench-m3
bench-m3: $(VENV)/.bench-installed  ## bge-m3 shape vs FlagEmbedding (first: bash bench/flagembedding_venv.sh) -> bench/results/m3.md (~30 min)
	$(PY) bench/m3.py $(BENCH_ARGS)

soak: setup  ## 16 threads hammering one Embedder, one Reranker and bgeort serve on 127.0.0.1, every result checked -> bench/results/soak.md (~6 min; BENCH_ARGS=--quick)
	$(PY) bench/soak.py $(BENCH_ARGS)

gpu-payload: setup  ## what bench/gpu.py runs on a lent GPU: exports, PyTorch references, onnxruntime-gpu, in 60 MiB parts -> .gpu-parts/
	bash ../shared/gpu/prepare-ort-gpu.sh
	$(PY) bench/gpu.py prepare --payload /tmp/bgeort-gpu-payload
	$(PY) bench/gpu.py pack --payload /tmp/bgeort-gpu-payload --wheel $$(ls /tmp/ort-gpu-wheel/*.whl)

clean:  ## remove the virtual environment and exported models
	rm -rf $(VENV) $(filter-out $(OUT)/README.md,$(wildcard $(OUT)/*))

# Quality eval (issue 5): MODEL=models/<name> [RERANKER=models/<reranker>] [EVAL_ARGS=--quick]
MODEL ?= models/bge-small-en-v1.5
RERANKER ?=
EVAL_ARGS ?=
.PHONY: eval eval-mteb

$(VENV)/.eval-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e '.[cpu,export,test,eval]' torch==2.13.0
	touch $@

eval-mteb: setup  ## the MTEB harness (mteb.evaluate, offline) on STS-B, SICK-R, SciFact with MODEL: equals make eval and the published scores
	$(PY) -m bench.eval_mteb $(MODEL)

eval: $(VENV)/.eval-installed  ## score MODEL (each precision, PyTorch, published MTEB) on STS, SciFact, Banking77 -> bench/results/eval-<name>.md
	$(PY) -m bench.eval $(MODEL) $(if $(RERANKER),--reranker $(RERANKER)) $(EVAL_ARGS)
