# The two commands a newcomer needs: `make run` and `make test`. Each builds what it needs by itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test bench lint install chromium js services screenshots clean screenshot-forecast

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian's Chromium for the real-browser dashboard test (a test tool's own browser download cannot work here).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; }

# The real @google/genai JS SDK for tests/test_js_sdk.py, exactly as tests/js/package-lock.json pins it (needs
# Node.js 20 or later and npm).
JS_STAMP := tests/js/node_modules/.installed-stamp
$(JS_STAMP): tests/js/package-lock.json
	cd tests/js && npm ci --no-audit --no-fund
	touch $(JS_STAMP)

js: $(JS_STAMP)

# Redis and PostgreSQL for the cluster tests: the local services, or throwaway ones started by .ci/services.sh
# (`make services` leaves them running; `make test` stops the ones it started when the suite ends).
services:
	@bash .ci/services.sh

run: install
	$(BIN)/keyrack run

# Four workers on two cores: most of a test's time is spent waiting for servers it started (the rules that keep the
# workers apart are in tests/conftest.py's docstring). `make test TEST_WORKERS=0` runs the suite in one process.
TEST_WORKERS ?= 4
test: install chromium js
	@bash .ci/services.sh $(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup

# README picture of the Forecast page (demo history, a busy quota day, real Chromium); not part of `make test`.
screenshot-forecast: install chromium
	$(BIN)/python -m tests.dashboard.forecast_screenshot

# README screenshots (docs/screenshots/*.png, English and one zh-CN Monitor) from the real-browser test; only on
# request, so `make test` leaves the work tree clean. CJK glyphs need a CJK font: Debian's fonts-noto-cjk.
screenshots: install chromium
	@fc-list 2>/dev/null | grep -qi "noto.*cjk" || { \
	  echo "installing Debian's fonts-noto-cjk for the zh-CN screenshot"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q fonts-noto-cjk; }
	KEYRACK_SCREENSHOTS=docs/screenshots $(BIN)/pytest tests/dashboard/test_browser.py tests/dashboard/test_explore_browser.py -q

bench: install
	@bash .ci/services.sh $(BIN)/python -m bench.run_all

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@! grep -rn --include='*.py' 'fmt: skip' proxy_service dashboard tests bench || \
	  { echo "no '# fmt: skip': let ruff format lay the line out"; exit 1; }
	$(BIN)/mypy proxy_service dashboard

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache tests/js/node_modules
