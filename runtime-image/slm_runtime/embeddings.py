"""What each API does to a pooled embedding after the engine: `dimensions`, normalisation.

OpenAI's `/v1/embeddings` and Ollama's `/api/embed` return unit-length vectors; Ollama's older
`/api/embeddings` returns the pooled vector as it is. `dimensions` keeps the first d components
and re-normalises (how Matryoshka-trained models are meant to be shortened, and what OpenAI
does); asking for more components than the model has is a 400.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from slm_runtime.errors import BadRequestError


def finish_vectors(
    vectors: Sequence[Sequence[float]], *, normalize: bool, dimensions: int | None = None
) -> list[list[float]]:
    """Truncate to `dimensions` (if given) and L2-normalise (if asked); pure."""
    out: list[list[float]] = []
    for vec in vectors:
        v = list(vec)
        if dimensions is not None:
            if not 1 <= dimensions <= len(v):
                raise BadRequestError(
                    f"dimensions must be between 1 and {len(v)} for this model", param="dimensions"
                )
            v = v[:dimensions]
        if normalize or dimensions is not None:
            norm = math.sqrt(sum(x * x for x in v)) or 1.0
            v = [x / norm for x in v]
        out.append(v)
    return out
