"""A worker skips bitsandbytes and PEFT where its stage cannot use them, and the libraries it trains with still work."""

import subprocess
import sys

from llm_assets.recipes import parse_recipe
from llm_assets.training.lean_process import TRAINING_STAGES, unused_packages
from llm_assets_tests.helpers import write_recipe


def recipe_json(tmp_path, **changes) -> dict:
    return parse_recipe(write_recipe(tmp_path, **changes)).model_dump(mode="json")


def test_only_a_builtin_models_training_stages_skip_what_their_method_cannot_use(tmp_path):
    full, lora, qlora = (recipe_json(tmp_path / m, sft={"method": m}) for m in ("full", "lora", "qlora"))
    for stage in TRAINING_STAGES:
        assert unused_packages(stage, full) == ["bitsandbytes", "peft"]
        assert unused_packages(stage, lora) == ["bitsandbytes"]  # adapters need PEFT
        assert unused_packages(stage, qlora) == []  # a 4-bit base needs both
    for stage in ("quantize", "evaluate", "evaluation", "release", "predict"):  # they load the 4-bit release
        assert unused_packages(stage, full) == []
    hub = {**full, "model": {**full["model"], "base": "someone/some-model-bnb-4bit"}}
    assert unused_packages("sft", hub) == []  # a hub repo may be an adapter or already quantized


PROBE = """
import sys
from llm_assets.training.lean_process import hide
hide(["bitsandbytes", "peft"])
import llm_assets.training.worker, llm_assets.training.sft, llm_assets.training.reward, llm_assets.training.rlhf
from transformers import Trainer
from transformers.utils import is_bitsandbytes_available, is_peft_available
from trl import DPOTrainer, GRPOTrainer, RewardTrainer, RLOOTrainer
assert not is_bitsandbytes_available() and not is_peft_available()
try:
    import peft
except ImportError:
    pass
else:
    raise AssertionError("peft imported")
print(sorted(m for m in sys.modules if m.startswith(("bitsandbytes.", "peft."))))
"""


def test_the_training_libraries_import_and_report_the_hidden_packages_missing():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"  # no submodule of either was loaded behind the check


EXITING = """
import atexit, sys, tempfile
from pathlib import Path
from llm_assets.training.lean_process import exit_without_teardown
out = Path(sys.argv[1])
atexit.register(lambda: (out / "hook ran").write_text("yes"))
kept = tempfile.TemporaryDirectory(dir=out)  # deleted by its finalizer at exit, as datasets' temporary cache is
print("done", flush=False)  # buffered: must still reach the parent
exit_without_teardown(3)
"""


def test_exit_without_teardown_keeps_the_exit_code_output_and_exit_hooks(tmp_path):
    done = subprocess.run([sys.executable, "-c", EXITING, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and done.stdout == "done\n"
    assert [p.name for p in tmp_path.iterdir()] == ["hook ran"]  # the hook wrote its file, the temporary directory is gone
