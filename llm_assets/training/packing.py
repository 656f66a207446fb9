"""Packing and loss choices for attention kernels without variable-length support (CPU, SDPA).

TRL's padding-free packing concatenates a whole micro-batch into one row and relies on a varlen
attention kernel (flash-attention) to keep documents apart. Without one, transformers builds a
dense block-diagonal mask over that row, so 8 rows of 256 tokens cost one 2048 x 2048 attention
instead of eight 256 x 256 ones. ``PackedRowsCollator`` keeps every packed bin in its own row;
position_ids restart at each document, and transformers derives the same per-document mask from
them, one row at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trl.trainer.sft_trainer import DataCollatorForLanguageModeling


@dataclass
class PackedRowsCollator(DataCollatorForLanguageModeling):
    """One packed bin per row, documents told apart by position_ids (no attention_mask, which would hide them).

    The first token of each document gets no label: it would be predicted from the previous document.
    Row padding has position 0 everywhere, so each pad token is a document of its own and attends to nothing real.
    """

    padding_free: bool = False
    return_position_ids: bool = True

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        del out["attention_mask"]
        out["labels"][out["position_ids"] == 0] = -100
        return out


def use_packing_collator(trainer, tok, hw):
    """A packing trainer gets our row-wise collator unless the hardware chose TRL's padding-free single-row batches
    (``hw.padding_free``: on by default only with a varlen kernel, where they are the cheaper layout).

    Set after construction: SFTTrainer refuses a custom collator together with BFD packing.
    """
    if not hw.padding_free:
        trainer.data_collator = PackedRowsCollator(pad_token_id=tok.pad_token_id)
    return trainer


def score_trainable_positions_only() -> bool:
    """Make TRL's fused LM head project only the positions that carry a label, on CPU too.

    TRL compacts to labelled positions only on Triton devices; elsewhere it scores every position so
    that tile shapes stay static for graph compilers. Nothing is compiled on a CPU, and with loss on
    the completion only, most positions (94% on the t0 mixture) have no label: projecting them onto
    the vocabulary, and back-propagating through that, is pure waste. The loss is unchanged (ignored
    positions contribute zero either way). Returns False when this TRL version has no such switch.
    """
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        return False
    if not getattr(original, "_llm_assets_compact_cpu", False):
        def compact(device) -> bool:
            return device.type == "cpu" or original(device)

        compact._llm_assets_compact_cpu = True
        trl_utils._use_triton = compact
    return True
