"""What every deployment of this app is given besides its catalog entry's own settings.

Serve's replica environment, the scale-to-zero defaults of a coming-soon model, the path of the
demand-aware policy, and how runtime_envs merge. Plain data and functions: `ModelSpec.serve_options`
and `GatewayConfig.serve_options` build `Deployment.options` from them.
"""

from __future__ import annotations

from typing import Any

from serve.standby import INTERPRETER_KEYS

# The custom autoscaling policy of `demand_policy` (kept as a path: serve.autoscaling imports Ray).
DEMAND_POLICY_PATH = "serve.autoscaling:DemandAwarePolicy"

# Fast wake-up from zero: the router pushes its queue metrics every second and the controller
# scales up at once (FACTS.md: ~1.1 s instead of ~10 s with Serve's defaults).
SCALE_TO_ZERO_DEFAULTS: dict[str, Any] = {
    "min_replicas": 0,
    "initial_replicas": 0,
    "max_replicas": 1,
    "metrics_interval_s": 1.0,
    "upscale_delay_s": 0.0,
    "look_back_period_s": 30.0,
    "downscale_delay_s": 300.0,
    "downscale_to_zero_delay_s": 300.0,
}


# Ray Serve settings of every replica this app deploys (ingress and models), read by Serve as the
# replica starts. Each thread hop on the request path and each log line written per request costs
# CPU that a small machine's model needs (benchmarks/README.md has the measurements). A value set
# under `ray_actor_options.runtime_env.env_vars` of a deployment wins over these.
REPLICA_ENV: dict[str, str] = {
    # user code and the handle's router run on the replica's own event loop, not in extra threads
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    # request-path (access) log lines are written in batches; errors are flushed at once
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
}


def with_env(ray_actor_options: dict[str, Any], env: dict[str, str], app_env: dict[str, Any] | None = None) -> dict[str, Any]:
    """`ray_actor_options` whose runtime_env adds the application's (`app_env`) and our `env` variables.

    Serve gives a deployment that sets its own runtime_env that env instead of the application's,
    so the application's fields and variables are merged in here. Precedence, lowest first: our
    `env`, the application's runtime_env, the deployment's own runtime_env (operator values win).
    """
    app_env = dict(app_env or {})
    own = dict(ray_actor_options.get("runtime_env") or {})
    runtime_env = {**{k: v for k, v in app_env.items() if k != "env_vars"}, **own}
    runtime_env["env_vars"] = {**env, **(app_env.get("env_vars") or {}), **(own.get("env_vars") or {})}
    return {**ray_actor_options, "runtime_env": runtime_env}


def picks_interpreter(runtime_env: dict[str, Any] | None) -> list[str]:
    """The runtime_env keys that choose another interpreter or environment (standby workers cannot match those)."""
    return [key for key in INTERPRETER_KEYS if key in (runtime_env or {})]
