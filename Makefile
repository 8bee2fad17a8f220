# Two commands: `make run` brings the whole embedded system up; `make test` checks everything.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: run test lint format migrate demo venv clean

$(INSTALLED): requirements.txt requirements-dev.txt
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(INSTALLED)

migrate: venv
	mkdir -p var
	$(PY) manage.py migrate --noinput

demo: migrate
	$(PY) manage.py demo_data
	$(PY) manage.py demo_markets

run: demo
	@echo ""
	@echo "  Portal     http://127.0.0.1:8000/"
	@echo "  API docs   http://127.0.0.1:8000/api/docs/"
	@echo "  Admin      http://127.0.0.1:8000/admin/"
	@echo "  Ctrl-C stops everything."
	@echo ""
	$(VENV)/bin/honcho start -f Procfile || test $$? -eq 130  # 130: stopped with Ctrl-C

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) manage.py makemigrations --check --dry-run

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(VENV)/bin/pytest -n 2 --dist loadgroup

clean:
	rm -rf $(VENV) var
