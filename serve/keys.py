"""Manage the gateway's API keys from a shell (they live in the store: no redeploy needed).

    python -m serve.keys create --name team-a --budget-usd 25 \\
        --models microsoft/Florence-2-large,google/siglip2-base-patch16-naflex [--rate-limit 5] [--expires 2027-01-01]
    python -m serve.keys list [--json]
    python -m serve.keys revoke key_0123456789abcdef --reason "left the project"
    python -m serve.keys set-budget key_0123456789abcdef 50        # "none": no budget
    python -m serve.keys update key_0123456789abcdef --models all --rate-limit none --expires never

`create` prints the secret once: only its hash is stored. The database is `--database-url`, else
`$GIGAROUTER_DATABASE_URL`, else the gateway's default SQLite file (`data/gigarouter.sqlite3`,
relative to the working directory); its schema is migrated first if it is behind. Exit status 0
on success, 1 with a message on stderr otherwise (unknown key, bad value, database unreachable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, date, datetime
from typing import Any

from serve.store import DATABASE_URL_ENV, UNSET, KeyRecord, Store, StoreError, default_url

NONE_WORDS = {"none", "null", "unlimited"}


def parse_expiry(text: str) -> datetime | None:
    """`2027-01-01` (midnight UTC), an ISO datetime (naive: UTC), or `never`."""
    if text.lower() in NONE_WORDS | {"never"}:
        return None
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date or ISO datetime: {text!r} (e.g. 2027-01-01)") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def parse_optional_float(text: str) -> float | None:
    if text.lower() in NONE_WORDS:
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number (or 'none'): {text!r}") from None


def parse_models(text: str) -> list[str] | None:
    """A comma-separated list of model ids, or `all`."""
    if text.strip().lower() in NONE_WORDS | {"all", "*"}:
        return None
    models = [model.strip() for model in text.split(",") if model.strip()]
    if not models:
        raise argparse.ArgumentTypeError("--models needs model ids separated by commas, or 'all'")
    return models


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database-url",
        default=argparse.SUPPRESS,
        help=f"the store's URL (default: ${DATABASE_URL_ENV}, else the gateway's default SQLite file)",
    )
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    main = argparse.ArgumentParser(prog="python -m serve.keys", description=__doc__.splitlines()[0], parents=[common])
    commands = main.add_subparsers(dest="command", required=True)

    create = commands.add_parser("create", parents=[common], help="create a key and print its secret once")
    create.add_argument("--name", required=True)
    create.add_argument("--budget-usd", type=parse_optional_float, default=None)
    create.add_argument("--models", type=parse_models, default=None, help="comma-separated model ids (default: all)")
    create.add_argument("--rate-limit", type=parse_optional_float, default=None, help="requests per second")
    create.add_argument("--expires", type=parse_expiry, default=None, help="date or ISO datetime (UTC)")

    listing = commands.add_parser("list", parents=[common], help="list keys (secrets are never shown)")
    listing.add_argument("--active", action="store_true", help="leave out revoked keys")

    revoke = commands.add_parser("revoke", parents=[common], help="revoke a key for good")
    revoke.add_argument("id")
    revoke.add_argument("--reason", required=True)

    budget = commands.add_parser("set-budget", parents=[common], help="set a key's budget in USD ('none': no budget)")
    budget.add_argument("id")
    budget.add_argument("usd", type=parse_optional_float)

    update = commands.add_parser("update", parents=[common], help="change a key's name, models, rate limit or expiry")
    update.add_argument("id")
    update.add_argument("--name", default=UNSET)
    update.add_argument("--models", type=parse_models, default=UNSET, help="comma-separated model ids, or 'all'")
    update.add_argument("--rate-limit", type=parse_optional_float, default=UNSET, help="requests per second or 'none'")
    update.add_argument("--expires", type=parse_expiry, default=UNSET, help="date, ISO datetime or 'never'")
    return main


def describe(key: KeyRecord) -> str:
    state = "revoked" if key.revoked_at else "expired" if key.refusal() else "active"
    fields = {
        "id": key.id,
        "name": key.name,
        "prefix": key.secret_prefix + "...",
        "state": state,
        "models": ",".join(key.models) if key.models is not None else "all",
        "rate_limit": f"{key.rate_limit:g}/s" if key.rate_limit is not None else "default",
        "budget_usd": f"{key.budget_usd:g}" if key.budget_usd is not None else "none",
        "spent_usd": f"{key.spent_usd:.6f}",
        "expires": key.expires_at.isoformat() if key.expires_at else "never",
    }
    if key.revoked_at:
        fields["revoked"] = f"{key.revoked_at.isoformat()} ({key.revoked_reason or 'no reason'})"
    return "  ".join(f"{name}={value}" for name, value in fields.items())


async def run(args: argparse.Namespace) -> Any:
    """Carry out one command; returns what to print (JSON-able when --json)."""
    store = Store(getattr(args, "database_url", None) or default_url())
    try:
        await store.migrate()
        if args.command == "create":
            key, secret = await store.create_key(
                args.name,
                budget_usd=args.budget_usd,
                models=args.models,
                rate_limit=args.rate_limit,
                expires_at=args.expires,
            )
            return {"key": key, "secret": secret}
        if args.command == "list":
            return await store.list_keys(include_revoked=not args.active)
        if args.command == "revoke":
            return await store.revoke_key(args.id, args.reason)
        if args.command == "set-budget":
            return await store.update_key(args.id, budget_usd=args.usd)
        return await store.update_key(
            args.id, name=args.name, models=args.models, rate_limit=args.rate_limit, expires_at=args.expires
        )
    finally:
        await store.close()


def render(result: Any, as_json: bool) -> str:
    if isinstance(result, dict):  # create
        key, secret = result["key"], result["secret"]
        if as_json:
            return json.dumps({**key.to_json(), "secret": secret}, indent=2)
        return f"{describe(key)}\nsecret (shown once, store it now): {secret}"
    if isinstance(result, list):
        if as_json:
            return json.dumps([key.to_json() for key in result], indent=2)
        return "\n".join(describe(key) for key in result) or "(no keys)"
    return json.dumps(result.to_json(), indent=2) if as_json else describe(result)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result = asyncio.run(run(args))
    except (StoreError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(render(result, getattr(args, "json", False)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
