# minispp — run `make help` for the list of targets.
# Which Python: PYTHON=... if given; else the active virtual environment's (VIRTUAL_ENV set);
# else the project's own .venv, made with $(BASE_PYTHON) -m venv on first use. The first target
# that needs the package installs .[$(EXTRAS)] into that Python once (the stamp $(STAMP), redone
# when setup.py changes), so `make test` or `make train-zf5` can be the first command of a clone.
# EXTRAS=test,plots,mpi adds mpi4py and the MPICH wheel (mpiexec; CI installs it, .ci/run).
BASE_PYTHON ?= python3
VENV ?= .venv
ifeq ($(origin PYTHON),undefined)
  ifdef VIRTUAL_ENV
    PYTHON := $(VIRTUAL_ENV)/bin/python
    STAMP := $(VIRTUAL_ENV)/.minispp-installed
  else
    PYTHON := $(VENV)/bin/python
    STAMP := $(VENV)/.minispp-installed
    MAKE_VENV := yes
  endif
else
  STAMP := .installed
endif
PYTEST ?= $(PYTHON) -m pytest
EXTRAS ?= test,plots
# make test TESTS=tests/test_boxes.py PYTEST_ARGS="-x -k iou": a part of the suite
TESTS ?=
PYTEST_ARGS ?=
BENCH_REPEAT ?= 7
# training (make train-zf5): DATA defaults to the embedded data set, generated on first use
EMBEDDED ?= data/embedded
DATA ?= $(EMBEDDED)
OUT ?= runs/zf5
EPOCHS ?= 12
BATCH ?= 16
MODE ?= multi
SPP ?= 6,3,2,1
LR ?= 0.01
DEVICE ?= cpu
# RANKS=2: data-parallel over 2 MPI ranks (the mpi extra's mpiexec), --batch is the global batch;
# a new run then records --blas-threads = cores / RANKS (BLAS_THREADS=... to choose)
RANKS ?= 1
MPI_EXTRAS := test,plots,mpi
MPIEXEC ?= $(if $(wildcard $(dir $(PYTHON))mpiexec),$(dir $(PYTHON))mpiexec,mpiexec)
BLAS_THREADS ?= $(if $(filter-out 1,$(RANKS)),$(shell n=$$(( $$(nproc 2>/dev/null || echo 2) / $(RANKS) )); [ $$n -ge 1 ] && echo $$n || echo 1))
# features + SVM (make features-demo): the embedded VOC-layout set and the train-zf5 model
VOC ?= data/embedded-voc
CKPT ?= $(OUT)/best.h5
FEAT ?= runs/features
LAYER ?= fc7
SCALE ?= 224
VIEW ?= full
# detection (make detect-demo): images of each split used, fine-tuning mini-batches
DET ?= runs/det
DET_LIMIT ?= 100
FT_ITERS ?= 600

.PHONY: help install venv test gradcheck train-zf5 test-zf5 compare-zf5 ablation-zf5 embedded embedded-voc features-demo features-compare detect-demo bench bench-conv bench-lrn bench-pool bench-spp \
        bench-window-spp bench-zf5 bench-features summary-zf5 geometry clean test-gpu-sim test-gpu bench-gpu

help:  ## list every target
	@echo "minispp targets (variables: PYTHON=$(PYTHON), BENCH_REPEAT=$(BENCH_REPEAT)):"
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  make %-18s %s\n", $$1, $$2}'

install:  ## pip install -e .[$(EXTRAS)] into $(PYTHON) (the project's .venv unless a venv is active or PYTHON is given)
	@rm -f $(STAMP)
	@$(MAKE) --no-print-directory $(STAMP)

venv: $(STAMP)  ## make the Python ready once (see the top of this Makefile); every target that needs it does this

$(STAMP): setup.py
ifdef MAKE_VENV
	@if ! $(PYTHON) -m pip --version >/dev/null 2>&1; then \
	  echo "creating the virtual environment $(VENV) ($(BASE_PYTHON) -m venv)"; \
	  $(BASE_PYTHON) -m venv $(VENV) || { echo "error: '$(BASE_PYTHON) -m venv $(VENV)' failed" \
	    "(Debian/Ubuntu: apt install python3-venv), or activate a virtual environment first" >&2; \
	    exit 1; }; fi
	-$(PYTHON) -m pip install --quiet --upgrade pip
endif
	$(PYTHON) -m pip install -e '.[$(EXTRAS)]'
	touch $@

embedded: $(STAMP)  ## generate the embedded data set into $(EMBEDDED) (once; 10 classes, 1,500 images)
	$(PYTHON) -m train embedded --out $(EMBEDDED)

train-zf5: $(STAMP)  ## train ZF-5 + SPP(6,3,2,1), multi-size, on $(DATA) (default: the embedded set) into $(OUT); RANKS=2: 2 MPI ranks
	@$(if $(filter-out 1,$(RANKS)),command -v $(MPIEXEC) >/dev/null || { echo "error: RANKS=$(RANKS) \
	  needs mpiexec: make install EXTRAS=$(MPI_EXTRAS)" >&2; exit 1; })
	@if [ "$(DATA)" = "$(EMBEDDED)" ]; then $(PYTHON) -m train embedded --out $(EMBEDDED); fi
	$(if $(filter-out 1,$(RANKS)),$(MPIEXEC) -n $(RANKS) )$(PYTHON) -m train train \
	  --data $(DATA) --net zf5 --spp $(SPP) --mode $(MODE) \
	  --epochs $(EPOCHS) --batch $(BATCH) --lr $(LR) --out $(OUT) --device $(DEVICE) \
	  $$( [ -f $(OUT)/checkpoint.h5 ] && echo --resume || echo "$(if $(BLAS_THREADS),--blas-threads $(BLAS_THREADS))" )

test-zf5: $(STAMP)  ## evaluate $(OUT)/best.h5 on $(DATA)/val: center, 10-view, full image, 10 views and 98 views on conv5
	for v in center 10view full 10view-fm multiview; do \
	  $(PYTHON) -m train test --checkpoint $(OUT)/best.h5 --data $(DATA) --split val --view $$v \
	    --device $(DEVICE) --json $(OUT)/test-$$v.json || exit 1; done

SEEDS ?= 0,1
compare-zf5: $(STAMP)  ## no-SPP vs SPP single vs SPP multi x center/10-view/full, SEEDS seeds -> runs/compare/results.md
	@if [ "$(DATA)" = "$(EMBEDDED)" ]; then $(PYTHON) -m train embedded --out $(EMBEDDED); fi
	$(PYTHON) -m train compare --data $(DATA) --out runs/compare --seeds $(SEEDS) --epochs $(EPOCHS) \
	  --batch $(BATCH) --lr $(LR)

ablation-zf5: $(STAMP)  ## SPP {4,3,2,1} (30 bins) vs {6,3,2,1} vs no SPP, single-size (Sec. 3.1.2), SEEDS seeds -> runs/compare/ablation.md (shares compare-zf5's runs)
	@if [ "$(DATA)" = "$(EMBEDDED)" ]; then $(PYTHON) -m train embedded --out $(EMBEDDED); fi
	$(PYTHON) -m train compare --data $(DATA) --out runs/compare --seeds $(SEEDS) --epochs $(EPOCHS) \
	  --batch $(BATCH) --lr $(LR) --pyramids 6,3,2,1/4,3,2,1 --modes single --table ablation

embedded-voc: $(STAMP)  ## generate the embedded VOC-devkit-layout set into $(VOC) (once; 300 trainval + 300 test)
	$(PYTHON) -m train embedded --voc --out $(VOC)

$(CKPT):
	$(MAKE) train-zf5

features-demo: $(STAMP) $(CKPT) embedded-voc  ## $(LAYER) features of $(VOC) at s=$(SCALE) ($(VIEW) view) with $(CKPT), SVMs, VOC07 mAP
	for split in trainval test; do \
	  $(PYTHON) -m train features --checkpoint $(CKPT) --voc $(VOC) --split $$split --layer $(LAYER) \
	    --scale $(SCALE) --view $(VIEW) --out $(FEAT)/$$split-$(VIEW)-s$(SCALE)-$(LAYER).h5 || exit 1; done
	$(PYTHON) -m train cache info $(FEAT)/test-$(VIEW)-s$(SCALE)-$(LAYER).h5
	$(PYTHON) -m train svm --train $(FEAT)/trainval-$(VIEW)-s$(SCALE)-$(LAYER).h5 \
	  --test $(FEAT)/test-$(VIEW)-s$(SCALE)-$(LAYER).h5 --json $(FEAT)/svm-$(VIEW)-s$(SCALE)-$(LAYER).json

features-compare: $(STAMP) $(CKPT) embedded-voc  ## crop/warp/full at 224 and full at 392 x pool5/spp/fc6/fc7 -> $(FEAT)/results.md
	$(PYTHON) -m train features-compare --checkpoint $(CKPT) --voc $(VOC) --out $(FEAT)

detect-demo: $(STAMP) $(CKPT) embedded-voc  ## SPP-net detector on $(VOC) with $(CKPT): train, test at 1 and 5 scales, timing vs R-CNN, pictures
	$(PYTHON) -m train proposals --voc $(VOC) --split test --out $(DET) --limit $(DET_LIMIT)
	$(PYTHON) -m train detect-train --voc $(VOC) --checkpoint $(CKPT) --out $(DET) \
	  --limit $(DET_LIMIT) --ft-iters $(FT_ITERS)
	$(PYTHON) -m train detect-test --voc $(VOC) --split test --model $(DET) --limit $(DET_LIMIT) \
	  --json $(DET)/test-1scale.json
	$(PYTHON) -m train detect-test --voc $(VOC) --split test --model $(DET) --limit $(DET_LIMIT) \
	  --scales 480,576,688,864,1200 --json $(DET)/test-5scale.json
	$(PYTHON) -m train detect-test --voc $(VOC) --split test --model $(DET) --limit $(DET_LIMIT) \
	  --scorer random --json $(DET)/test-chance.json --quiet
	$(PYTHON) -m train detect-time --voc $(VOC) --model $(DET) --images 3
	$(PYTHON) -m train detect $$(ls $(VOC)/VOCdevkit/VOC2007/JPEGImages/*.jpg | tail -n 3) \
	  --model $(DET) --out $(DET)/pictures

test: $(STAMP)  ## the whole test suite, gradient checks included (CPU, a few minutes); TESTS=, PYTEST_ARGS= for a part
	$(PYTEST) -q $(TESTS) $(PYTEST_ARGS)

gradcheck: $(STAMP)  ## only the float64 central-difference gradient checks, with the error table
	$(PYTEST) -q -m gradcheck

test-gpu-sim: $(STAMP)  ## the numba.cuda kernels and the layers' GPU bodies against the CPU under Numba's CUDA simulator (no GPU needed; make test runs them too)
	NUMBA_ENABLE_CUDASIM=1 $(PYTEST) -q -p no:cacheprovider tests/gpu_sim_checks.py tests/gpu_sim_bodies.py

test-gpu: $(STAMP)  ## on a GPU machine (make install EXTRAS=test,plots,gpu): every layer on CuPy vs its CPU body, float64 gradient checks on the GPU, cuDNN vs im2col, ZF-5 SGD steps GPU vs CPU
	$(PYTEST) -q -rs tests/test_gpu.py

bench-gpu: $(STAMP)  ## on a GPU machine: ZF-5 SPP training step (batch 128, 224 and 180), each layer, WindowSPP vs roi_pool, conv1-5 at 688, vs PyTorch CUDA (TF32 off)
	$(PYTHON) benchmarks/bench_gpu.py --repeat $(BENCH_REPEAT)

bench: bench-conv bench-lrn bench-pool bench-spp bench-window-spp bench-zf5 bench-features  ## every benchmark vs PyTorch CPU

bench-conv: $(STAMP)  ## ZF-5 conv2 (32x96x55x55, 256 5x5/2 pad 1) forward and forward+backward
	$(PYTHON) benchmarks/bench_layers.py conv --repeat $(BENCH_REPEAT)

bench-lrn: $(STAMP)  ## LRN size 5 on 32x96x110x110, forward+backward
	$(PYTHON) benchmarks/bench_layers.py lrn --repeat $(BENCH_REPEAT)

bench-pool: $(STAMP)  ## max pool 3x3/2 on 32x96x110x110, forward+backward
	$(PYTHON) benchmarks/bench_layers.py pool --repeat $(BENCH_REPEAT)

bench-spp: $(STAMP)  ## SPP (6,3,2,1) on 32x256x13x13, forward+backward
	$(PYTHON) benchmarks/bench_layers.py spp --repeat $(BENCH_REPEAT)

bench-window-spp: $(STAMP)  ## WindowSPP of 2,000 windows on a 1x256x43x57 map, forward
	$(PYTHON) benchmarks/bench_layers.py window_spp --repeat $(BENCH_REPEAT)

bench-zf5: $(STAMP)  ## ZF-5 SPP forward and forward+backward, batch 32, 224 and 180, with a per-layer split
	$(PYTHON) benchmarks/bench_nets.py --repeat 3 --contract

bench-features: $(STAMP)  ## ZF-5 full-image features at s=224 and 392 vs PyTorch, the whole features path, the SVM stage
	$(PYTHON) benchmarks/bench_features.py --images 24 --repeat 3

summary-zf5: $(STAMP)  ## print ZF-5's layers, shapes, parameters and MACs at 224 (python -m nets --help for more)
	$(PYTHON) -m nets zf5 --spp 6,3,2,1 --size 224

geometry: $(STAMP)  ## print the SPP bin truth table where the two forms differ (a = 10, n = 6)
	$(PYTHON) -m minispp.geometry 10 6

clean:  ## remove caches (Numba's compiled kernels included) and build files
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -rf .pytest_cache build dist *.egg-info
