# Two commands on a fresh machine: `make demo` (index the sample corpus, no API key, no server)
# and `make test`. Everything else builds on them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export PYTHONWARNINGS := ignore::UserWarning

.PHONY: install demo test bench dev clean

$(BIN)/refinery $(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: an unpinned torch pulled in by sentence-transformers is the CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[local,test]'
	touch $(VENV)/.installed

install: $(VENV)/.installed

demo: install
	$(BIN)/refinery ingest
	$(BIN)/refinery status
	$(BIN)/refinery search "How do I get back into a locked account?" --k 3

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/ingest_bench.py
	$(BIN)/python bench/search_bench.py
	$(BIN)/python bench/refine_bench.py

dev: install
	$(BIN)/refinery dev

clean:
	rm -rf $(VENV) .refinery
