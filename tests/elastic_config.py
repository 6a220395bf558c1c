"""Test-only changes to the session catalog for the elastic-capacity tests (tests/test_elastic.py).

- `microsoft/Florence-2-base` scales back to zero within seconds instead of minutes, so one test can
  watch a whole 0 -> 1 -> 0 cycle. Other tests that call it only see an extra cold start.
- `gateway.images.max_side` is 9000 instead of 10000, so a test sees the operator's limit applied in
  the model replicas too (tests/test_encoded_images.py).
- `test/toy-colour` is a sixth family defined only in the test tree (tests/toy_family), named under
  the app args' `families:` and served live with one small replica (tests/test_toy_family.py). Its
  catalog card holds HTML markup that the web pages must escape (tests/test_pages.py).
- `test/unplaceable` is an extra catalog entry whose replica asks for a GPU this machine does not
  have: its requests must time out cleanly (504) after its own short `cold_start_timeout_s`, and it
  uses the demand policy, so interest pre-warms it and it is released again when demand is gone.
"""

from __future__ import annotations

from typing import Any

from tests.helpers import FLORENCE_BASE

ELASTIC_MODEL = FLORENCE_BASE
UNPLACEABLE = "test/unplaceable"
OPERATOR_MAX_SIDE = 9000
TOY_MODEL = "test/toy-colour"
TOY_FAMILY_PATH = "tests.toy_family.descriptor:TOY"
TEST_ONLY_MODELS = frozenset({UNPLACEABLE, TOY_MODEL})
# Markup in the toy model's catalog metadata: the pages must show it as text (tests/test_pages.py).
INJECTION = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 1"><b>bold</b>'
TOY_CARD = {
    "description": f"Mean colour. {INJECTION}",
    "specs": {f"<i>key</i> {INJECTION}": f"value {INJECTION}"},
    "benchmarks": [
        {"benchmark": f"bench {INJECTION}", "metric": "<u>metric</u>", "value": 1.5, "source": f"source {INJECTION}"}
    ],
    "links": [{"title": f"link {INJECTION}", "url": "https://example.com/toy"}],
}
UNPLACEABLE_TIMEOUT_S = 3
UNPLACEABLE_PREWARM = 2
# The keeper checks every second (10 s by default) and an extra standby leaves after 3 s (30 s).
STANDBY_CHECK_S = 1.0
STANDBY_GRACE_S = 3.0

FAST_SCALE_TO_ZERO = {
    "metrics_interval_s": 1,
    "upscale_delay_s": 0,
    "look_back_period_s": 2,
    "downscale_delay_s": 4,
    "downscale_to_zero_delay_s": 4,
}


def apply_elastic_overrides(args: dict[str, Any]) -> None:
    """Shorten the elastic model's delays and the standby checks, and add the unplaceable entry to the session's `args`."""
    args.setdefault("gateway", {})["standby_check_s"] = STANDBY_CHECK_S
    # an operator limit below the default, so tests can tell it reached the model replicas
    args["gateway"].setdefault("images", {})["max_side"] = OPERATOR_MAX_SIDE
    for model in args["models"]:
        if model["id"] == ELASTIC_MODEL:
            scaling = model.setdefault("deployment", {}).setdefault("autoscaling_config", {})
            scaling.update(FAST_SCALE_TO_ZERO)
    args.setdefault("families", []).append(TOY_FAMILY_PATH)
    args["models"].append(
        {
            "id": TOY_MODEL,
            "source": "siglip2",
            "family": "toy-colour",
            "owned_by": "test",
            "card": TOY_CARD,
            "deployment": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0}},
        }
    )
    args["models"].append(
        {
            "id": UNPLACEABLE,
            "source": "blip",
            "family": "blip",
            "status": "coming_soon",
            "owned_by": "test",
            "cold_start_timeout_s": UNPLACEABLE_TIMEOUT_S,
            "generation": {"max_new_tokens": 8},
            "deployment": {
                "ray_actor_options": {"num_cpus": 0.1, "num_gpus": 1},
                "autoscaling_config": {"max_replicas": 1, **FAST_SCALE_TO_ZERO},
            },
            "demand_policy": {
                "interest_window_s": 8,
                "prewarm_interest": UNPLACEABLE_PREWARM,
                "keep_warm_interest": UNPLACEABLE_PREWARM,
                "refresh_s": 0.5,
            },
        }
    )
