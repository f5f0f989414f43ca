"""`Tolerance`: what counts as the same output, per output, and the defaults for fp32 and int8 formats."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Tolerance:
    """Pass criteria for one output. A criterion set to None is not checked."""

    atol: float | None = 1e-4
    rtol: float | None = 1e-4
    min_top1_agreement: float | None = None
    min_sqnr_db: float | None = None
    min_cosine: float | None = None

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def describe(self) -> str:
        parts = []
        if self.atol is not None and self.rtol is not None:
            parts.append(f"atol={self.atol:g} rtol={self.rtol:g}")
        if self.min_top1_agreement is not None:
            parts.append(f"top1>={self.min_top1_agreement:.1%}")
        if self.min_sqnr_db is not None:
            parts.append(f"sqnr>={self.min_sqnr_db:g}dB")
        if self.min_cosine is not None:
            parts.append(f"cos>={self.min_cosine:g}")
        return " ".join(parts) or "none"


FP32_TOLERANCE = Tolerance()


INT8_TOLERANCE = Tolerance(atol=None, rtol=None, min_top1_agreement=0.9, min_sqnr_db=10.0)
