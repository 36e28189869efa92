# The two set-up commands of the README: `make run` (the studio) and `make test` (the whole suite).
# Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test bench screenshots soak

$(VENV)/.runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

run: $(VENV)/.runtime
	$(PY) app.py

# pytest exits 5 when it collected no test: that is a failure, not a pass.
# The browser tests need Debian's chromium: ensure-chromium installs it when it is missing.
# The PostgreSQL tests need Debian's postgresql: ensure-postgresql installs it likewise.
# Bytecode is cached even where the environment says not to (PYTHONDONTWRITEBYTECODE): every
# worker and every studio the tests start would compile, and pytest re-rewrite, the same modules
# (10.8 s of CPU per worker's collection without the cache, 5.2 s with it).
test: $(VENV)/.dev
	bash scripts/ensure-chromium
	bash scripts/ensure-nginx
	bash scripts/ensure-postgresql
	env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest -n 3 --dist worksteal; status=$$?; \
	if [ $$status -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi; exit $$status

bench: $(VENV)/.dev
	$(PY) bench/store_bench.py
	$(PY) bench/render_bench.py
	$(PY) bench/poll_bench.py
	$(PY) bench/batch_bench.py
	$(PY) bench/upload_bench.py

# Screenshots of every page in test-artifacts/ (opt-in: the browser tests check the pages without them).
screenshots: $(VENV)/.dev
	STUDIO_SCREENSHOTS=1 $(PY) -m pytest tests/test_pages.py tests/test_gallery_pages.py -k screenshots

# The reliability fault table against a real studio process (several minutes; not in `make test`).
soak: $(VENV)/.dev
	$(PY) bench/soak.py
