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
# On a machine without the venv (a lent GPU machine: no network), give the interpreter, after
# carrying the missing packages as wheels (make gpu-wheels; README, "Speed and many GPUs"):
#   make bench-gpu PY=python3        the JSON goes to $(BENCH_OUT): $OUT when set, else reports/
GPU_SIZES ?= 96 128
PY ?= $(BIN)/python
BENCH_OUT ?= $(if $(OUT),$(OUT),reports)
GPU_WHEELS ?= .cache/gpu-wheels
GPU_PYVER ?= 3.12
BENCH_PY = PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" $(PY)
.PHONY: gpu-wheels
bench-gpu: $(if $(filter file,$(origin PY)),$(STAMP))
	$(BENCH_PY) -m pipeline.benchmarks.preflight
	mkdir -p $(BENCH_OUT)
	$(BENCH_PY) -m pipeline demo --no-run
	for s in $(GPU_SIZES); do \
	  $(BENCH_PY) -m pipeline bench workflows/demo.yaml --device cuda --epochs 4 --out $(BENCH_OUT)/bench-gpu-$$s.json \
	    --set "data.spatial_size=[$$s,$$s,$$s]" --set model.arch=resnet18 --set model.widen_factor=1.0 \
	    --set model.norm=batch --set train.batch_size=16 || exit 1; \
	done
	$(BENCH_PY) -m pipeline bench workflows/demo.yaml --suite precision --device cuda \
	  --out $(BENCH_OUT)/bench-gpu-precision.json

# the wheels bench-gpu needs on the lent GPU machine (it has torch, numpy, pandas, scipy, scikit-learn,
# PyYAML and tqdm, not MONAI, nibabel or pydicom): pure-Python wheels at the venv's versions, PyYAML
# built for CPython $(GPU_PYVER) on x86-64 Linux; about 8 MiB
gpu-wheels:
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PYVER) \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d $(GPU_WHEELS) $$($(BIN)/python -m pip freeze | \
	  grep -i -E '^(monai|nibabel|pydicom|pyyaml|tqdm|importlib.resources|typing.extensions)==')
	du -sh $(GPU_WHEELS) && ls $(GPU_WHEELS)

# The report tests render report.html in headless Chromium. Where it is missing and we may install
# system packages (root with apt, as on CI), install Debian's chromium; otherwise those tests skip
# with a note, except under CI (CI set): there a missing browser is an error, here and in the tests
# (tests/conftest.py turns their skips into failures).
HAVE_BROWSER ?= command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	command -v google-chrome >/dev/null 2>&1
browser:
	@if $(HAVE_BROWSER); then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null); \
	  if $(HAVE_BROWSER); then exit 0; fi; \
	  problem="could not install chromium"; \
	else problem="no chromium (installing it needs root and apt-get)"; fi; \
	case "$$CI" in ""|0|false|no|off) ;; *) echo "error: $$problem; under CI the browser tests must run" >&2; exit 1;; esac; \
	echo "note: $$problem; the browser tests will skip"

clean-venv:
	rm -rf $(VENV)
