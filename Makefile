# Set-up and main jobs. Every target creates the virtual environment (.venv) first if needed.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
FACES_CLASSIFIER := -c configs/setups/synthetic_faces.yaml -c configs/training/classifier.yaml

.PHONY: install demo report classifier test test-all lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

## demo: plain sampling of the shipped SyntheticFaces UNet, labelled by the shipped classifier: how biased is it?
demo: install
	$(BIN)/lightning-fair test -c configs/setups/synthetic_faces.yaml -c configs/methods/plain.yaml

## report: every method on the embedded SyntheticFaces, one protocol, one evaluator: report/report.html and more.
report: install
	$(BIN)/lightning-fair report -c configs/report/synthetic_faces.yaml

## classifier: write the embedded SyntheticFaces data, train the attribute classifier on it, test it.
classifier: install
	$(BIN)/lightning-fair fit $(FACES_CLASSIFIER)
	$(BIN)/lightning-fair test $(FACES_CLASSIFIER) \
		--ckpt_path logs/synthetic_faces/classifier/checkpoints/best.ckpt

## test: the fast test suite (the one CI runs, in TEST_WORKERS processes) and the linter.
TEST_WORKERS ?= 2
test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

## test-all: the fast suite plus the slow end-to-end runs.
test-all: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "slow or not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) logs data report .pytest_cache .ruff_cache
