"""A Hugging Face model through every format: keyword inputs, a `ModelOutput` result, int64 token ids, a dynamic
sequence length, and token-level accuracy. Built from a config (random weights; nothing is downloaded)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from models import installed_formats

import deploycheck
from deploycheck.accuracy import check_accuracy, evaluate, reference_artifact
from deploycheck.errors import FormatUnavailable, SpecError
from deploycheck.formats import default_formats
from deploycheck.parity import check_parity

# one worker builds the exported BERT once: `--dist loadscope` (pyproject) gives a module's tests to one worker
pytestmark = pytest.mark.slow

transformers = pytest.importorskip("transformers")

FP32 = [name for name in ("eager", "state_dict", "torchscript", "torch_export", "onnx", "executorch")
        if name in installed_formats()]


def tiny_bert(head: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64, num_labels=3)
    model_class = {"sequence": transformers.BertForSequenceClassification,
                   "tokens": transformers.BertForTokenClassification}[head]
    return model_class(config).eval()


def token_batches(count: int = 4, rows: int = 16, length: int = 24) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(count):
        ids = torch.randint(1, 120, (rows, length), generator=generator)
        mask = torch.ones(rows, length, dtype=torch.long)
        mask[rows // 2:, length * 3 // 4:] = 0  # half the rows padded at the end
        batches.append({"input_ids": ids * mask, "attention_mask": mask})
    return batches


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> tuple[deploycheck.ModelSpec, dict]:
    model = tiny_bert("sequence")
    batches = token_batches()
    with torch.no_grad():
        labels = [model(**batch).logits.argmax(-1) for batch in batches]
    spec = deploycheck.ModelSpec(  # executorch_int8 left out: PT2E breaks on BERT, said by the test that asks
        name="bert_tiny", model=model, factory=functools.partial(tiny_bert, "sequence"),
        formats=[name for name in default_formats() if name != "executorch_int8"],
        example_inputs={name: tensor[:8] for name, tensor in batches[0].items()},
        dynamic_axes={"input_ids": {1: "seq"}, "attention_mask": {1: "seq"}},
        eval_data=list(zip(batches, labels)))
    return spec, deploycheck.export_all(spec, tmp_path_factory.mktemp("bert"))


def test_keyword_inputs_and_model_output_names_come_from_the_model(bert) -> None:
    spec, artifacts = bert
    assert spec.keyword_inputs and spec.input_names == ["input_ids", "attention_mask"]
    assert spec.output_names == ["logits"], "a ModelOutput's keys name the outputs"
    onnx = artifacts["onnx"]
    assert [t.name for t in onnx.inputs] == ["input_ids", "attention_mask"]
    assert [t.dtype for t in onnx.inputs] == ["int64", "int64"] and onnx.inputs[0].shape == (None, None)


def test_every_format_exports_and_fp32_formats_match_eager_at_two_lengths(bert, tmp_path) -> None:
    spec, artifacts = bert
    assert set(artifacts) | {"executorch_int8"} >= set(installed_formats()), \
        "TorchScript included: dict outputs no longer stop the tracer"
    if "executorch_int8" in installed_formats() and "executorch_int8" not in artifacts:
        with pytest.raises(FormatUnavailable, match=r"bert_tiny/executorch_int8: PT2E preparation .* breaks"):
            deploycheck.export(spec, "executorch_int8", tmp_path / "executorch_int8")
    for name in FP32:
        report = check_parity(artifacts[name])
        assert report.passed, str(report)
        assert any("shorter" in output.name and "[8, 12]" in output.name for output in report.outputs), \
            "parity also ran at half the sequence length"
    for name in set(artifacts) - set(FP32):
        assert artifacts[name].run(spec.sample_inputs(2))[0].shape == (2, 3)


def test_accuracy_on_keyword_eval_data(bert) -> None:
    _, artifacts = bert
    report = check_accuracy(artifacts["onnx"])
    assert report.reference == 1.0 and report.obtained == 1.0 and report.samples == 64


def test_token_level_accuracy_skips_the_ignore_index() -> None:
    model = tiny_bert("tokens")
    batches = token_batches(count=2)
    labelled = []
    with torch.no_grad():
        for batch in batches:
            labels = model(**batch).logits.argmax(-1)
            labels[0, :5] = (labels[0, :5] + 1) % 3  # 5 wrong positions in the first row of each batch
            labels[batch["attention_mask"] == 0] = -100  # padding is not scored
            labelled.append((batch, labels))
    spec = deploycheck.ModelSpec(name="bert_tokens", model=model, example_inputs=batches[0], eval_data=labelled)
    scored = sum(int((labels != -100).sum()) for _, labels in labelled)
    result = evaluate(reference_artifact(spec), ignore_index=spec.ignore_index)
    assert result.samples == scored and result.value == pytest.approx(1 - 10 / scored)
    with pytest.raises(SpecError, match="labels must be class indices"):
        evaluate(reference_artifact(spec), ignore_index=None)


def test_a_nested_output_is_refused_once_plainly() -> None:
    with pytest.raises(SpecError, match=r"returned a tuple holding Tensor, tuple.*wrap the model"):
        deploycheck.ModelSpec(name="lstm", model=torch.nn.LSTM(4, 8, batch_first=True),
                              example_inputs=torch.randn(2, 5, 4))


def test_int64_token_ids_of_any_length_run_through_torch_export(bert) -> None:
    _, artifacts = bert
    ids = np.random.default_rng(0).integers(1, 120, size=(3, 10))
    outputs = artifacts["torch_export"].run((ids, np.ones_like(ids)))
    assert outputs[0].dtype == np.float32 and outputs[0].shape == (3, 3)
