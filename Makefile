# Two commands on a fresh machine: `make demo` (index the sample corpus, no API key, no server)
# and `make test`. Everything else builds on them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export PYTHONWARNINGS := ignore::UserWarning

.PHONY: install chromium redis demo test bench dev clean

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

test: install chromium redis
	$(BIN)/python -m pytest -q

# The browser test drives Debian's Chromium, never a downloaded one: installed here when missing
# (apt-get, through sudo unless root). CHROMIUM=/path/to/chromium uses that one instead.
chromium:
	@if [ -z "$$CHROMIUM" ] && ! command -v chromium >/dev/null 2>&1; then \
	    command -v apt-get >/dev/null 2>&1 || { echo "make test needs Chromium: install it, or set CHROMIUM=/path/to/chromium" >&2; exit 1; }; \
	    sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
	    echo "installing Debian's chromium and chromium-driver for the browser test (apt-get)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    $$sudo apt-get update -qq && $$sudo apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi

# The Celery test (tests/test_celery.py) starts its own broker from Debian's redis-server.
redis:
	@if ! command -v redis-server >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
	    sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
	    echo "installing Debian's redis-server for the Celery test (apt-get)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    { $$sudo apt-get update -qq && $$sudo apt-get install -y -qq redis-server >/dev/null; } || echo "no redis-server: the Celery test will be skipped" >&2; \
	fi

bench: install
	$(BIN)/python bench/ingest_bench.py
	$(BIN)/python bench/search_bench.py
	$(BIN)/python bench/refine_bench.py
	$(BIN)/python bench/formats_bench.py

dev: install
	$(BIN)/refinery dev

clean:
	rm -rf $(VENV) .refinery
