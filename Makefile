# Two commands do all set-up on a fresh machine with Python 3.11 and apt: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REDIS_URL ?= redis://127.0.0.1:6379/0
export REDIS_URL

.PHONY: demo test lint typecheck pytest redis bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; trying python3"; }
	@test -x $(BIN)/python || ( $(PYTHON) -m venv $(VENV) 2>/dev/null || python3 -m venv $(VENV) )
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/billing demo

redis:
	@bash scripts/ensure-redis.sh "$(REDIS_URL)"

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict billing rules tools bot sandbox

pytest: $(STAMP) redis
	$(BIN)/python -m pytest

test: $(STAMP) redis lint typecheck pytest

bench: $(STAMP) redis
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
