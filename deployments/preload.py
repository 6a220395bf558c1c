"""The Python entry point of a model's Ray worker processes: import the model code, then run Ray's worker.

Set as the runtime env's `py_executable` (`serve.standby.preloading`), so Ray starts a model's
worker processes as `python -m deployments.preload <ray's worker script> <its arguments>`. The
imports (Ray Serve, torch, transformers, every family module: ~4 s on a 2-core machine) happen
before the process registers with Ray, which is what lets a standby worker started ahead of a
cold start hand its replica a process with all of that already done.
"""

import os
import runpy
import sys
import time
import traceback

# When the imports were done (wall clock), for the replica's `stats()`: a replica that took a
# standby worker finished them before the request that woke it was sent.
PRELOADED_AT_ENV = "GIGAROUTER_PRELOADED_AT"


def preload() -> None:
    """Import what a model replica needs; a failure is left for the replica itself to report."""
    try:
        import ray.serve  # noqa: F401

        import deployments.registry  # noqa: F401
    except Exception:
        # The replica imports the same modules and fails with this error through Serve, where
        # operators look; here it would only kill the process before it can say why.
        traceback.print_exc()
    os.environ[PRELOADED_AT_ENV] = repr(time.time())


def main() -> None:
    preload()
    worker_script, *args = sys.argv[1:]
    sys.argv = [worker_script, *args]
    runpy.run_path(worker_script, run_name="__main__")


if __name__ == "__main__":
    main()
