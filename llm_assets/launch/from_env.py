"""Which launcher a deployment uses, read from its environment: the seam a Helm release or compose file sets.

``LLM_ASSETS_LAUNCHER`` is ``subprocess`` (the default), ``k8s`` or ``ecs``; ``LLM_ASSETS_K8S`` and ``LLM_ASSETS_ECS``
hold the settings of those launchers as YAML (or JSON), the fields of ``K8sSettings`` / ``EcsSettings``. A recipe's
``resources.launcher`` picks another of them for its own stages.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from llm_assets.launch.ecs import EcsSettings
from llm_assets.launch.k8s import K8sSettings

LAUNCHER_ENV, K8S_ENV, ECS_ENV = "LLM_ASSETS_LAUNCHER", "LLM_ASSETS_K8S", "LLM_ASSETS_ECS"
KINDS = ("subprocess", "k8s", "ecs")


@dataclass(frozen=True)
class LaunchConfig:
    kind: str  # the default launcher
    k8s: K8sSettings | None
    ecs: EcsSettings | None


def launch_config_from_env(environ: Mapping[str, str] = os.environ) -> LaunchConfig:
    kind = environ.get(LAUNCHER_ENV) or "subprocess"
    if kind not in KINDS:
        raise ValueError(f"{LAUNCHER_ENV} is {kind!r}; use one of {', '.join(KINDS)}")
    config = LaunchConfig(kind, _settings(environ, K8S_ENV, K8sSettings), _settings(environ, ECS_ENV, EcsSettings))
    if kind != "subprocess" and getattr(config, kind) is None:
        variable = K8S_ENV if kind == "k8s" else ECS_ENV
        raise ValueError(f"{LAUNCHER_ENV} is {kind!r} but {variable} is not set: give the {kind} launcher's settings "
                         "(image, ...) in it as YAML")
    return config


def _settings(environ: Mapping[str, str], variable: str, model: type[Any]) -> Any:
    text = environ.get(variable)
    if not text:
        return None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{variable} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{variable} must be a mapping of {model.__name__} fields, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(model.model_fields))
    if unknown:
        hints = [f"{k!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(k, model.model_fields, n=1))
                 else repr(k) for k in unknown]
        raise ValueError(f"{variable}: unknown field {', '.join(hints)}; {model.__name__} has {', '.join(model.model_fields)}")
    try:
        return model(**raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']} (got {err.get('input')!r})" for err in e.errors())
        raise ValueError(f"{variable}: {problems}") from None
