"""The training worker: runs a ``WorkOrder`` anywhere the artifact store can be reached.

It fetches the order's inputs from the store into its own scratch directory (verified against their
manifests), resolves adapters' bases, snapshots a hub base itself, runs the stage, and commits the output
without making it current: the orchestrator does that once it has recorded the run. Every rank of a
torchrun job resolves the same inputs (the cache takes concurrent fetches); rank 0 alone writes to the store.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
import traceback
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from llm_assets.artifacts import Store, open_store
from llm_assets.paths import worker_cache_dir
from llm_assets.tokens_cache import TOKENS_FILE
from llm_assets.training.models import ADAPTER_CONFIG, adapter_base, is_adapter
from llm_assets.training.checkpoints import RUN_FILES, checkpoint_lock
from llm_assets.training.order import WorkOrder
from llm_assets.training.curves import curves_path, render
from llm_assets.training.report import Reporter
from llm_assets.training.spec import StageSpec
from llm_assets.training.tracking import log_final_metrics

REF_SCHEME = "llm-assets://"  # an adapter names its base as llm-assets://<key>@<version>, never as a path


def run_stage(stage: str, spec: StageSpec, reporter: Reporter) -> dict[str, Any]:
    module = importlib.import_module(f"llm_assets.training.{'evaluate_stage' if stage == 'evaluate' else stage}")
    return module.run(spec, reporter)


def is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def model_ref(key: str, version: str) -> str:
    return f"{REF_SCHEME}{key}@{version}"


def parse_ref(ref: str) -> tuple[str, str]:
    key, _, version = ref[len(REF_SCHEME):].rpartition("@")
    if not key or not version:
        raise ValueError(f"{ref!r} is not a store reference (llm-assets://<key>@<version>)")
    return key, version


class Inputs:
    """Store artifacts fetched for one order, and the reference each local directory stands for."""

    def __init__(self, store: Store, scratch: Path):
        self.store, self.scratch = store, scratch
        self.refs: dict[str, str] = {}  # resolved local directory -> llm-assets:// reference

    def model(self, key: str, version: str) -> str:
        """A loadable model directory: the artifact itself, or for an adapter a copy whose base is a local directory."""
        path = self.store.get(key, version).path
        self.refs[str(Path(path).resolve())] = model_ref(key, version)
        if not is_adapter(path):
            return str(path)
        base = adapter_base(path)
        if not base.startswith(REF_SCHEME):
            raise ValueError(f"{key}@{version[:12]} is a LoRA adapter whose base is {base!r}, not a store reference: "
                             "it was trained by an older version; materialize it again with force_retrain")
        local = self.scratch / "adapters" / version
        if not local.exists():
            shutil.copytree(path, local, ignore=shutil.ignore_patterns("MANIFEST.json"))
            set_adapter_base(local, self.model(*parse_ref(base)))
        return str(local)

    def portable(self, output: Path) -> None:
        """Before commit: the output names nothing of this node. An adapter names its base by store reference (in its
        config and PEFT's model card) instead of a path here; the Trainer's pickled arguments, which hold this run's
        scratch paths, are a record of the run, not part of the model (two runs of one training get one version)."""
        for name in RUN_FILES:
            (output / name).unlink(missing_ok=True)
        if is_adapter(output):
            written = adapter_base(output)
            base = str(Path(written).resolve())
            if base not in self.refs:
                raise ValueError(f"the trained adapter's base {base} is not one of the order's inputs")
            set_adapter_base(output, self.refs[base])
            card = output / "README.md"
            if card.exists():
                card.write_text(card.read_text().replace(written, self.refs[base]))


def set_adapter_base(directory: str | Path, base: str) -> None:
    path = Path(directory) / ADAPTER_CONFIG
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = base
    path.write_text(json.dumps(config, indent=1))


def keep_run_records(order: WorkOrder, store: Store, metrics: dict[str, Any]) -> None:
    """What the run leaves beside the model, not in its version: its curves as a PNG next to the run record, and its
    held-out figures added to the tracker's run (the Trainer closed it before they were measured)."""
    png = render(metrics.get("log_history") or [], f"{order.stage} · recipe {order.recipe.get('name', '')}")
    if png is not None:
        store.objects.write_bytes(curves_path(order.output_key, order.fingerprint), png)
    log_final_metrics(metrics.get("tracking") or {}, metrics)


def hub_snapshot(order: WorkOrder) -> str:
    """A hub base at its pinned revision, downloaded by the worker itself (HF_TOKEN from its environment)."""
    from llm_assets.recipes import Recipe
    from llm_assets.resources.hub import HubClient, check_architecture

    hub, recipe = order.hub or {}, Recipe.model_validate(order.recipe)
    client = HubClient(token=os.environ.get("HF_TOKEN") or None, cache_dir=os.environ.get("HF_HUB_CACHE") or None,
                       offline=bool(hub.get("offline")), timeout_s=hub.get("timeout_s", 10.0), endpoint=hub.get("endpoint"))
    snapshot = client.snapshot(hub["repo"], hub["revision"])
    check_architecture(snapshot, recipe.model.architecture, hub["repo"])
    return str(snapshot)


def prepare(order: WorkOrder, store: Store, scratch: Path) -> tuple[StageSpec, Inputs]:
    """The order as a local StageSpec: every key fetched into this node's cache or scratch."""
    inputs = Inputs(store, scratch)
    local = {role: inputs.model(ref["key"], ref["version"]) for role, ref in order.inputs.items()}
    if order.hub:
        local["snapshot"] = hub_snapshot(order)
    options = dict(order.options)
    if order.tokens and order.tokens.get("version"):
        local["tokens"] = str(store.get(order.tokens["key"], order.tokens["version"]).path)
    elif order.tokens:
        options["tokens_out"] = str(scratch / "tokens")
    datasets = {kind: [str(store.get(d["key"], d["version"]).file("dataset.parquet")) for d in drops]
                for kind, drops in order.datasets.items()}
    checkpoint_store = ({"root": order.store.root, "s3_endpoint": order.store.s3_endpoint, "region": order.store.region,
                         "key": order.checkpoints_key} if order.checkpoints else None)
    spec = StageSpec(stage=order.stage, recipe=order.recipe, output_dir=str(scratch / "out"), inputs=local,
                     datasets=datasets, checkpoint_dir=str(scratch / "checkpoints"), checkpoint_store=checkpoint_store,
                     options=options)
    return spec, inputs


def run_order(order: WorkOrder, reporter: Reporter) -> dict[str, Any]:
    """Run the order and commit its output; returns {version, metrics}. Its error is left at ``order.error_path``."""
    store = open_store(order.store.root, order.store.s3_endpoint, order.store.region, worker_cache_dir())
    root = os.environ.get("LLM_ASSETS_SCRATCH")
    scratch = Path(tempfile.mkdtemp(prefix=f"llm-assets-{order.stage}-", dir=root and Path(root)))
    held = ExitStack()
    try:
        if order.checkpoints and is_rank0():  # one worker per fingerprint writes its checkpoints, until it has cleared them
            held.enter_context(checkpoint_lock(store, order.checkpoints_key))
        spec, inputs = prepare(order, store, scratch)
        Path(spec.output_dir).mkdir(parents=True)
        metrics = run_stage(order.stage, spec, reporter)
        if not is_rank0():
            return {}
        out = Path(spec.output_dir)
        inputs.portable(out)
        manifest = store.commit(order.output_key, out, {"stage": order.stage, "fingerprint": order.fingerprint}, latest=False)
        keep_run_records(order, store, metrics)
        result = {"version": manifest.version, "metrics": metrics}
        store.put_json(order.result_path, result)
        if order.checkpoints:
            store.delete_key(order.checkpoints_key)  # committed: nothing left to resume
            shutil.rmtree(worker_cache_dir() / order.checkpoints_key, ignore_errors=True)
        reporter.log(f"[{order.stage}] committed {order.output_key} version {manifest.version[:12]} ({manifest.total_bytes:,} bytes)")
        return result
    except BaseException as e:
        if is_rank0():
            store.put_json(order.error_path, {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
        raise
    finally:
        held.close()
        tokens = scratch / "tokens"
        if is_rank0() and order.tokens and (tokens / TOKENS_FILE).exists():  # kept even when training failed: it is valid
            store.commit(order.tokens["key"], tokens, {"stage": order.stage})
        shutil.rmtree(scratch, ignore_errors=True)
