# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo demo-pdf test lint browser bench-gpu clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,dask,mlflow]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cohortnet demo

# the demo with its report also printed to report.pdf (needs Chromium: installed here when we may)
demo-pdf: $(STAMP) browser
	$(BIN)/cohortnet demo --pdf

test: $(STAMP) browser
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check pipeline tests
	$(BIN)/ruff format --check pipeline tests
	$(BIN)/mypy

# GPU benchmark: the demo cohort through a full-width 3D ResNet-18 at 96^3 and 128^3 (upsampled),
# samples/s end to end against pure compute, and model FLOP utilisation against the card's bf16 peak;
# then the demo's first fold in fp32 and bf16 side by side (speed and held-out AUC).
GPU_SIZES ?= 96 128
bench-gpu: $(STAMP)
	$(BIN)/cohortnet demo --no-run
	for s in $(GPU_SIZES); do \
	  $(BIN)/cohortnet bench workflows/demo.yaml --device cuda --epochs 4 --out reports/bench-gpu-$$s.json \
	    --set "data.spatial_size=[$$s,$$s,$$s]" --set model.arch=resnet18 --set model.widen_factor=1.0 \
	    --set model.norm=batch --set train.batch_size=16 || exit 1; \
	done
	$(BIN)/cohortnet bench workflows/demo.yaml --suite precision --device cuda --out reports/bench-gpu-precision.json

# The report test renders report.html in headless Chromium. Where it is missing and we may install
# system packages (root with apt, as on CI), install Debian's chromium; otherwise that test skips.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "note: could not install chromium; the browser test will skip"; \
	  else echo "note: no chromium; the browser test will skip"; fi; }

clean-venv:
	rm -rf $(VENV)
