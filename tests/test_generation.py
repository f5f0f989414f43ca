"""Generative decoders gated token by token: a Llama-style model and GPT-2 exported with their KV cache (ONNX
prefill + decode graphs), greedy continuations held to eager's exactly, each decode step to a full recompute of
its prefix, weight-only forms judged by KL divergence on eager's stream, and a deliberately broken cache caught
at its first wrong step."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
from models import llama_decoder, prompts

from deploycheck.accepted import AcceptedStore
from deploycheck.errors import ArtifactError, SpecError
from deploycheck.generation.artifact import read_sidecar
from deploycheck.generation.cache import Decode, dynamic_cache, flat_cache
from deploycheck.generation.checks import token_quality
from deploycheck.generation.decoders import EagerDecoder
from deploycheck.generation.formats import cache_key, export_decoder, load_decoder
from deploycheck.generation.gate import TIMING_ROUNDS, gate_decoder
from deploycheck.generation.openvino_decoder import OpenVinoStatefulDecoder
from deploycheck.generation.regression import (
    accepted_artifacts,
    compare_generation,
    read_generation_baseline,
    write_generation_baseline,
)
from deploycheck.generation.spec import GenerativeSpec
from deploycheck.generation.streams import generate

pytestmark = pytest.mark.slow


def llama_spec(**overrides: object) -> GenerativeSpec:
    settings: dict = {"name": "llama_tiny", "model": LLAMA, "prompts": prompts(), "new_tokens": 8,
                      "batch_sizes": (1, 2), "formats": ("eager", "onnx"), **overrides}
    return GenerativeSpec(**settings)


LLAMA = llama_decoder()


@pytest.fixture(scope="module")
def llama_exports(shared_decoder_exports) -> dict[str, Path]:
    """The Llama-style decoder's fp32 torch.export, ONNX and OpenVINO (where installed) exports, made once for the
    tests (here and in test_generation_server) that only read them or copy them to change."""
    return shared_decoder_exports(llama_spec(), ("torch_export", "onnx", "openvino"))


@pytest.fixture(scope="module")
def llama_onnx(llama_exports: dict[str, Path]) -> Path:
    return llama_exports["onnx"]


class PositionsOffByOne(Decode):
    """A decode step that places the new token one position too far (a wrong cache_position)."""

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        positions = torch.zeros_like(input_ids) + past[0].shape[2] + 1
        out = self.model(input_ids=input_ids, cache=dynamic_cache(past), position_ids=positions, use_cache=True)
        return (out.logits, *flat_cache(out.cache))


def test_a_llama_style_decoder_matches_eager_token_for_token_with_its_cache(
        tmp_path: Path, llama_exports: dict[str, Path]) -> None:
    spec = llama_spec(formats=("eager", "torch_export", "onnx", "openvino", "onnx_int8_weight", "torchao_int8_weight"))
    report = gate_decoder(spec, tmp_path, exported=llama_exports)
    assert report.passed, str(report)
    rows = {(row.format, row.batch_size): row for row in report.rows}
    for batch in (1, 2):
        for fp32 in ("onnx", "torch_export", *(["openvino"] if "openvino" not in report.skipped else [])):
            row = rows[(fp32, batch)]
            assert row.greedy.exact and row.consistency.passed and row.consistency.max_error < 1e-4
        onnx = rows[("onnx", batch)]
        assert onnx.stream.tokens.shape == (batch, 8) and len(onnx.stream.step_s) == 7
        for weight_only in ("onnx_int8_weight", "torchao_int8_weight"):
            int8 = rows[(weight_only, batch)]
            assert 0 < int8.quality.mean_kl < spec.max_kl and int8.quality.top1_agreement >= 0.9, weight_only
            assert 0.5 < int8.int8_fraction < 1, "the Linear weights, not the embedding"
    assert rows[("onnx_int8_weight", 1)].size_bytes < rows[("onnx", 1)].size_bytes / 1.5
    assert "greedy match" in str(report) and "TTFT ms" in str(report)
    best = report.best()
    assert set(best) == {1, 2} and all(row.passed and row.format != "eager" for row in best.values())
    assert all(len(row.timed) == TIMING_ROUNDS for row in report.rows), "speed from side-by-side rounds"
    assert "best format at batch 1: " in str(report) and "side-by-side rounds" in str(report)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["passed"] and len(data["rows"]) == len(report.rows) and data["best"]["2"] == best[2].format
    assert {"mean_kl", "tpot_ms", "cache_first_bad_step", "int8_weight_fraction"} <= set(data["rows"][0])


def test_the_timing_rounds_hold_the_bench_lock_once_per_batch_size(tmp_path: Path,
                                                                      llama_exports: dict[str, Path]) -> None:
    """The side-by-side rounds run under the run's bench lock (another worker's benchmark never shares the CPU
    with them); the checks before them do not hold it."""
    held: list[bool] = []

    @contextlib.contextmanager
    def bench_lock() -> Iterator[None]:
        held.append(True)
        try:
            yield
        finally:
            held[-1] = False

    spec = llama_spec(new_tokens=4, batch_sizes=(1, 2))
    report = gate_decoder(spec, tmp_path, exported={"onnx": llama_exports["onnx"]}, timing_lock=bench_lock)
    assert held == [False, False] and report.passed
    assert all(len(row.timed) == TIMING_ROUNDS for row in report.rows)


def test_a_cache_with_positions_off_by_one_fails_at_its_first_decode_step(tmp_path: Path) -> None:
    """The graph runs and its first token (from the prefill) is right; every decode step is then placed one
    position too far, which only the comparison with a full recompute of the same prefix shows."""
    spec = llama_spec(new_tokens=6, batch_sizes=(2,))
    broken = export_decoder(spec, "onnx", tmp_path / "broken", decode=PositionsOffByOne)
    report = gate_decoder(spec, tmp_path, exported={"onnx": broken})
    row = next(row for row in report.rows if row.format == "onnx")
    assert not report.passed and row.consistency.first_bad_step == 1, str(report)
    assert any(p.startswith("llama_tiny/onnx at batch 2: decode step 1 (new token 1) differs from a full "
                            "recompute") and "KV cache is wrong from that step" in p for p in row.problems)


class NoResetRunner(OpenVinoStatefulDecoder):
    """A stateful runner that forgets to reset its request between sequences (only the first starts empty)."""

    started = False

    def start_sequence(self, batch: int) -> None:
        if not self.started:
            super().start_sequence(batch)
            self.started = True


def test_a_stateful_runner_that_skips_its_reset_fails_at_the_first_step_it_answers_wrongly(
        tmp_path: Path, llama_exports: dict[str, Path]) -> None:
    pytest.importorskip("openvino", reason="pip install 'deploycheck[openvino]'")
    spec = llama_spec(new_tokens=4, batch_sizes=(2,), formats=("eager", "openvino"))
    path = llama_exports["openvino"]
    runner = NoResetRunner(path, read_sidecar(path), threads=1)
    report = gate_decoder(spec, tmp_path, exported={"openvino": path}, runners={"openvino": runner})
    row = next(row for row in report.rows if row.format == "openvino")
    assert row.greedy.exact, "its first sequence starts from an empty cache"
    assert not row.passed and row.consistency.first_bad_step == 0, str(report)
    assert any(p.startswith("llama_tiny/openvino at batch 2: decode step 0") for p in row.problems)
    fresh = gate_decoder(spec, tmp_path, exported={"openvino": path})
    assert fresh.passed, str(fresh)


def test_the_cache_is_carried_bound_or_copied_with_the_same_result(llama_onnx: Path) -> None:
    batch = prompts().numpy()
    bound, copied = (generate(load_decoder(llama_onnx, bound=flag), batch, 5) for flag in (True, False))
    assert np.array_equal(bound.tokens, copied.tokens) and np.allclose(bound.logits, copied.logits, atol=1e-6)
    eager = generate(EagerDecoder(LLAMA, "eager"), batch, 5)
    assert token_quality(eager, bound).top1_agreement == 1.0


def test_gpt2_carries_its_cache_through_onnx_and_its_int8_in_name_only_is_said(tmp_path: Path) -> None:
    """GPT-2's Conv1D projections export as Gemm, which MatMulNBits leaves fp32: its "int8" form is the fp32 graph
    (KL as fp32's) and fails as int8 in name only instead of passing as a perfect quantization."""
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=500, n_positions=64, n_embd=64, n_layer=2, n_head=2, bos_token_id=0,
                                     eos_token_id=0)
    spec = GenerativeSpec("gpt2_tiny", transformers.GPT2LMHeadModel(config), prompts(vocab=500), new_tokens=6,
                          batch_sizes=(2,), formats=("eager", "onnx", "onnx_int8_weight", "openvino_int8_weight"))
    report = gate_decoder(spec, tmp_path)
    rows = {row.format: row for row in report.rows}
    assert rows["eager"].passed and rows["onnx"].passed, str(report)
    int8 = rows["onnx_int8_weight"]
    assert int8.int8_fraction is not None and int8.int8_fraction < 0.5
    assert any("int8 in name only" in problem and "GPT-2's Conv1D" in problem for problem in int8.problems)
    if "openvino_int8_weight" not in report.skipped:  # NNCF compresses the Conv1D projections of the IR
        compressed = rows["openvino_int8_weight"]
        assert compressed.passed and compressed.int8_fraction is not None and compressed.int8_fraction > 0.5, \
            str(report)
        assert 0 < compressed.quality.mean_kl < spec.max_kl


def test_an_altered_graph_is_refused_before_it_runs(tmp_path: Path, llama_onnx: Path) -> None:
    path = Path(shutil.copytree(llama_onnx, tmp_path / "onnx"))
    data = bytearray((path / "decode.onnx").read_bytes())
    data[-10] ^= 0xFF
    (path / "decode.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"decode.onnx: missing or altered since export"):
        load_decoder(path)
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("keep me")
    with pytest.raises(Exception, match="not empty and not a generative artifact"):
        export_decoder(llama_spec(), "onnx", tmp_path / "theirs")
    assert (tmp_path / "theirs" / "notes.txt").read_text() == "keep me"


def test_a_pt2_decoder_loads_only_when_trusted(tmp_path: Path, llama_exports: dict[str, Path]) -> None:
    """`.pt2` archives unpickle: an artifact this process did not write (here: its sidecar edited, as one copied
    from elsewhere would be unknown) is refused until the caller says it trusts it."""
    path = Path(shutil.copytree(llama_exports["torch_export"], tmp_path / "pt2"))
    sidecar = path / "deploycheck-generative.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "copied_from": "elsewhere"}))
    with pytest.raises(ArtifactError, match=r"llama_tiny/torch_export: refusing to load .*unpickles"):
        load_decoder(path)
    trusted = generate(load_decoder(path, trust_code=True), prompts().numpy(), 3)
    assert np.array_equal(trusted.tokens, generate(EagerDecoder(LLAMA, "eager"), prompts().numpy(), 3).tokens)


def test_an_unchanged_decoder_is_not_exported_again_and_a_changed_one_is(tmp_path: Path,
                                                                        llama_exports: dict[str, Path]) -> None:
    """An export restored from elsewhere (a CI cache) is reused when every file matches its hash; an altered file,
    new weights or another name export again."""
    spec = llama_spec(new_tokens=3, batch_sizes=(2,), formats=("eager", "torch_export"))
    path = Path(shutil.copytree(llama_exports["torch_export"], tmp_path / "pt2"))
    written = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    assert export_decoder(spec, "torch_export", path) == path
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == written, "reused: nothing rewritten"
    (path / "decode.pt2").write_bytes((path / "decode.pt2").read_bytes() + b"\0")  # an altered file is not reused
    export_decoder(spec, "torch_export", path)
    assert read_sidecar(path)["cache_key"], "exported again: every file matches its hash"
    changed = llama_decoder()
    with torch.no_grad():
        changed.lm_head.weight.mul_(1.01)
    before = read_sidecar(path)["cache_key"]
    export_decoder(llama_spec(model=changed, formats=("eager", "torch_export")), "torch_export", path)
    assert read_sidecar(path)["cache_key"] != before, "new weights: exported again"
    renamed = llama_spec(name="llama_renamed", new_tokens=3, batch_sizes=(2,), formats=("eager", "torch_export"))
    assert cache_key(renamed, "torch_export", Decode) != cache_key(spec, "torch_export", Decode), \
        "another name: exported again (the sidecar names the model)"


def test_a_slower_export_fails_beside_its_accepted_artifact_and_the_accepted_one_passes(tmp_path: Path) -> None:
    """The baseline's artifacts go into the accepted store; a later run generates with them in the same timing
    rounds. Under the same model name, an export 16 times as wide is slower in every round; the accepted
    artifact's own export timed beside it is not a regression."""
    fast = llama_spec(model=llama_decoder(layers=1), batch_sizes=(2,), formats=("eager", "torch_export"))
    store = AcceptedStore(tmp_path / "accepted")
    write_generation_baseline(tmp_path / "baselines", gate_decoder(fast, tmp_path / "fast").to_dict(), store)
    stored = read_generation_baseline(tmp_path / "baselines", "llama_tiny")
    assert stored is not None and set(stored["accepted_artifacts"]) == {"torch_export"}
    kept = accepted_artifacts(stored, store)["torch_export"]
    assert kept.parent == store.root and read_sidecar(kept)["model"] == "llama_tiny"

    slow = llama_spec(model=llama_decoder(layers=1, hidden=1024), batch_sizes=(2,), formats=("eager", "torch_export"))
    report = gate_decoder(slow, tmp_path / "slow", accepted={"torch_export": load_decoder(kept)})
    assert report.passed, "the slower export is correct: only its speed regressed"
    regressed = compare_generation(report.to_dict(), stored, "baseline")
    (line,) = regressed.regressions
    found = re.match(r"llama_tiny/torch_export at batch 2: median ITL ([0-9.]+)x the accepted artifact's, side by side "
                     r"in this run's rounds \(rounds from [0-9.]+ to [0-9.]+; allowed 1.25x\)$", line)
    assert found and float(found[1]) > 2, line
    again = gate_decoder(fast, tmp_path / "fast", accepted={"torch_export": load_decoder(kept)})
    assert compare_generation(again.to_dict(), stored, "baseline").passed


@pytest.mark.parametrize(("overrides", "message"), [
    ({"prompts": torch.zeros(2, 8)}, "prompts must be a 2-D tensor of token ids"),
    ({"new_tokens": 1}, "new_tokens must be at least 2"),
    ({"batch_sizes": (4,)}, r"batch_sizes \[4\] must each be between 1 and the 2 prompt rows"),
    ({"formats": ("eager", "torchscript")}, "no generative form of torchscript"),
    ({"new_tokens": 60}, "prompt 8 \\+ 60 new tokens exceed the model's 64 positions"),
])
def test_a_generative_spec_names_what_is_wrong(overrides: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        llama_spec(**overrides)
