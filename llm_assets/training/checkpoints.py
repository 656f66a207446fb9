"""Trainer checkpoints kept in the artifact store, so a worker on another node resumes where a killed one stopped.

Each ``save_steps`` checkpoint is committed as a version of the run's checkpoint key (its manifest is written
last, so a half-uploaded checkpoint is never seen), the older ones are deleted once a newer one is complete, and
the key is removed when the stage's output is committed. Local disk is only the Trainer's scratch.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import TrainerCallback

from llm_assets.artifacts import Manifest, Store, open_store
from llm_assets.paths import worker_cache_dir

KEEP = 2  # complete checkpoints kept in the store (the Trainer's save_total_limit)


class StoreCheckpoints:
    def __init__(self, store: Store, key: str):
        self.store, self.key = store, key

    @classmethod
    def from_settings(cls, settings: dict | None) -> "StoreCheckpoints | None":
        """From a StageSpec's ``checkpoint_store`` ({root, s3_endpoint, region, key}); None when it has none."""
        if not settings:
            return None
        store = open_store(settings["root"], settings.get("s3_endpoint"), settings.get("region"), worker_cache_dir())
        return cls(store, settings["key"])

    def complete(self) -> list[Manifest]:
        """Committed checkpoints, oldest step first."""
        return sorted(self.store.versions(self.key), key=lambda m: m.metadata.get("step", 0))

    def newest(self) -> tuple[int, str] | None:
        """(step, local directory) of the newest complete checkpoint, fetched and verified; None when there is none."""
        done = self.complete()
        if not done:
            return None
        art = self.store.get(self.key, done[-1].version)
        return done[-1].metadata["step"], str(art.path)

    def upload(self, directory: Path, step: int) -> Manifest:
        manifest = self.store.commit(self.key, directory, {"step": step}, latest=False)
        for old in self.complete()[:-KEEP]:
            self.store.delete_version(self.key, old.version)
        return manifest

    def clear(self) -> None:
        self.store.delete_key(self.key)

    def callback(self, reporter) -> TrainerCallback:
        return _Upload(self, reporter)


class _Upload(TrainerCallback):
    """After every save: rank 0 commits the checkpoint once every rank has written its part."""

    def __init__(self, mirror: StoreCheckpoints, reporter):
        self.mirror, self.reporter = mirror, reporter

    def on_save(self, args, state, control, **kwargs):
        _barrier()
        if int(os.environ.get("RANK", "0")) == 0:
            directory = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            manifest = self.mirror.upload(directory, state.global_step)
            self.reporter.log(f"checkpoint at step {state.global_step} stored ({manifest.total_bytes:,} bytes, "
                              f"{self.mirror.store.root}/{self.mirror.key})")
        _barrier()


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
