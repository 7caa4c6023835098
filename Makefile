# Two entry points (see README "Quick start"): `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -e '.[dev]'
	# bytecode for what prunecli and its tests import, once, instead of every package's files at install
	$(PY) -c 'import torch, torch._dynamo, torch.export, torch.onnx, torch.distributed, torch.fx, torchvision.models, \
		torchvision.datasets, torch_pruning, onnx, onnxscript, onnxruntime.quantization, timm, sklearn, safetensors, \
		matplotlib.pyplot, prunecli.cli.app, prunecli.pipeline.prune'
	touch $(STAMP)

.PHONY: install demo test test-slow clean
install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/prunecli demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow -n 0

clean:
	rm -rf $(VENV) build *.egg-info
