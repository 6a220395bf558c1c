"""The Python entry point of a model's Ray worker processes: import the model code, then run Ray's worker.

Set as the runtime env's `py_executable` (`serve.standby.preloading`), so Ray starts a model's
worker processes as `python -m deployments.preload <ray's worker script> <its arguments>`. The
imports (Ray Serve, torch, transformers, every family module: ~4 s on a 2-core machine) happen
before the process registers with Ray, which is what lets a standby worker started ahead of a
cold start hand its replica a process with all of that already done. A daemon thread then keeps
at most one idle such process per node and runtime env (`deployments.standby_slot`).
"""

import os
import runpy
import sys
import tempfile
import threading
import time
import traceback

# When the imports were done (wall clock), for the replica's `stats()`: a replica that took a
# standby worker finished them before the request that woke it was sent.
PRELOADED_AT_ENV = "GIGAROUTER_PRELOADED_AT"
# Set by `serve.standby.preloading` in the runtime env of these processes: the key of their env.
PRELOAD_MARKER = "GIGAROUTER_PRELOAD"


def preload() -> None:
    """Import what a model replica needs; a failure is left for the replica itself to report."""
    try:
        import ray.serve  # noqa: F401

        from families.registry import FAMILIES, runtime_class

        for family in list(FAMILIES.values()):
            runtime_class(family)
    except Exception:
        # The replica imports the same modules and fails with this error through Serve, where
        # operators look; here it would only kill the process before it can say why.
        traceback.print_exc()
    os.environ[PRELOADED_AT_ENV] = repr(time.time())


def watch_slot(args: list[str]) -> None:
    """Start the thread that keeps this node's standby count for this runtime env at one."""
    from deployments.standby_slot import argument, grace_from_env, guard, slot_path

    env_key = os.environ.get(PRELOAD_MARKER)
    node_id = argument(args, "--node-id")
    if not env_key or not node_id:
        return
    path = slot_path(argument(args, "--temp-dir") or tempfile.gettempdir(), node_id, env_key)
    threading.Thread(target=guard, args=(path, grace_from_env()), name="standby-slot", daemon=True).start()


def main() -> None:
    preload()
    worker_script, *args = sys.argv[1:]
    watch_slot(args)
    sys.argv = [worker_script, *args]
    runpy.run_path(worker_script, run_name="__main__")


if __name__ == "__main__":
    main()
