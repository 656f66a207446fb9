"""``python -m llm_assets.launch.check_pod RECIPE STAGE [-- COMMAND...]``: print the worker pod for a stage as a
Kubernetes manifest, from the same settings the code location has (``LLM_ASSETS_K8S``), to try on a cluster:

    python -m llm_assets.launch.check_pod llama31-8b-qlora sft | kubectl apply --dry-run=server -f -
    python -m llm_assets.launch.check_pod llama31-8b-qlora sft -- nvidia-smi | kubectl apply -f -

The first lets the API server check it (schema, admission, quotas, RBAC); the second schedules it on a GPU node.
It is the pod ``run_k8s_worker`` creates, less the run's Pipes context.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

import yaml
from dagster_k8s.pipes import build_pod_body
from kubernetes.client import ApiClient

from llm_assets.launch.from_env import K8S_ENV, launch_config_from_env
from llm_assets.launch.k8s import K8sSettings, pod_metadata, pod_spec
from llm_assets.launch.sizing import WORKER_STAGES
from llm_assets.recipes import Recipe, load_recipe


def check_pod(recipe: Recipe, stage: str, settings: K8sSettings, command: list[str]) -> dict[str, Any]:
    """The worker pod as PipesK8sClient builds it (``build_pod_body``), as a manifest; ``command`` empty: the image's."""
    name = re.sub(r"[^a-z0-9-]", "-", f"llm-assets-check-{recipe.name}-{stage}")[:63].strip("-")
    pod = build_pod_body(pod_name=name, image=settings.image, command=command or None, env_vars={},
                         base_pod_meta=pod_metadata(recipe, stage, settings), base_pod_spec=pod_spec(recipe, stage, settings))
    return {"apiVersion": "v1", "kind": "Pod", **ApiClient().sanitize_for_serialization(pod)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm_assets.launch.check_pod", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("stage", choices=WORKER_STAGES)
    parser.add_argument("command", nargs="*", help="The container's command (after --); default: the image's.")
    args = parser.parse_args(argv)
    try:
        settings = launch_config_from_env().k8s
        if settings is None:
            parser.error(f"set {K8S_ENV} to the Kubernetes launcher's settings (YAML), as the code location has them")
        pod = check_pod(load_recipe(args.recipe), args.stage, settings, args.command)
    except ValueError as e:  # RecipeError included
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    print(yaml.safe_dump(pod, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
