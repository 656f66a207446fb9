"""Recipes: one YAML file per base model / hyper-parameter set in ``configs/recipes/``.

Every group maps onto the trainer config it feeds, unknown keys are errors (a typo must never
silently fall back to a default), and a recipe's hash covers its fully resolved content, so
editing a comment does not retrain anything while changing any effective value does.

Loading a recipe also checks what its values point at, before any compute is spent: the DeepSpeed
config it names (read for its real ZeRO stage) and its memory estimate against the GPU it declares.
Every problem is a ``RecipeError`` naming the file and the key.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llm_assets.paths import project_root, recipes_dir
from llm_assets.stage_memory import STAGE_NAMES, StageMemory, stage_memory, training_setup
from llm_assets.training.memory import MemoryEstimate, estimate

BUILTIN_PREFIX = "builtin:"
RECIPE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
DEEPSPEED_DIR = Path("configs") / "deepspeed"


class RecipeError(ValueError):
    """A recipe file that cannot be used; the message names the file and the key."""


class Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataGroup(Group):
    max_length: int = Field(256, gt=8, description="Tokens per training sequence, prompt included.")
    chat_template: Literal["tokenizer", "plain"] = Field(
        "tokenizer", description="'tokenizer' renders with the tokenizer's chat template; 'plain' concatenates prompt and completion."
    )
    max_reject_rate: float = Field(
        0.05, ge=0, le=1, description="Highest share of a drop's rows that may be quarantined before its dataset check fails."
    )
    truncation: Literal["drop", "left"] = Field(
        "drop", description="Examples longer than max_length: 'drop' leaves them out (counted and reported); 'left' cuts the "
        "prompt from the left so the reply stays whole (an example whose reply alone does not fit is still left out).")
    packing: bool = Field(
        True, description="Pack several examples per sequence with per-document attention (no padding); a batch then holds "
        "per_device_batch_size sequences of up to max_length tokens, not per_device_batch_size examples.")


class ArchitectureGroup(Group):
    """Shape of a Llama-style decoder.

    ``builtin:tiny`` is built from it; a named builtin model (``BUILTIN_SHAPES``) fixes it; hub recipes
    state it (from the model's config.json) so that memory is estimated before anything is downloaded,
    and the snapshot is checked against it.
    """

    hidden_size: int = Field(128, gt=0)
    intermediate_size: int = Field(256, gt=0)
    num_layers: int = Field(2, gt=0)
    num_heads: int = Field(4, gt=0)
    num_kv_heads: int | None = Field(None, gt=0, description="Grouped-query attention heads; None means num_heads.")
    vocab_size: int = Field(1024, gt=0)
    tie_word_embeddings: bool = True

    @model_validator(mode="after")
    def _heads_divide(self) -> "ArchitectureGroup":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % (self.num_kv_heads or self.num_heads):
            raise ValueError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
        return self


BUILTIN_TINY = "builtin:tiny"
# Named builtin models: realistic Llama shapes built without the hub (random init, tokenizer trained on the corpora),
# so the real-size path runs anywhere. The name fixes the shape; the embedding has all vocab_size rows.
BUILTIN_SHAPES: dict[str, ArchitectureGroup] = {
    # GPT-3 Small's shape (Brown et al. 2020: 12 x 768, 50k vocabulary) as a Llama decoder: 124 M parameters
    "builtin:llama-125m": ArchitectureGroup(hidden_size=768, intermediate_size=2048, num_layers=12, num_heads=12,
                                            vocab_size=50304, tie_word_embeddings=True),
    # Llama 3.2 1B's decoder (16 x 2048, GQA 32/8) with Llama 2's 32k vocabulary: 1.04 B parameters
    "builtin:llama-1b": ArchitectureGroup(hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
                                          num_kv_heads=8, vocab_size=32000, tie_word_embeddings=True),
}
BUILTIN_MODELS = (BUILTIN_TINY, *BUILTIN_SHAPES)


class ModelGroup(Group):
    base: str = Field(BUILTIN_TINY, description="A builtin model (" + ", ".join(BUILTIN_MODELS) + ") or a Hugging Face Hub repo id.")
    revision: str | None = Field(None, description="Pinned hub commit (40 hex characters); required for hub models.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = "auto"
    trust_remote_code: bool = Field(False, description="Must stay false: workers load models with transformers' own "
                                    "code only, never code shipped in a hub repo.")
    seed: int = Field(42, description="Initialises the weights of a builtin model (part of base_model's identity).")
    architecture: ArchitectureGroup = ArchitectureGroup()

    @model_validator(mode="before")
    @classmethod
    def _builtin_name_fixes_the_shape(cls, data: Any) -> Any:
        """A named builtin model's architecture comes from its name: filled in when omitted, refused when it differs."""
        if not isinstance(data, dict) or data.get("base") not in BUILTIN_SHAPES:
            return data
        shape, given = BUILTIN_SHAPES[data["base"]], data.get("architecture")
        if given is not None:
            try:
                parsed = ArchitectureGroup.model_validate(given)
            except ValidationError:
                return data  # the field's own validation names the bad key
            if parsed != shape:
                fixed = ", ".join(f"{k}={v}" for k, v in shape.model_dump().items())
                raise ValueError(f"model.architecture differs from {data['base']}'s fixed shape ({fixed}): leave "
                                 "'model.architecture' out, or use builtin:tiny for a shape of your own")
        return {**data, "architecture": shape}

    @field_validator("trust_remote_code")
    @classmethod
    def _no_remote_code(cls, value: bool) -> bool:
        """Refused rather than ignored: running a repo's own Python in every worker (and in the code location, which
        reads configs) is arbitrary code execution that the pinned revision alone does not make safe."""
        if value:
            raise ValueError("true is not supported: every stage loads models with transformers' own architectures and "
                             "never runs code from a hub repo; use a model transformers supports natively, or remove the key")
        return value

    @model_validator(mode="after")
    def _hub_models_are_pinned(self) -> "ModelGroup":
        if self.base.startswith(BUILTIN_PREFIX):
            if self.base not in BUILTIN_MODELS:
                raise ValueError(f"unknown builtin model {self.base!r}; builtin models: {', '.join(BUILTIN_MODELS)}")
            return self
        if not self.revision or not re.fullmatch(r"[0-9a-f]{40}", self.revision):
            raise ValueError(
                f"hub model {self.base!r} needs 'revision' pinned to a 40-character commit hash "
                "(a branch name would make the run irreproducible)"
            )
        if "architecture" not in self.model_fields_set:
            raise ValueError(
                f"hub model {self.base!r} needs 'architecture' (hidden_size, num_layers, ... from its config.json) "
                "so its memory can be estimated before download"
            )
        return self


class TrainGroup(Group):
    """Options shared by every training stage (they map onto ``transformers.TrainingArguments``)."""

    max_steps: int = Field(100, gt=0)
    learning_rate: float = Field(1e-4, gt=0)
    per_device_batch_size: int = Field(8, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    logging_steps: int = Field(10, gt=0)
    save_steps: int = Field(50, gt=0, description="Checkpoint every N optimizer steps (a killed run resumes from the last one).")
    gradient_checkpointing: bool | None = Field(None, description="None: chosen from the hardware (on a GPU: when the "
                                                "stage's memory estimate without it does not fit).")
    padding_free: bool | None = Field(None, description="TRL padding-free batches (CPT/SFT). None: on with a varlen "
                                      "attention kernel (FlashAttention on CUDA), else off.")
    use_liger_kernel: bool | None = Field(None, description="Liger kernels. None: on where liger_kernel is installed on CUDA.")
    use_vllm: bool | None = Field(None, description="RLOO/GRPO generation with vLLM colocated on the training GPU. "
                                  "None: on where vllm is installed on CUDA, else HF generate.")
    seed: int = 42


class CptGroup(TrainGroup):
    learning_rate: float = 3e-4


class SftGroup(TrainGroup):
    method: Literal["full", "lora", "qlora"] = "full"


class RewardGroup(TrainGroup):
    base: Literal["sft", "cpt", "base"] = Field("sft", description="Which model the reward model starts from.")
    min_accuracy: float = Field(0.6, ge=0, le=1, description="Gate: pairwise accuracy on the eval split.")


class RlhfGroup(TrainGroup):
    algorithm: Literal["rloo", "grpo", "dpo"] = "rloo"
    beta: float = Field(0.05, ge=0, description="KL penalty to the SFT reference (DPO: its temperature).")
    num_generations: int = Field(4, ge=2, description="Completions sampled per prompt (RLOO/GRPO).")
    max_new_tokens: int = Field(32, gt=0)
    temperature: float = Field(1.0, gt=0)
    min_win_rate: float = Field(0.5, ge=0, le=1, description="Gate: the policy's win rate against SFT on held-out "
                                "prompts, as the reward model judges sampled replies (ties count half), at least this; DPO: its "
                                "preference accuracy on held-out pairs. 0.5: not worse than SFT.")
    max_kl: float = Field(2.0, ge=0, description="Gate: KL(policy || SFT) per held-out reply (nats, summed over the "
                          "reply's tokens) at most this.")


class LoraGroup(Group):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    modules_to_save: list[str] = Field(default_factory=list, description="Modules trained in full beside the adapters "
                                       "(e.g. embed_tokens, lm_head: a small or barely pre-trained base needs them).")


class QuantizationGroup(Group):
    bits: Literal[4, 8] = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    max_eval_loss_delta: float = Field(0.1, ge=0, description="Gate: quantized eval loss minus unquantized, at most this.")


class DistributedGroup(Group):
    processes: int = Field(1, gt=0, description="Training processes; >1 launches torchrun.")
    deepspeed: str | None = Field(None, description="DeepSpeed JSON (relative to the project root, e.g. "
                                  "configs/deepspeed/zero2.json), used when processes > 1; it must exist.")


class ResourcesGroup(Group):
    """Where and on what a recipe's stages run; never part of a model's identity (stages.py reads none of it)."""

    gpus: int = Field(0, ge=0, description="GPUs of one training worker (a pod's nvidia.com/gpu limit, an ECS task's GPU count).")
    gpu_memory_gb: float | None = Field(None, gt=0, description="Memory of one GPU; the memory estimate must fit in it.")
    memory_gb: float | None = Field(None, gt=0, description="Host memory ceiling of a worker (a pod's memory limit, an ECS "
                                    "container's hard limit); its request comes from the memory estimate.")
    cpus: float | None = Field(None, gt=0, description="CPU cores of a worker; None: 4 per training process.")
    launcher: Literal["subprocess", "k8s", "ecs"] | None = Field(
        None, description="Where the stages run: a local subprocess, a Kubernetes pod or an ECS task; None: the launcher "
        "resource's own default.")


class TrackingGroup(Group):
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = []
    run_name: str | None = None


class EvaluationGroup(Group):
    """The release evaluation (lm-evaluation-harness): tasks generated from the held-out splits, plus standard ones."""

    tasks: list[str] = Field(default_factory=list, description="Standard lm-eval tasks run beside the generated ones; "
                             "their data must already be in the local Hugging Face datasets cache (nothing is downloaded).")
    limit: int = Field(200, gt=0, description="Held-out rows (documents) per task.")
    max_new_tokens: int = Field(24, gt=0, description="Generation budget of the short-answer (exact match) tasks.")
    batch_size: int = Field(16, gt=0)
    tolerance: float = Field(0.02, ge=0, description="Gate: on every task the released model scores at most this much "
                             "below the base model (absolute, in the task's own metric).")
    tolerance_by_task: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict, description="Gate "
                                       "released_not_worse_than_base: a tolerance per generated task name or per data kind "
                                       "(sft, preference, pretraining) in place of evaluation.tolerance.")
    quantized_tolerance: float = Field(0.05, ge=0, description="Gate: the quantized model at most this much below the "
                                       "unquantized one on every task.")
    published_tolerance: float = Field(0.02, ge=0, description="Gate: at most this much below the currently published "
                                       "version of this recipe on every task both were evaluated on.")


class ReleaseGroup(Group):
    """What the model card says and where an approved model is published (no target: nothing is published)."""

    license: str = Field("other", description="SPDX-style license id written into the model card.")
    intended_use: str = ""
    limitations: str = ""
    target: Literal["hub", "s3"] | None = Field(None, description="'hub': a Hugging Face Hub repo; 's3': a registry "
                                                "prefix in an artifact store; None: the model is carded but not published.")
    repo: str | None = Field(None, description="Hub repo id (owner/name) when target is 'hub'.")
    private: bool = Field(True, description="Create the hub repo private.")
    endpoint: str | None = Field(None, description="Hub endpoint; None: the hub resource's (https://huggingface.co).")
    token_env: str = Field("HF_TOKEN", description="Environment variable holding the hub write token (its value is never stored).")
    registry: str | None = Field(None, description="Registry root when target is 's3' (s3://bucket/prefix or a local "
                                 "directory); the model lands at <registry>/<name>/versions/<version>/.")
    name: str | None = Field(None, description="Name in the registry; None: the recipe name.")

    @model_validator(mode="after")
    def _target_named(self) -> "ReleaseGroup":
        if self.target == "hub" and not self.repo:
            raise ValueError("release.target 'hub' needs release.repo (owner/name)")
        if self.target == "s3" and not self.registry:
            raise ValueError("release.target 's3' needs release.registry (s3://bucket/prefix or a directory)")
        return self


class GenerationGroup(Group):
    """Batch inference (batch_predictions): how replies to landed prompt files are generated."""

    max_new_tokens: int = Field(64, gt=0)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    batch_size: int = Field(16, gt=0)
    seed: int = 0


class Recipe(Group):
    """A whole recipe file. A stage passes through when ``cpt`` is absent or ``reward``, ``rlhf`` or ``quantization`` is null."""

    name: str
    description: str = ""
    data: DataGroup = DataGroup()
    model: ModelGroup = ModelGroup()
    cpt: CptGroup | None = None
    sft: SftGroup = SftGroup()
    reward: RewardGroup | None = RewardGroup()
    rlhf: RlhfGroup | None = RlhfGroup()
    lora: LoraGroup = LoraGroup()
    quantization: QuantizationGroup | None = QuantizationGroup()
    distributed: DistributedGroup = DistributedGroup()
    resources: ResourcesGroup = ResourcesGroup()
    tracking: TrackingGroup = TrackingGroup()
    evaluation: EvaluationGroup = EvaluationGroup()
    release: ReleaseGroup = ReleaseGroup()
    generation: GenerationGroup = GenerationGroup()
    automation: Literal["on_change", "manual"] = Field(
        "on_change", description="'on_change': the automation sensor retrains this recipe when its data, recipe or code "
        "change; 'manual': only a Materialize (UI, CLI, job) runs it. Not part of the recipe hash or any model's identity.")

    @field_validator("name")
    @classmethod
    def _name_is_a_partition_key(cls, v: str) -> str:
        if not RECIPE_NAME.match(v):
            raise ValueError("recipe names are lower-case letters, digits, '-' and '_' (they become partition keys)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "Recipe":
        if self.rlhf is not None and self.rlhf.algorithm in ("rloo", "grpo") and self.reward is None:
            raise ValueError(f"rlhf.algorithm {self.rlhf.algorithm!r} needs a reward model: add a 'reward' group or use 'dpo'")
        return self

    @property
    def recipe_hash(self) -> str:
        """sha256 of the resolved recipe (defaults included, comments and key order ignored). ``automation`` is left out:
        it says when the recipe runs, not what it makes, so switching it marks nothing stale."""
        canonical = json.dumps(self.model_dump(mode="json", exclude={"automation"}), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _format_error(path: Path, err: dict[str, Any], model: type[BaseModel]) -> str:
    loc = [str(p) for p in err["loc"]]
    dotted = ".".join(loc)
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return f"{path}: unknown key '{dotted}'.{hint} Allowed keys here: {', '.join(sorted(allowed))}."
    where = f"key '{dotted}'" if dotted else "the recipe"
    return f"{path}: {where}: {err['msg']} (got {err.get('input')!r})" if dotted else f"{path}: {err['msg']}"


def _allowed_keys(model: type[BaseModel], loc: list[str]) -> list[str]:
    for part in loc:
        field = model.model_fields.get(part)
        if field is None:
            break
        candidates = [a for a in getattr(field.annotation, "__args__", (field.annotation,)) if isinstance(a, type)]
        sub = next((a for a in candidates if issubclass(a, BaseModel)), None)
        if sub is None:
            break
        model = sub
    return list(model.model_fields)


def parse_recipe(path: Path, text: str | None = None) -> Recipe:
    """Parse and validate one recipe file; every problem becomes a ``RecipeError`` naming file and key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text() if text is None else text)
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of groups (data, model, sft, ...), got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    if raw["name"] != path.stem:
        raise RecipeError(f"{path}: 'name' is {raw['name']!r} but the file is {path.name}; they must match")
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError("\n".join(_format_error(path, err, Recipe) for err in e.errors())) from None
    stage = zero_stage(recipe, path)
    _check_zero_stage_supported(recipe, stage, path)
    _check_fits(recipe, stage, path)
    return recipe


def deepspeed_config_path(value: str) -> Path:
    """Where ``distributed.deepspeed`` points: relative paths start at the project root, as the launcher reads them."""
    path = Path(value)
    return path if path.is_absolute() else project_root() / path


def zero_stage(recipe: Recipe, source: Path | str) -> int:
    """The ZeRO stage the recipe's DeepSpeed config really sets (``zero_optimization.stage``); 0 without one.

    Read from the file, never guessed from its name: a copy called ``big.json`` can be stage 3.
    ``source`` (the recipe file) starts every error message.
    """
    value = recipe.distributed.deepspeed
    if not value:
        return 0
    where = f"{source}: key 'distributed.deepspeed'"
    path = deepspeed_config_path(value)
    if not path.is_file():
        shipped = project_root() / DEEPSPEED_DIR
        known = ", ".join(str(DEEPSPEED_DIR / p.name) for p in sorted(shipped.glob("*.json"))) or "none"
        raise RecipeError(f"{where}: {path} does not exist. DeepSpeed configs in {shipped}: {known}")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecipeError(f"{where}: {path} is not a readable JSON file ({e})") from None
    zero = config.get("zero_optimization", {}) if isinstance(config, dict) else None
    stage = zero.get("stage", 0) if isinstance(zero, dict) else None
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise RecipeError(f"{where}: {path} must set zero_optimization.stage to 0, 1, 2 or 3 (found {stage!r})")
    return stage


def _check_zero_stage_supported(recipe: Recipe, stage: int, path: Path) -> None:
    """QLoRA loads its 4-bit base without ``bnb_4bit_quant_storage``, which ZeRO-3 needs to partition it."""
    if recipe.distributed.processes > 1 and recipe.sft.method == "qlora" and stage == 3:
        raise RecipeError(
            f"{path}: key 'distributed.deepspeed': {recipe.distributed.deepspeed} is ZeRO stage 3 (its "
            "zero_optimization.stage), which sft.method 'qlora' cannot use: the 4-bit base weights cannot be "
            f"partitioned. Use a stage-2 config such as {DEEPSPEED_DIR / 'zero2.json'}, or sft.method 'lora'."
        )


def estimate_memory(recipe: Recipe) -> MemoryEstimate:
    """Peak per-device memory of training the recipe's SFT model, checkpointed as ``sft.gradient_checkpointing`` says
    (``stage_memory`` has every stage, and resolves an unset checkpointing as the hardware choice does)."""
    return estimate(training_setup(recipe, "sft", zero=zero_stage(recipe, f"recipe '{recipe.name}'"),
                                   checkpointing=bool(recipe.sft.gradient_checkpointing)))


def active_stages(recipe: Recipe) -> list[str]:
    """The stages that load a model for ``recipe``: a null group (no ``cpt``, ``reward: null``, ...) is a pass-through."""
    groups = {"cpt": recipe.cpt, "reward": recipe.reward, "rlhf": recipe.rlhf, "quantize": recipe.quantization}
    return [s for s in STAGE_NAMES if groups.get(s, True) is not None]


def _check_fits(recipe: Recipe, zero: int, path: Path) -> None:
    """Reject a recipe when any active stage's estimate exceeds the GPU memory it declares, naming the stage and figures."""
    limit = recipe.resources.gpu_memory_gb
    if limit is None or not recipe.resources.gpus:
        return
    for stage in active_stages(recipe):
        memory: StageMemory = stage_memory(recipe, stage, zero=zero)
        if memory.device_gb > limit:
            group = {"base": "sft", "evaluate": "sft", "quantize": "sft"}.get(stage, stage)
            raise RecipeError(
                f"{path}: stage '{stage}' needs {memory.device_gb:.1f} GB per device, over resources.gpu_memory_gb = "
                f"{limit:g} ({memory.describe()}). Lower data.max_length or {group}.per_device_batch_size, set "
                f"{group}.gradient_checkpointing: true, use sft.method: qlora, or add processes with a ZeRO config under "
                "distributed."
            )


def recipe_files(directory: Path | None = None) -> list[Path]:
    directory = directory or recipes_dir()
    return sorted(p for p in directory.glob("*.yaml") if not p.name.startswith("."))


def recipe_names(directory: Path | None = None) -> list[str]:
    return [p.stem for p in recipe_files(directory)]


def load_recipe(name: str, directory: Path | None = None) -> Recipe:
    directory = directory or recipes_dir()
    path = directory / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(recipe_names(directory)) or "none"
        raise RecipeError(f"no recipe {name!r}: {path} does not exist (recipes here: {known})")
    return parse_recipe(path)


def load_all_recipes(directory: Path | None = None) -> dict[str, Recipe]:
    """Every recipe; when some are broken, one ``RecipeError`` lists them all (CI shows every fix at once)."""
    recipes, errors = {}, []
    for path in recipe_files(directory):
        try:
            recipes[path.stem] = parse_recipe(path)
        except RecipeError as e:
            errors.append(str(e))
    if errors:
        raise RecipeError("\n".join(errors))
    return recipes
