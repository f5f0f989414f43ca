"""A decoder compiled by AOTInductor (opt-in): two packages held to eager token for token, refused unless trusted,
and the layout trap it sets: a compiled decode step fed the prefill's strided cache as it comes reads the wrong
elements without an error, which the cache-consistency check catches at the first decode step."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
from models import llama_decoder, prompts

from deploycheck.errors import ArtifactError
from deploycheck.generation.aot_inductor_decoder import AotInductorDecoder
from deploycheck.generation.artifact import SIDECAR
from deploycheck.generation.formats import export_decoder, load_decoder
from deploycheck.generation.gate import gate_decoder
from deploycheck.generation.spec import DEFAULT_GENERATIVE_FORMATS, GenerativeSpec

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")), reason="no C++ compiler")]


class StridedCacheRunner(AotInductorDecoder):
    """Hands the cache to the decode package as the packages return it, without making it contiguous."""

    def cache_in(self, past: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return past


def test_a_compiled_decoder_matches_eager_only_with_its_cache_made_contiguous(tmp_path: Path) -> None:
    assert "aot_inductor" not in DEFAULT_GENERATIVE_FORMATS, "opt-in: compiling takes tens of seconds"
    spec = GenerativeSpec("llama_tiny", llama_decoder(layers=1), prompts(rows=3), new_tokens=4, batch_sizes=(1, 3),
                          formats=("eager", "aot_inductor"))
    path = export_decoder(spec, "aot_inductor", tmp_path / "aoti")
    report = gate_decoder(spec, tmp_path, exported={"aot_inductor": path})
    assert report.passed, str(report)
    assert all(row.greedy.exact and row.consistency.max_error < 1e-4 for row in report.rows)
    strided = StridedCacheRunner(path, "llama_tiny/aot_inductor")
    broken = gate_decoder(spec, tmp_path, exported={"aot_inductor": path}, runners={"aot_inductor": strided})
    row = next(row for row in broken.rows if row.format == "aot_inductor")
    assert not row.passed and row.consistency.first_bad_step == 1, str(broken)  # the prefill is right
    copy = Path(shutil.copytree(path, tmp_path / "copy"))
    (copy / SIDECAR).write_text(json.dumps({**json.loads((copy / SIDECAR).read_text()), "copied_from": "elsewhere"}))
    with pytest.raises(ArtifactError, match=r"llama_tiny/aot_inductor: refusing to load .*compiled shared library"):
        load_decoder(copy)
    assert load_decoder(copy, trust_code=True).prefill(prompts().numpy())[0].shape == (2, 8, 512)
