# Two entry points (see README "Quick start"): `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -e '.[dev]'
	# bytecode for what prunecli, its subprocesses and the test runner import, written once here instead of every
	# package's files at install. PYTHONDONTWRITEBYTECODE is emptied for this one step (pip's own compile ignores it
	# too): with it set, every process would compile these ~2,500 modules again (5-10 s per CLI call).
	PYTHONDONTWRITEBYTECODE= $(PY) -c 'import torch, torch._dynamo, torch.export, torch.onnx, torch.distributed.run, \
		torch.fx, torch._functorch.partitioners, torch._inductor.decomposition, torch.onnx._internal.exporter._core, \
		torchvision.models, torchvision.datasets, torch_pruning, onnx, onnxscript, onnxscript.function_libs.torch_lib.ops, \
		onnxruntime.quantization, timm, sklearn, sklearn.datasets, scipy.io, safetensors, matplotlib.pyplot, PIL.Image, \
		pytest, xdist, xdist.looponfail, execnet, importlinter.cli, pydantic, anyio, pygments.lexers, \
		prunecli.cli.app, prunecli.pipeline.prune'
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
