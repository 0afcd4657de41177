# abstain: `make demo` and `make test` work on a fresh machine with nothing else installed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0

.PHONY: venv test lint demo bench reproduce clean

venv: $(STAMP)

# Reinstall only when the package metadata changed; the CPU torch wheel is pinned
# first so that no dependency pulls a large CUDA build.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	# torchattacks declares torchvision, which would replace the CPU torch: test-only, no deps.
	$(BIN)/python -m pip install -q --no-deps torchattacks==3.5.1
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest -q tests

# ruff (pyflakes + pycodestyle errors) and the layers contract (pyproject.toml [tool.importlinter])
lint: venv
	$(BIN)/ruff check src tests bench tools
	cd src && ../$(BIN)/lint-imports --config ../pyproject.toml

demo: venv
	$(BIN)/abstain reproduce --scale mini --demo --jobs 2 --out runs/demo

reproduce: venv
	$(BIN)/abstain reproduce --scale mini --jobs 2 --out runs/mini

bench: venv
	$(BIN)/python bench/attacks.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/certify.py

clean:
	rm -rf $(VENV) runs build src/*.egg-info
