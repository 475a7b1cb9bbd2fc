# The two commands: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: run test install lint format clean bench bench-profile bench-console browser screenshots

run: $(INSTALLED)
	$(BIN)/topup serve

# Every storage and API test runs on SQLite and on the PostgreSQL at 127.0.0.1:5432
# (TOPUP_TEST_POSTGRES); without one those runs are skipped, each with the reason.
test: $(INSTALLED) browser
	$(BIN)/pytest -n 3 $(PYTEST_ARGS)

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@

# The console's browser tests (and `make screenshots`) drive Debian's chromium through
# Playwright: Playwright's own browser builds cannot be downloaded here. Chinese pages need
# a CJK font, or every character is a blank box. Installed when missing; never skipped.
BROWSER_PACKAGES := chromium fonts-noto-cjk
browser:
	@if ! command -v chromium >/dev/null || ! fc-list :lang=zh 2>/dev/null | grep -q .; then \
	  echo "installing $(BROWSER_PACKAGES) for the console's browser tests"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  { apt-get update -q && apt-get install -y -q $(BROWSER_PACKAGES); } \
	  || { sudo apt-get update -q && sudo -E apt-get install -y -q $(BROWSER_PACKAGES); } \
	  || { echo "cannot install $(BROWSER_PACKAGES): the console's browser tests need them" >&2; \
	       exit 1; }; \
	fi

# README's console screenshots (docs/images/console-*.png), from a service with a few orders.
screenshots: $(INSTALLED) browser
	$(BIN)/python -m tests.screenshots

# Measures throughput and latency against a bare Litestar handler; writes BENCHMARKS.md.
# BENCH_PROFILE=1 also profiles the service during the sustained end-to-end phase.
bench: $(INSTALLED) bench/.build/loadgen
	@command -v wrk >/dev/null || apt-get install -y wrk || sudo apt-get install -y wrk
	$(BIN)/python bench/run.py

# The sustained end-to-end phase alone, profiled with py-spy: writes bench/PROFILE.md,
# which the next `make bench` includes in BENCHMARKS.md.
bench-profile: $(INSTALLED) bench/.build/loadgen
	@command -v wrk >/dev/null || apt-get install -y wrk || sudo apt-get install -y wrk
	$(BIN)/python bench/run.py --profile

bench/.build/loadgen: bench/loadgen.c
	mkdir -p bench/.build
	cc -O2 -Wall -o $@ $<

# The console's queries on 1,000,000 orders (seeded once into bench/.build/console.db and,
# when a server answers, the PostgreSQL database below); writes its section of BENCHMARKS.md.
BENCH_CONSOLE_POSTGRES ?= postgresql+asyncpg://postgres@127.0.0.1:5432/topup_console_bench
bench-console: $(INSTALLED)
	$(BIN)/python bench/console.py --postgres $(BENCH_CONSOLE_POSTGRES)

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(INSTALLED)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) var/*.db var/*.db-wal var/*.db-shm
