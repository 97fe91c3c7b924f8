"""Bad values, shared by the kinds: (label, value). `must_fail` says which a typed field may never take."""
from __future__ import annotations

import math

BAD_VALUES = [
    ("str", "abc"), ("unicode", "ünï€ødé 🙂\u202e"), ("empty", ""), ("null", None), ("true", True),
    ("list", [1, 2]), ("dict", {"a": 1}), ("neg", -1), ("neg_huge", -10 ** 12), ("zero", 0), ("huge", 10 ** 30),
    ("huge_float", 1e308), ("nan", math.nan), ("inf", math.inf), ("neg_inf", -math.inf), ("half", 0.5),
    ("long_str", "x" * 20000), ("dotdot", "../../../etc/passwd"), ("url", "http://127.0.0.1:9/x.tar"),
    ("nul", "a\x00b"),
]
NOT_NUMBERS = {"str", "unicode", "empty", "null", "true", "list", "dict", "long_str", "dotdot", "url", "nul"}
NON_FINITE = {"nan", "inf", "neg_inf"}


def must_fail(default, label: str) -> bool:
    """A value of the wrong type for a field with this default, or a non-finite number anywhere."""
    if label in NON_FINITE:
        return True
    if isinstance(default, bool):
        return label != "true"
    if isinstance(default, int):
        return label in NOT_NUMBERS or label in ("half", "huge_float")
    if isinstance(default, float):
        return label in NOT_NUMBERS
    if isinstance(default, str):
        return label not in ("str", "unicode", "empty", "long_str", "dotdot", "url", "nul")
    return False


def yaml_text(value) -> str:
    """The override text YAML reads back as `value`."""
    import yaml
    if isinstance(value, float) and math.isnan(value):
        return ".nan"
    if isinstance(value, float) and math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    return yaml.safe_dump(value, default_flow_style=True, width=10 ** 9).strip().removesuffix("\n...").strip()
