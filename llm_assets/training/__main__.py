"""``python -m llm_assets.training STAGE --spec spec.json``: the process Dagster Pipes launches.

Under Pipes (DAGSTER_PIPES_* in the environment) logs and the final metrics go to the Dagster
run; otherwise they are printed, so a stage can be run and debugged from a shell. Under torchrun
only rank 0 talks to Dagster.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
import warnings

from llm_assets.training.report import Reporter
from llm_assets.training.spec import STAGES, StageSpec


def run_stage(stage: str, spec: StageSpec, reporter: Reporter) -> dict:
    module = importlib.import_module(f"llm_assets.training.{'evaluate_stage' if stage == 'evaluate' else stage}")
    return module.run(spec, reporter)


def _run_reporting_errors(stage: str, spec: StageSpec, reporter: Reporter) -> dict:
    try:
        return run_stage(stage, spec, reporter)
    except BaseException as e:
        if int(os.environ.get("RANK", "0")) == 0:
            spec.error_path.write_text(json.dumps({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}))
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm_assets.training", description=__doc__)
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--spec", required=True, help="Path of the stage spec JSON written by the orchestrator.")
    args = parser.parse_args(argv)
    spec = StageSpec.load(args.spec)
    if spec.stage != args.stage:
        parser.error(f"the spec is for stage {spec.stage!r}, not {args.stage!r}")
    warnings.filterwarnings("ignore", category=FutureWarning)
    import datasets

    datasets.disable_progress_bars()
    under_pipes = "DAGSTER_PIPES_CONTEXT" in os.environ and int(os.environ.get("RANK", "0")) == 0
    if under_pipes:
        from dagster_pipes import open_dagster_pipes

        with open_dagster_pipes() as pipes:
            reporter = Reporter(pipes)
            reporter.result(_run_reporting_errors(args.stage, spec, reporter))
    else:
        reporter = Reporter()
        reporter.result(_run_reporting_errors(args.stage, spec, reporter))
    return 0


if __name__ == "__main__":
    sys.exit(main())
