"""Stage ``release``: the quantized model as it is published, with its model card.

An adapter (a recipe whose quantization is null passes a LoRA policy through) is merged into its base, on the
stage's device in its dtype, so what is published loads with ``from_pretrained`` alone; a whole model (4-bit or
not) is copied file for file. The card (``README.md``) and the recipe file come in the work order's options:
the Dagster step builds them from the run records (``llm_assets.release.card``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm_assets.training.common import copy_model_dir, hardware_for, model_kwargs
from llm_assets.training.models import is_adapter, load_causal_lm, load_tokenizer
from llm_assets.training.report import Reporter
from llm_assets.training.spec import StageSpec

CARD = "README.md"
RECIPE_FILE = "recipe.yaml"


def run(spec: StageSpec, reporter: Reporter) -> dict[str, Any]:
    source, out = spec.inputs["model"], Path(spec.output_dir)
    merged = is_adapter(source)
    if merged:
        hw = hardware_for(spec.parsed_recipe)
        load_causal_lm(source, **model_kwargs(hw)).save_pretrained(out)
        load_tokenizer(source).save_pretrained(out)
    else:
        copy_model_dir(source, out)
    (out / CARD).write_text(spec.options["card"])  # replaces any card a library wrote (PEFT's names no data or recipe)
    (out / RECIPE_FILE).write_text(spec.options["recipe_yaml"])
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    size = sum((out / f).stat().st_size for f in files)
    reporter.log(f"[release] {'adapter merged into its base' if merged else 'model copied'}; card written; {len(files)} files, {size:,} bytes")
    return {"merged_adapter": merged, "files": files, "release_bytes": size}
