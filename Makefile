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

.PHONY: install checkpoints postgres browser run test bench bench-check bench-overhead soak clean

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

# TLS for local use (tools/selfsigned.py): a throwaway CA and a certificate for 127.0.0.1/::1/localhost
# in certs/ (git-ignored), and certs/<config>-tls.yaml: $(CONFIG) served over https on 127.0.0.1:8443.
# Clients trust certs/ca.crt: SSL_CERT_FILE=certs/ca.crt (Python, fal_client), curl --cacert certs/ca.crt.
.PHONY: cert run-tls
cert: install
	$(PY) -m tools.selfsigned --out certs --config $(CONFIG)

# `make run` over https (what fal_client needs): makes the certificate first when there is none.
run-tls: checkpoints
	test -f certs/$(basename $(notdir $(CONFIG)))-tls.yaml || $(MAKE) cert
	$(MAKE) run CONFIG=certs/$(basename $(notdir $(CONFIG)))-tls.yaml

# PostgreSQL server binaries for the store tests (tests/postgres.py starts a throwaway server on
# 127.0.0.1 from them, as the `postgres` user when run as root): Debian's `postgresql` package,
# installed only when no server is found. The package's own "main" cluster is not created, so
# nothing starts on port 5432. About 20-40 s on a machine without it; nothing when it is there.
PG_BIN_GLOB := /usr/lib/postgresql/*/bin/postgres
postgres:
	@if ls $(PG_BIN_GLOB) >/dev/null 2>&1 || [ -n "$$PG_BIN" ]; then exit 0; fi; \
	echo "installing Debian's postgresql for the store tests"; \
	SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	$$SUDO mkdir -p /etc/postgresql-common/createcluster.d && \
	echo "create_main_cluster = false" | $$SUDO tee /etc/postgresql-common/createcluster.d/gigarouter.conf >/dev/null && \
	$$SUDO apt-get update -q && \
	DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends postgresql >/dev/null

# Headless Chromium and its WebDriver for the browser tests (tests/test_pages.py): Debian's
# `chromium` and `chromium-driver`, installed only when either is missing (~1-2 min once; nothing
# when they are there). The tests start them themselves and talk to 127.0.0.1 only.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then exit 0; fi; \
	echo "installing Debian's chromium and chromium-driver for the browser tests"; \
	SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	$$SUDO apt-get update -q && \
	DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null

test: checkpoints postgres browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The benchmark (benchmarks/run.py; `benchmarks/README.md`): one run, ~65 min on 2 cores, of three phases:
# throughput (tiny model costs, SigLIP2 and BLIP against the raw loop and the peers, busy fractions),
# photo (12 MP JPEG: SigLIP2 and Florence-2-base against the raw loop, naive server, LitServe) and ttft
# (streamed captions); writes benchmarks/results/latest.{json,md,png} with validity flags. Then the
# metering benchmark (~5 min). Smoke run: BENCH_ARGS=--quick. One phase: BENCH_ARGS="--phase photo".
bench: checkpoints
	$(PY) -m benchmarks.run $(BENCH_ARGS)
	$(PY) -m benchmarks.metering $(METERING_ARGS)

# The gateway's own cost under Serve's proxy, HAProxy and Serve's throughput preset, each on a fresh
# Ray (benchmarks/overhead.py, ~14 min); writes benchmarks/results/overhead.{json,md}.
bench-overhead: checkpoints
	$(PY) -m benchmarks.overhead $(OVERHEAD_ARGS)

# An independent client (plain threads, 40-second windows) against the SigLIP2 gateway, each window
# between two of the model in a plain loop; exit 1 if gateway / raw differs from latest.json's by
# more than 5 % (the absolute images/s is printed too). Run after `make bench` (~10 min).
bench-check: checkpoints
	$(PY) -m benchmarks.check $(CHECK_ARGS)

# A bounded soak (soak/run.py): 16 clients, mixed models and endpoints, coming-soon models waking and
# sleeping, a model replica and the ingress killed midway; 10 min against its own gateway on
# 127.0.0.1. Exit 1 on unexpected outcomes, error bodies outside the envelope, or growth of the
# process count or memory of its Ray stack after warm-up. Shorter: SOAK_ARGS="--duration 120".
soak: checkpoints
	$(PY) -m soak.run $(SOAK_ARGS)

clean:
	rm -rf $(VENV) checkpoints .pytest_cache
