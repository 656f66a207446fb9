"""``python -m llm_assets.training STAGE``: the training worker Dagster Pipes launches (subprocess, torchrun, pod, task).

Launched by Dagster, it reads its work order from the Pipes extras (store keys and versions, no paths), and
rank 0 streams logs and the result back through Pipes. ``--spec spec.json`` runs a stage on local directories
instead (a ``StageSpec``): from a shell, a benchmark or a debugger, printing what it would report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
import warnings

from llm_assets.training.lean_process import exit_without_teardown, hide, unused_packages
from llm_assets.training.spec import STAGES, StageSpec


def load_order(stage: str):
    """The work order in this process's Pipes context. Every rank reads it (torchrun passes the environment on);
    only rank 0 opens the message channel."""
    from dagster_pipes import PipesDefaultContextLoader, PipesEnvVarParamsLoader

    from llm_assets.training.order import ORDER_EXTRA, WorkOrder

    with PipesDefaultContextLoader().load_context(PipesEnvVarParamsLoader().load_context_params()) as data:
        extras = data.get("extras") or {}
    if ORDER_EXTRA not in extras:
        raise SystemExit(f"the Pipes context carries no work order (extras key {ORDER_EXTRA!r}); "
                         "launch this stage from Dagster, or run it on local directories with --spec")
    order = WorkOrder.from_dict(extras[ORDER_EXTRA])
    if order.stage != stage:
        raise SystemExit(f"the work order is for stage {order.stage!r}, not {stage!r}")
    return order


def run_spec(stage: str, path: str) -> dict:
    spec = StageSpec.load(path)
    if spec.stage != stage:
        raise SystemExit(f"the spec is for stage {spec.stage!r}, not {stage!r}")
    hide(unused_packages(stage, spec.recipe))
    from llm_assets.training.report import Reporter
    from llm_assets.training.worker import run_stage

    try:
        return run_stage(stage, spec, Reporter())
    except BaseException as e:
        if int(os.environ.get("RANK", "0")) == 0:
            spec.error_path.write_text(json.dumps({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}))
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm_assets.training", description=__doc__)
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--spec", help="Run on local directories from this StageSpec JSON instead of a Pipes work order.")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    import datasets

    datasets.disable_progress_bars()
    if args.spec:
        result = run_spec(args.stage, args.spec)
        from llm_assets.training.report import Reporter

        Reporter().result(result)
        return 0
    from llm_assets.launch.parent_death import die_with_parent

    die_with_parent()  # a torchrun rank dies with torchrun, as torchrun and a single worker die with the Dagster step
    order = load_order(args.stage)
    hide(unused_packages(args.stage, order.recipe))
    from llm_assets.training.report import Reporter
    from llm_assets.training.worker import is_rank0, run_order

    if not is_rank0():
        run_order(order, Reporter())
        return 0
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        reporter = Reporter(pipes)
        result = run_order(order, reporter)
        reporter.result({"version": result["version"], **result["metrics"]})
    return 0


if __name__ == "__main__":
    exit_without_teardown(main())  # an error raises out of main() and exits as Python does, traceback and all
