"""Schema migrations from a shell: `python -m serve.store upgrade|downgrade|current|check [--url URL]`.

    python -m serve.store upgrade --url postgresql+asyncpg://gigarouter:secret@db:5432/gigarouter
    python -m serve.store current                       # $GIGAROUTER_DATABASE_URL or the default SQLite file
    python -m serve.store downgrade --revision base     # drops every table of the store

Exit status 0 on success; 1 with a one-line message when the database is unreachable or its
schema is newer than this code (`check`: also when it is older).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from serve.store import migrate
from serve.store.engine import DATABASE_URL_ENV, StoreError, default_url, make_engine, redacted


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serve.store", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["upgrade", "downgrade", "current", "check", "head"])
    parser.add_argument("--url", default=None, help=f"database URL (default: ${DATABASE_URL_ENV} or the SQLite file)")
    parser.add_argument("--revision", default=None, help="target revision (upgrade: head; downgrade: required)")
    args = parser.parse_args(argv)
    if args.command == "downgrade" and not args.revision:
        parser.error("downgrade needs --revision (e.g. base, or a revision id)")
    return args


async def run(args: argparse.Namespace) -> str:
    if args.command == "head":
        return migrate.head()
    url = args.url or default_url()
    engine = make_engine(url)
    try:
        if args.command == "upgrade":
            revision = await migrate.upgrade(engine, args.revision or "head")
        elif args.command == "downgrade":
            revision = await migrate.downgrade(engine, args.revision)
        elif args.command == "check":
            await migrate.check(engine)
            revision = migrate.head()
        else:
            revision = await migrate.current(engine)
    finally:
        await engine.dispose()
    return f"{redacted(url)}: at revision {revision or '(none)'} (this code's head: {migrate.head()})"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        print(asyncio.run(run(args)))
    except (StoreError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
