"""A user's own transformers model in the second hour: a 2-layer DistilBERT (keyword inputs, a dynamic sequence
axis) whose token-id bounds are found at export and enforced by `Artifact.run` and over HTTP, whose drift is
measured on ids as ids, and which is served under its own name with the format in a label."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from models import distil_clf_spec, token_batches
from serving import start_server, stop_server

import deploycheck
from deploycheck.errors import InputError, SpecError
from deploycheck.formats.base import io_specs

pytestmark = pytest.mark.slow
pytest.importorskip("transformers")

ONES = [[1, 1, 1]]
# (what is wrong, input_ids, attention_mask, the message's words)
BAD_TOKENS = [
    ("an id at the vocabulary", [[5, 1000, 3]], ONES, "input 'input_ids' holds 1000; the model accepts 0..999"),
    ("an id far beyond it", [[5000, 2, 3]], ONES, "input 'input_ids' holds 5000; the model accepts 0..999"),
    ("a negative id", [[-1, 2, 3]], ONES, "input 'input_ids' holds -1; the model accepts 0..999"),
    ("a sequence over the positions", [[7] * 65], [[1] * 65],
     "input 'input_ids' has 65 on axis 1 (seq); the model accepts at most 64"),
    ("a mask of the wrong length", [[5, 2, 3]], [[1, 1, 1, 1]],
     "input 'attention_mask' has 4 on axis 1 (seq) where 'input_ids' has 3"),
    ("an empty sequence", [[]], [[]], "input 'input_ids' is empty on axis 1 (seq)"),
]


@pytest.fixture(scope="module")
def distil(tmp_path_factory: pytest.TempPathFactory) -> tuple[deploycheck.ModelSpec, dict]:
    spec = distil_clf_spec()
    root = tmp_path_factory.mktemp("distil")
    return spec, deploycheck.export_all(spec, root / "distil_clf", formats=["onnx", "onnx_int8_dynamic"])


def test_the_bounds_are_found_from_the_embeddings_and_recorded_with_the_artifact(distil) -> None:
    _, artifacts = distil
    sidecar = json.loads((artifacts["onnx"].path / "deploycheck.json").read_text())
    ids, mask = sidecar["inputs"]
    assert ids["value_range"] == [0, 999], "the word embedding's 1000 rows"
    assert ids["max_shape"] == [None, 64] and mask["max_shape"] == [None, 64], "the position embedding's 64 rows"
    assert ids["axis_names"] == ["batch", "seq"] and "value_range" not in mask, "a mask indexes no table"


@pytest.mark.parametrize(("ids", "mask", "message"), [case[1:] for case in BAD_TOKENS],
                         ids=[case[0] for case in BAD_TOKENS])
def test_artifact_run_refuses_what_the_model_cannot_take_by_name(distil, ids, mask, message) -> None:
    _, artifacts = distil
    for artifact in artifacts.values():
        with pytest.raises(InputError, match=re.escape(f"distil_clf/{artifact.format}: {message}")):
            artifact.run((np.array(ids, np.int64).reshape(len(ids), -1), np.array(mask, np.int64).reshape(1, -1)))


def test_bounds_given_in_the_spec_win_and_mistakes_in_them_are_named() -> None:
    spec = distil_clf_spec(input_value_ranges={"input_ids": (0, 499)}, input_max_sizes={"input_ids": {1: 32}})
    ids = io_specs(spec)[0][0]
    assert ids.value_range == (0, 499) and ids.max_shape == (None, 32)
    with pytest.raises(SpecError, match=r"input_value_ranges names input 'token_ids'; inputs are \['input_ids', "):
        distil_clf_spec(input_value_ranges={"token_ids": (0, 9)})
    with pytest.raises(SpecError, match=r"input_value_ranges\['input_ids'\] must be \(low, high\)"):
        distil_clf_spec(input_value_ranges={"input_ids": (9, 0)})
    with pytest.raises(SpecError, match=r"input_max_sizes\['input_ids'\] must map axes 1..1 to positive sizes"):
        distil_clf_spec(input_max_sizes={"input_ids": {0: 32}})


def test_a_served_distilbert_refuses_bad_tokens_with_4xx_and_keeps_its_name(distil) -> None:
    """Two formats of one model from a directory: every bad request is a 4xx naming the input (over /predict and
    the v2 protocol), counted under the model's own name with the format in a label; then correct answers."""
    _, artifacts = distil
    server = start_server(artifacts["onnx"].path.parent)
    try:
        good = {"input_ids": [[101, 7, 42, 9]], "attention_mask": [[1, 1, 1, 1]]}
        expected = artifacts["onnx"].run((np.array(good["input_ids"]), np.array(good["attention_mask"])))[0]
        for _, ids, mask, message in BAD_TOKENS:
            status, answer = server.post("/predict?model=distil_clf&format=onnx",
                                         {"inputs": {"input_ids": ids, "attention_mask": mask}})
            assert status == 400 and message in answer["error"], answer
        status, answer = server.post("/v2/models/distil_clf/versions/onnx_int8_dynamic/infer", {"inputs": [
            {"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [5000, 2, 3]},
            {"name": "attention_mask", "shape": [1, 3], "datatype": "INT64", "data": [1, 1, 1]}]})
        assert status == 400 and "input 'input_ids' holds 5000" in answer["error"], answer
        status, answer = server.post("/predict?model=distil_clf&format=onnx", {"inputs": good})
        assert status == 200 and answer["format"] == "onnx"
        assert np.allclose(answer["outputs"]["logits"], expected, atol=1e-5)
        assert server.post("/predict?model=distil_clf-onnx", {"inputs": good})[0] == 200, "name-format still works"
        status, answer = server.post("/predict?model=distil_clf", {"inputs": good})
        assert status == 400 and "served in formats onnx, onnx_int8_dynamic: add ?format=FORMAT" in answer["error"]
        refused = server.series("deploycheck_errors_total", model="distil_clf", format="onnx")
        assert sum(value for value, _ in refused) == len(BAD_TOKENS), refused
        assert server.series("deploycheck_errors_total", model="distil_clf", format="onnx_int8_dynamic")
        assert not server.series("deploycheck_requests_total", model="distil_clf-onnx"), \
            "the model keeps its name in the metrics"
        idle = server.series("deploycheck_window_latency_seconds", model="distil_clf", format="onnx_int8_dynamic")
        assert idle and all(math.isnan(value) for value, _ in idle), "an idle model has no latency, not 0 s"
        busy = server.series("deploycheck_window_latency_seconds", model="distil_clf", format="onnx")
        assert all(value > 0 for value, _ in busy)
        answer = server.post("/predict?model=distil_clf&format=onnx", {"inputs": good, "id": "r-1"})[1]
        assert server.post("/feedback?model=distil_clf&format=onnx", {"request_id": "r-1", "label": 1}) == (
            200, {"matched": True}), "/feedback reads ?model= as its error message says"
        assert server.post("/feedback?model=distil_clf-onnx", {"request_id": "r-1", "label": 1})[1] == {
            "matched": False}, "already labelled: the same monitor"
    finally:
        stop_server(server)


def test_drift_on_token_ids_is_measured_on_ids_and_not_before_enough_requests(distil) -> None:
    """Served traffic drawn like the calibration data reads no drift, also in its lengths; ids from the rare end
    of the vocabulary read drift; and three requests read no PSI at all (it was 8.9 with decile bins)."""
    from deploycheck.accuracy import check_accuracy
    from deploycheck.drift import input_profile
    from deploycheck.monitor import Monitor

    _, artifacts = distil
    profile = check_accuracy(artifacts["onnx"]).input_profile
    assert profile["input_ids"]["kind"] == "ids" and profile["attention_mask"]["kind"] == "ids"

    def served(batches: list[dict[str, torch.Tensor]], monitor: Monitor) -> dict[str, float]:
        for batch in batches:
            for row in range(batch["input_ids"].shape[0]):
                monitor.record_inputs({name: tensor[row:row + 1].numpy() for name, tensor in batch.items()})
        return monitor.metrics()["input_drift_psi"]

    few = Monitor("distil_clf", baseline={"input_profile": profile})
    assert served([{k: v[:3] for k, v in token_batches(1, seed=7)[0].items()}], few) == {}
    assert few.metrics()["input_drift_requests"] == 3
    alike = served(token_batches(8, seed=7), Monitor("distil_clf", baseline={"input_profile": profile}))
    assert set(alike) == {"input_ids", "input_ids length", "attention_mask", "attention_mask length"}
    assert max(alike.values()) < 0.1, alike
    rare = [{"input_ids": torch.randint(900, 1000, (16, 12)), "attention_mask": torch.ones(16, 12, dtype=torch.long)}
            for _ in range(8)]
    shifted = served(rare, Monitor("distil_clf", baseline={"input_profile": profile}))
    assert shifted["input_ids"] > 1.0 and shifted["input_ids length"] < 0.1, shifted
    mixed = [(b["input_ids"], b["attention_mask"]) for b in token_batches(2, length=12) + token_batches(2, length=20)]
    two_lengths = input_profile(mixed, artifacts["onnx"].inputs)["input_ids"]  # calibration of two lengths
    assert two_lengths["length_fractions"].count(0.5) == 2, "lengths 12 and 20: two octaves, half each"
    longer = [{k: v.repeat(1, 3) for k, v in batch.items()} for batch in token_batches(8, seed=7)]
    assert served(longer, Monitor("distil_clf", baseline={"input_profile": profile}))["input_ids length"] > 1.0
