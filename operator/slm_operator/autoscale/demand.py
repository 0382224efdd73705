"""The gateway's demand document (`GET /demand` on slm-gateway), parsed into `Demand` values.

Pure: `parse_demand` takes the decoded JSON; `demand_url` derives the URL from the gateway's
OpenAI URL that the chart passes the operator ($SLM_GATEWAY_URL, `http://…:8080/v1`). Anything
malformed counts as no data for that deployment (the autoscaler then leaves it alone).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from slm_operator.autoscale.decide import Demand


def demand_url(gateway_url: str) -> str:
    """`http://gw:8080/v1` → `http://gw:8080/demand`."""
    base = gateway_url.rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return f"{base}/demand"


def parse_demand(document: Any) -> dict[str, Demand]:
    """{"ns/name": Demand} from `{"deployments": {"ns/name": {inFlight, held, idleSeconds}}}`."""
    out: dict[str, Demand] = {}
    deployments = document.get("deployments") if isinstance(document, Mapping) else None
    if not isinstance(deployments, Mapping):
        return out
    for name, entry in deployments.items():
        if not isinstance(entry, Mapping):
            continue
        try:
            out[str(name)] = Demand(
                in_flight=max(0, int(entry["inFlight"])),
                held=max(0, int(entry.get("held") or 0)),
                idle_seconds=max(0.0, float(entry["idleSeconds"])),
            )
        except (KeyError, TypeError, ValueError):
            continue
    return out
