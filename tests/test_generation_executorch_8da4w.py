"""A decoder lowered to ExecuTorch as 8da4w (int4 weights in groups, int8 activations quantized per token as it
runs): ExecuTorch's own recipe for language models on phones, judged by KL divergence like any quantized form.
Apart from test_generation_executorch, so that pytest-xdist's `--dist loadscope` lowers the two on both workers."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("executorch", reason="pip install 'deploycheck[executorch]'")
pytest.importorskip("torchao", reason="pip install 'deploycheck[executorch]'")
from models import llama_decoder, prompts, weight_bytes

from deploycheck.generation.gate import gate_decoder
from deploycheck.generation.spec import GenerativeSpec

pytestmark = pytest.mark.slow

LLAMA = llama_decoder(layers=1)  # one layer: ExecuTorch's lowering passes take half as long


def test_executorch_8da4w_is_held_to_the_kl_budget_and_stores_its_linears_in_four_bits(tmp_path: Path) -> None:
    spec = GenerativeSpec(name="llama_tiny", model=LLAMA, prompts=prompts(), new_tokens=4, batch_sizes=(2,),
                          formats=("eager", "executorch_8da4w"), max_kl=1.0,
                          min_top1_agreement=0.0)  # random weights: top-1 flips on near ties; judged by KL below
    report = gate_decoder(spec, tmp_path)
    assert report.passed, str(report)
    low = next(row for row in report.rows if row.format == "executorch_8da4w")
    assert 0 < low.quality.mean_kl < 0.01 and low.int8_fraction is not None and low.int8_fraction > 0.5
    assert low.size_bytes is not None and low.size_bytes < weight_bytes(LLAMA) / 1.5
