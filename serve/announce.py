"""Say once where the gateway is and when it is ready: `make run` starts this beside `serve run`.

    python -m serve.announce [--config serve/configs/local.yaml] [--timeout 900]

It reads the HTTP host and port from the Serve config file (https when it names `ssl_certfile`:
then it trusts exactly that certificate, whatever names it carries), polls `GET /health/ready` on that
address, and prints one line when every live model has a running replica (or, after `--timeout`,
one line saying what it still waits for). Torch-free; it never sends anything but that GET.
"""

from __future__ import annotations

import argparse
import ssl
import sys
import time
from pathlib import Path

import httpx
import yaml


def _http_options(config: Path) -> dict:
    return (yaml.safe_load(config.read_text()) or {}).get("http_options") or {}


def address(config: Path) -> str:
    """The gateway's base URL from a Serve config file's `http_options` (Serve's defaults otherwise)."""
    options = _http_options(config)
    host = options.get("host") or "127.0.0.1"
    host = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    scheme = "https" if options.get("ssl_certfile") else "http"
    return f"{scheme}://{host}:{options.get('port') or 8000}"


def verification(config: Path) -> ssl.SSLContext | bool:
    """For https: trust the configured certificate itself (it is this gateway's own, and it need not
    name the address polled); default verification otherwise."""
    certfile = _http_options(config).get("ssl_certfile")
    if not certfile:
        return True
    context = ssl.create_default_context(cafile=certfile)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the certificate is its own trust anchor
    context.check_hostname = False
    return context


def wait_ready(
    url: str, timeout_s: float, every_s: float = 1.0, verify: ssl.SSLContext | bool = True
) -> tuple[bool, dict]:
    """(ready, last readiness body) after polling `url`/health/ready until ready or `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: dict = {}
    with httpx.Client(timeout=10, trust_env=False, verify=verify) as http:
        while True:
            try:
                response = http.get(f"{url}/health/ready")
                last = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
                if response.status_code == 200:
                    return True, last
            except httpx.HTTPError:
                pass  # not listening yet
            if time.monotonic() >= deadline:
                return False, last
            time.sleep(every_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("serve/configs/local.yaml"))
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait (default 900)")
    options = parser.parse_args(argv)
    url = address(options.config)
    started = time.monotonic()
    ready, body = wait_ready(url, options.timeout, verify=verification(options.config))
    if ready:
        print(f"gigarouter-serve is ready at {url} ({time.monotonic() - started:.0f} s; try {url}/docs)", flush=True)
        return 0
    waiting = "; ".join(f"{model}: {why}" for model, why in (body.get("waiting_for") or {}).items()) or "no answer"
    print(f"gigarouter-serve at {url} is not ready after {options.timeout:g} s ({waiting})", file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
