# The two commands a newcomer needs: `make demo` and `make test`. Each sets up .venv on first use
# (and again when pyproject.toml changes), then runs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench bench-kernels bench-gui bench-large bench-runtime fuzz probe soak clean samples screenshots

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned, so nothing can resolve a newer (CUDA) build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# the onnx extra's onnx2torch, without the torchvision it asks for: pip's torchvision is a CUDA build that cannot
	# load beside the CPU torch (and, installed, breaks transformers' import); the loader stands in for its two ops
	$(PY) -m pip install -q --no-deps 'onnx2torch>=1.5'
	touch $(STAMP)

# -n 2: the tests are independent, and split over the two cores they take 6.5 minutes instead of 10
test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q -n 2

demo: $(STAMP)
	$(PY) -m explorer gui digits-cnn --plan sample_models/digits-cnn.plan.json

screenshots: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(PY) -m explorer gui digits-cnn --plan sample_models/digits-cnn.plan.json --screenshot assets/main-window.png
	QT_QPA_PLATFORM=offscreen $(PY) -m explorer gui digits-cnn --plan sample_models/digits-cnn.finetuned.plan.json --layer fc1 --tab centroids --screenshot assets/centroids.png
	QT_QPA_PLATFORM=offscreen $(PY) -m explorer gui digits-cnn --plan sample_models/digits-cnn.structured.plan.json --layer conv2 --screenshot assets/filter-pruned.png
	QT_QPA_PLATFORM=offscreen $(PY) -m explorer gui digits-cnn --plan sample_models/digits-cnn.plan.json --tab compare --screenshot assets/compare-plans.png
	QT_QPA_PLATFORM=offscreen $(PY) -m explorer gui digits-cnn --plan sample_models/digits-cnn.plan.json --tab sensitivity --screenshot assets/sensitivity-tab.png
	QT_QPA_PLATFORM=offscreen $(PY) benchmarks/error_screens.py
	QT_QPA_PLATFORM=offscreen $(PY) -m explorer gui digits-cnn --plan sample_models/digits-cnn.structured.plan.json --layer conv2 --concept granularity --screenshot assets/concept-granularity.png
	QT_QPA_PLATFORM=offscreen $(PY) -m explorer gui digits-cnn --plan sample_models/digits-cnn.plan.json --layer fc1 --concept storage --screenshot assets/concept-storage.png
	QT_QPA_PLATFORM=offscreen $(PY) -m explorer gui digits-cnn --plan sample_models/digits-cnn.plan.json --layer fc1 --concept quantization --screenshot assets/concept-quantization.png
	QT_QPA_PLATFORM=offscreen $(PY) -m explorer gui digits-cnn --plan sample_models/digits-cnn.plan.json --layer fc1 --concept entropy --screenshot assets/concept-entropy.png
	QT_QPA_PLATFORM=offscreen $(PY) -m explorer gui digits-cnn --plan sample_models/digits-cnn.structured.plan.json --layer fc1 --concept lowrank --screenshot assets/concept-lowrank.png
	QT_QPA_PLATFORM=offscreen $(PY) -m explorer gui digits-cnn --plan sample_models/digits-cnn.plan.json --layer fc1 --concept pipeline --screenshot assets/concept-pipeline.png
	QT_QPA_PLATFORM=offscreen $(PY) -m explorer gui digits-cnn --plan sample_models/digits-cnn.plan.json --layer fc1 --concept graph --screenshot assets/concept-graph.png
	QT_QPA_PLATFORM=offscreen $(PY) benchmarks/teacher_screen.py
	QT_QPA_PLATFORM=offscreen $(PY) -m explorer gui digits-cnn --plan sample_models/digits-cnn.tt-circulant.plan.json --layer fc1,fc2 --screenshot assets/tt-circulant.png
	QT_QPA_PLATFORM=offscreen $(PY) -m explorer gui digits-cnn --plan benchmarks/plans/digits-cnn.obd-conv2.plan.json --layer conv2 --screenshot assets/obd-histogram.png
	QT_QPA_PLATFORM=offscreen $(PY) benchmarks/group_lasso_screen.py

samples: $(STAMP)
	$(PY) sample_models/train_samples.py

bench: $(STAMP)
	$(PY) benchmarks/sample_plans.py
	$(PY) benchmarks/method_table.py

bench-kernels: $(STAMP)
	$(PY) benchmarks/kernel_bench.py

bench-gui: $(STAMP)
	$(PY) benchmarks/gui_latency.py
	$(PY) benchmarks/gui_latency.py --layer layer2.1.conv2
	QT_QPA_PLATFORM=offscreen $(PY) benchmarks/concept_views.py --model resnet18

bench-runtime: $(STAMP)
	$(PY) benchmarks/runtime.py
	$(PY) benchmarks/resnet_mnist.py --data ../shared/data/mnist-t10k --seeds 0,1,2 --threads 2

bench-large: $(STAMP)
	$(PY) benchmarks/gui_latency.py --model vgg16 --images 8 --rounds 2
	$(PY) benchmarks/large_model_memory.py

fuzz: $(STAMP)
	$(PY) benchmarks/fuzz_format.py --seconds 120

probe: $(STAMP)
	$(PY) benchmarks/fuzz_probe.py

soak: $(STAMP)
	$(PY) benchmarks/soak_memory.py
	QT_QPA_PLATFORM=offscreen $(PY) benchmarks/soak.py

clean:
	rm -rf $(VENV) .pytest_cache
