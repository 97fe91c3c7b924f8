"""The DeepSpeed JSON, checked before DeepSpeed starts: what `deepspeed.initialize` would reject (its own config
classes, run here on the prepared config) and the top-level settings it reads without a check, each reported as
one ConfigError line naming the key. DeepSpeed's own messages are several lines (pydantic) or a bare assertion."""
from __future__ import annotations

import logging
import math

from .config import ConfigError, RunConfig

# top-level keys DeepSpeed reads as plain values (no schema): key -> (what it must be, test)
PLAIN = {
    "gradient_clipping": ("a number >= 0", lambda v: _number(v) and v >= 0),
    "gradient_predivide_factor": ("a number > 0", lambda v: _number(v) and v > 0),
    "steps_per_print": ("an integer >= 1", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    "prescale_gradients": ("true or false", lambda v: isinstance(v, bool)),
    "wall_clock_breakdown": ("true or false", lambda v: isinstance(v, bool)),
}


SECTIONS = {"DeepSpeedZeroConfig": "zero_optimization", "DeepSpeedBF16Config": "bf16", "DeepSpeedFP16Config": "fp16",
            "DeepSpeedZeroOffloadOptimizerConfig": "zero_optimization.offload_optimizer",
            "DeepSpeedZeroOffloadParamConfig": "zero_optimization.offload_param"}  # pydantic model -> JSON key


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _non_finite(node, path: str = "") -> str | None:
    """The dotted key of the first NaN or infinite number in a JSON tree, or None."""
    if isinstance(node, float) and not math.isfinite(node):
        return path
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        found = _non_finite(v, f"{path}.{k}" if path else str(k))
        if found is not None:
            return found
    return None


def check_ds_config(ds: dict, cfg: RunConfig, source: str) -> None:
    """ConfigError (one line, naming the key and `source`, the JSON file) for a DeepSpeed config that
    `deepspeed.initialize` would refuse or misread."""
    if not isinstance(ds, dict):
        raise ConfigError(f"{source}: a DeepSpeed config is a JSON object, got {type(ds).__name__}")
    bad = _non_finite(ds)
    if bad is not None:
        raise ConfigError(f"{source}: {bad} is not a finite number")
    for key, (what, ok) in PLAIN.items():
        if key in ds and not ok(ds[key]):
            raise ConfigError(f"{source}: {key} must be {what}, got {ds[key]!r}")
    for key in ("optimizer", "scheduler"):  # DeepSpeed would silently take the client's instead
        if key in ds:
            raise ConfigError(f"{source}: {key}: GrowCLIP builds the optimizer and the lr schedule from train.* "
                              f"(train.optimizer, lr, betas, lr_schedule, ...); remove the {key} section")
    for key in ("zero_optimization", "bf16", "fp16", "checkpoint", "pipeline"):
        if key in ds and not isinstance(ds[key], dict):
            raise ConfigError(f"{source}: {key} must be a JSON object, got {ds[key]!r}")
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3) or isinstance(stage, bool):  # pydantic takes true as 1; the trainer compares it
        raise ConfigError(f"{source}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r:.60}")
    from deepspeed.runtime.config import DeepSpeedConfig

    from .trainer import prepare_ds_config
    prepared = prepare_ds_config(ds, cfg, universal=False)
    logger = logging.getLogger("DeepSpeed")
    level = logger.level
    logger.setLevel(logging.WARNING)  # DeepSpeedConfig logs its world size at INFO
    try:
        DeepSpeedConfig(prepared)
    except Exception as e:  # noqa: BLE001 - pydantic's ValidationError, DeepSpeed's assertions and TypeErrors
        raise ConfigError(f"{source}: DeepSpeed refuses it: {_one_line(e)}") from None
    finally:
        logger.setLevel(level)


def _one_line(e: Exception) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):  # pydantic: the model (section) and each field's location and message
        try:
            first = errors()[0]
            title = getattr(e, "title", "")
            loc = ".".join([SECTIONS.get(title, title), *(str(x) for x in first.get("loc", ()))])
            return f"{loc}: {first.get('msg', '')} (got {first.get('input')!r})"
        except Exception:  # noqa: BLE001 - fall back to the text
            pass
    text = str(e).strip().splitlines()
    return f"{e.__class__.__name__}: {text[0] if text else ''}"
