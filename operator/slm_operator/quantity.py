"""Kubernetes quantities ("4Gi", "500m", "1.5") parsed and printed without the kubernetes client.

Placement and rendering are pure and must not import the API client (see STYLE.md: one module does
API I/O), so this is the small subset of `resource.Quantity` the operator needs.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

_NUMBER = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
QUANTITY_PATTERN = rf"^(\+|-)?{_NUMBER}(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?{_NUMBER}))?$"
_RE = re.compile(QUANTITY_PATTERN)
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
GI = 1024**3
MI = 1024**2


def parse_quantity(value: str | int | float) -> Decimal:
    """Return the quantity's value in base units (bytes, cores)."""
    text = str(value).strip()
    if not _RE.match(text):
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    for suffix, power in _BINARY.items():
        if text.endswith(suffix):
            return Decimal(text[: -len(suffix)]) * (Decimal(1024) ** power)
    if text[-1] in "numkMGTPE":
        return Decimal(text[:-1]) * (Decimal(10) ** _DECIMAL[text[-1]])
    try:
        return Decimal(text)
    except InvalidOperation as err:  # pragma: no cover - the regex already rejected it
        raise ValueError(f"not a Kubernetes quantity: {value!r}") from err


def is_quantity(value: str | int | float) -> bool:
    """Whether `value` parses as a quantity."""
    try:
        parse_quantity(value)
    except ValueError:
        return False
    return True


def format_bytes(size: int) -> str:
    """Canonical memory quantity, rounded up to whole MiB ("4Gi", "1536Mi") as the API server prints it."""
    mib = math.ceil(size / MI)
    if mib % 1024 == 0:
        return f"{mib // 1024}Gi"
    return f"{mib}Mi"


def format_cpu(cores: Decimal) -> str:
    """Canonical CPU quantity: whole cores as "2", fractions as millicores "500m"."""
    millis = math.ceil(cores * 1000)
    if millis % 1000 == 0:
        return str(millis // 1000)
    return f"{millis}m"
