"""``python -m llm_assets.gc [--dry-run] [--older-than H] [--verify]``: collect the artifact store's garbage.

The store is the one the code location uses (``LLM_ASSETS_STORE``, ``LLM_ASSETS_S3_ENDPOINT``, ``AWS_REGION``); this
node's worker scratch (``LLM_ASSETS_SCRATCH`` or the temporary directory) is swept too. What is garbage and what is
kept: ``llm_assets.maintenance.gc``. The CLI cannot see runs in progress: its age threshold alone protects their
checkpoints (the ``store_gc_job`` also keeps those of recipes with a run in progress).
"""

from __future__ import annotations

import argparse
import os
import sys

from llm_assets.artifacts import open_store
from llm_assets.maintenance.gc import collect_garbage, scratch_root
from llm_assets.paths import default_store_root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm_assets.gc", description="Collect the artifact store's garbage; what is garbage and what is kept: llm_assets.maintenance.gc.")
    parser.add_argument("--dry-run", action="store_true", help="List what would be deleted and its bytes; delete nothing.")
    parser.add_argument("--older-than", type=float, default=24.0, metavar="H",
                        help="Only what nothing has written for H hours (default 24): commits and runs under way are younger.")
    parser.add_argument("--verify", action="store_true", help="Also hash every kept version and delete corrupt ones.")
    args = parser.parse_args(argv)
    if args.older_than < 0:
        parser.error("--older-than is a number of hours, 0 or more")
    store = open_store(default_store_root(), os.environ.get("LLM_ASSETS_S3_ENDPOINT") or None,
                       os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None)
    report = collect_garbage(store, args.older_than, args.dry_run, scratch=scratch_root(), verify=args.verify)
    for line in report.lines():
        print(line)
    print(f"{store.root}: {report.summary()}")
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
