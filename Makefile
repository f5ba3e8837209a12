# polycap — `make help` lists targets. Everything installs into ./.venv.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# s3, gcs: Beam's S3 and GCS filesystems (the tests run the job against a local S3-protocol server)
EXTRAS ?= ocr,local,smoke-llm,dev,demo,s3,gcs
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: help install browser ocr-debs demo test test-fast bench lint clean

help: ## list targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "} {printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the CPU wheel, so no other requirement pulls a CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP) ## create .venv and install polycap with the CPU extras

demo: install ## build the bundled sample and run the main job on it (CPU defaults)
	$(BIN)/python -m polycap.pipelines.demo

CHROMIUM ?= /usr/bin/chromium
browser: ## Debian's chromium for the report's browser test: installed when missing and run as root, else it skips
	@if [ -x "$(CHROMIUM)" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; \
	else echo "chromium: $(CHROMIUM) missing and not root; tests/pipelines/test_report_browser.py will skip"; fi

OCR_DEBS ?= tesseract-ocr-kor tesseract-ocr-script-hang tesseract-ocr-vie tesseract-ocr-eng fonts-nanum fonts-noto-cjk fonts-dejavu \
  fonts-unfonts-core fonts-baekmuk fonts-nanum-extra fonts-lexi-gulim fonts-noto-core fonts-liberation2 fonts-freefont-ttf \
  fonts-roboto-unhinted
ocr-debs: ## Debian's Tesseract kor/Hangul/vie/eng (Korean + Vietnamese OCR) and the fonts of the OCR test cards (bench/ocr_cards.py, bench/ocr_unseen.py), when root
	@if dpkg -s $(OCR_DEBS) >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -q $(OCR_DEBS) || { apt-get update -q && apt-get install -y -q $(OCR_DEBS); }; \
	else echo "ocr-debs: not root; Korean/Vietnamese OCR tests skip until: apt-get install $(OCR_DEBS)"; fi

test: install browser ocr-debs ## run the test suite (what CI runs)
	$(BIN)/python -m pytest -q tests

test-fast: install ## tests without the slow ones
	$(BIN)/python -m pytest -q -m "not slow" tests

bench: install ocr-debs ## run benchmarks; results in bench/results/*.json
	$(BIN)/python -m bench.run_all

lint: install ## ruff, the import contracts (layers, no cycles) and mypy on the typed packages
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q tests/test_layers.py
	# mypy cannot follow the package-dir mapping: check a copy laid out as the wheel installs it
	rm -rf build/lint && $(BIN)/python -c "from pathlib import Path; from tests.test_layers import installed_layout as l; l(Path('build/lint'))"
	cd build/lint && ../../$(BIN)/mypy -p polycap.schemas -p polycap.sharding -p polycap.transforms

clean: ## remove build outputs (keeps .venv)
	rm -rf out build *.egg-info .pytest_cache
