"""A decoder lowered to ExecuTorch: one `.pte` with a prefill and a decode method (XNNPACK), its axes bounded
for ExecuTorch's planned memory, held to eager token for token (its 8da4w form: test_generation_executorch_8da4w).
Modules of their own, so that pytest-xdist's `--dist loadscope` runs these slow lowerings on both workers, beside
the other generation tests."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("executorch", reason="pip install 'deploycheck[executorch]'")
from models import llama_decoder, prompts, weight_bytes
from serving import start_server, stop_server

from deploycheck.errors import ExportError, InputError
from deploycheck.generation.artifact import read_sidecar
from deploycheck.generation.decoders import EagerDecoder
from deploycheck.generation.executorch_decoder import bounds
from deploycheck.generation.formats import load_decoder
from deploycheck.generation.gate import gate_decoder
from deploycheck.generation.spec import GenerativeSpec
from deploycheck.generation.streams import generate

pytestmark = pytest.mark.slow


def llama_spec(**overrides: object) -> GenerativeSpec:
    settings: dict = {"name": "llama_tiny", "model": LLAMA, "prompts": prompts(), "new_tokens": 8,
                      "batch_sizes": (2,), "formats": ("eager", "executorch"), **overrides}
    return GenerativeSpec(**settings)


LLAMA = llama_decoder(layers=1)  # one layer: ExecuTorch's lowering passes take half as long


def test_executorch_carries_the_cache_exactly_and_is_served_within_its_planned_bounds(tmp_path: Path) -> None:
    """One `.pte` with a prefill and a decode method, lowered through XNNPACK with its axes bounded; a batch above
    the planned bound is refused by name rather than run out of planned memory, and the server, interleaving
    sequences on one program, answers eager's tokens and holds requests to the planned length."""
    spec = llama_spec(new_tokens=4, batch_sizes=(2,), format_options={"executorch": {"max_batch": 3, "max_length": 20}})
    report = gate_decoder(spec, tmp_path)
    assert report.passed, str(report)
    fp32 = next(row for row in report.rows if row.format == "executorch")
    assert fp32.greedy.exact and fp32.consistency.passed and fp32.consistency.max_error < 1e-4
    assert fp32.size_bytes is not None and fp32.size_bytes >= weight_bytes(LLAMA)  # the bound 8da4w is held to
    assert read_sidecar(tmp_path / "executorch")["planned"] == {"max_batch": 3, "max_length": 20}
    decoder = load_decoder(tmp_path / "executorch")
    with pytest.raises(InputError, match=r"llama_tiny/executorch: 4 rows of 8 positions; this program was planned "
                                         r"for at most 3 rows and 20 cached positions"):
        decoder.prefill(prompts(rows=4).numpy())
    served = start_server(tmp_path)
    try:
        prompt_rows = [0, 1, 0, 1]
        with ThreadPoolExecutor(4) as pool:  # the one artifact served: named by its model alone
            answers = list(pool.map(lambda row: served.post("/v2/models/llama_tiny/generate", {
                "input_ids": spec.prompts[row].tolist(), "max_tokens": 12}), prompt_rows))
        wanted = generate(EagerDecoder(LLAMA, "eager"), spec.prompts.numpy(), 12).tokens
        assert all(status == 200 for status, _ in answers), answers
        assert [answer["output_ids"] for _, answer in answers] == [wanted[row].tolist() for row in prompt_rows]
        status, refused = served.post("/v2/models/llama_tiny/generate",
                                      {"input_ids": spec.prompts[0].tolist(), "max_tokens": 14})
        assert status == 400 and "from 1 to 13 (the model's 21 positions less the prompt's 8)" in refused["error"]
    finally:
        stop_server(served)


@pytest.mark.parametrize(("options", "rows", "message"), [
    ({"max_length": 10}, 2, r"max_length 10 is shorter than the spec's prompt 8 \+ 8 new tokens need \(15\)"),
    ({"max_batch": 3}, 4, "max_batch 3 is smaller than the spec's batch size 4"),
    ({"max_batch": "8"}, 2, "max_batch must be an integer of at least 3 .*, got '8'"),
])
def test_executorch_bounds_are_checked_before_exporting(options: dict, rows: int, message: str) -> None:
    spec = llama_spec(prompts=prompts(rows=rows), batch_sizes=(rows,), format_options={"executorch": options})
    with pytest.raises(ExportError, match=message):
        bounds(spec, "executorch")
