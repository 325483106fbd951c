# The two set-up commands of the README. Both install what they need first.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test setup lint

setup:
	@scripts/bootstrap.sh

demo: setup
	VENV=$(VENV) scripts/demo.sh

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src

test: lint
	$(BIN)/pytest
