# gigarouter-serve: `make run` serves on 127.0.0.1:8000, `make test` runs the suite, `make bench` benchmarks.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CHECKPOINTS := checkpoints/tiny
CONFIG ?= serve/configs/local.yaml
# torch first, pinned: this machine has a CPU build of 2.13.0 on local disk; a bare `torch`
# requirement would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0
# Keep a local Ray on 127.0.0.1 instead of the machine's network address.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
# Serve's HTTP proxy answers its own errors in the gateway's envelope and resends a request whose
# ingress replica died (serve/proxy_errors.py).
export RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH := serve.proxy_errors:middlewares

.PHONY: install checkpoints run test bench soak clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(FIND_LINKS) "$(TORCH_PIN)"
	$(PIP) install -q $(FIND_LINKS) -e ".[test,bench]"
	touch $@

checkpoints: install
	$(PY) -m tools.tiny_checkpoints --out $(CHECKPOINTS)

# `serve run` in the foreground; beside it, serve.announce prints one line once every live model
# has a replica (GET /health/ready), with the address.
run: checkpoints
	$(PY) -m serve.announce --config $(CONFIG) & \
	$(VENV)/bin/serve run $(CONFIG)

test: checkpoints
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The benchmark (benchmarks/run.py): ~13 min on 2 cores; writes benchmarks/results/latest.{json,md,png}.
# Then the photo benchmark (benchmarks/photo.py, ~3 min): a 12 MP JPEG in-process and through the
# gateway; writes benchmarks/results/photo.{md,json}. Smoke run: PHOTO_ARGS=--quick.
bench: checkpoints
	$(PY) -m benchmarks.run $(BENCH_ARGS)
	$(PY) -m benchmarks.photo $(PHOTO_ARGS)

# A bounded soak (soak/run.py): 16 clients, mixed models and endpoints, coming-soon models waking and
# sleeping, a model replica and the ingress killed midway; 10 min against its own gateway on
# 127.0.0.1. Exit 1 on unexpected outcomes, error bodies outside the envelope, or growth of the
# process count or memory of its Ray stack after warm-up. Shorter: SOAK_ARGS="--duration 120".
soak: checkpoints
	$(PY) -m soak.run $(SOAK_ARGS)

clean:
	rm -rf $(VENV) checkpoints .pytest_cache
