# make demo: set up, fetch offline data, train the tiny CLIP on 2 CPU ranks (ZeRO-2), print zero-shot top-1.
# make test: lint (ruff, rules in pyproject.toml), then the whole test suite (installs first when needed).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data
RUN ?= runs/demo
NPROC ?= 2

.PHONY: install data demo train lint test bench bench-growth clean

install: $(VENV)/.installed
$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps -r requirements-nodeps.txt
	touch $@

# Fashion-MNIST + WordNet (Debian packages), then webdataset shards and a sentencepiece tokenizer.
data: install $(DATA)/tokenizer/tokenizer.model
$(DATA)/shards/fashion_mnist-train/manifest.json:
	bash scripts/fetch_data.sh $(DATA) fashion_mnist wordnet
	$(PY) -m pretrain.data.prepare fashion_mnist --split train --out $(DATA)/shards/fashion_mnist-train
$(DATA)/tokenizer/tokenizer.model: $(DATA)/shards/fashion_mnist-train/manifest.json
	$(PY) -m pretrain.data.tokenizer --shards $(DATA)/shards/fashion_mnist-train --wordnet /usr/share/wordnet \
		--vocab 4096 --out $(DATA)/tokenizer

train: data
	$(VENV)/bin/deepspeed --num_gpus $(NPROC) pretrain/main.py --config configs/demo.yaml \
		--deepspeed_config ds_configs/zero2.json train.out_dir=$(RUN) $(ARGS)

demo:
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory data && \
	rm -rf $(RUN) && $(MAKE) --no-print-directory train && \
	$(PY) -m eval --checkpoint $(RUN) --tasks fashion_mnist --out $(RUN)/eval.json && \
	echo "demo finished in $$(( $$(date +%s) - start )) s"

lint: install
	$(VENV)/bin/ruff check .

test: install lint
	bash scripts/fetch_data.sh $(DATA) fashion_mnist wordnet
	$(PY) -m pytest -q tests

bench: install
	$(PY) -m kernels.bench

bench-growth: install
	$(PY) -m growth.bench

clean:
	rm -rf runs
