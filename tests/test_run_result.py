"""The run document and its writers, from a document built by hand: each output (verdict line, tables, Markdown,
HTML, JSON, annotations, the merge of shards) is a function of the document alone."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
from markdown_it import MarkdownIt

from deploycheck.formats import format_names
from deploycheck.github import github_annotations
from deploycheck.report.files import html_report, markdown_report, write_json_report
from deploycheck.report.summary import summary_lines, verdict
from deploycheck.run_result import SCHEMA_PATH, Check, Result, RunInfo, RunResult, ordered
from deploycheck.shards import merge_shards

RUN = RunInfo("r1", "a" * 40, "main", "2026-12-08T00:00:00+00:00", "compare", "m1", {"cpu": "x", "cores": 2})
ROW = {"model": "cnn", "format": "onnx", "size_bytes": 4096, "parity": {"max_abs": 1e-6, "top1_agreement": 1.0,
                                                                         "passed": True}}


def _decoder(format_name: str, cache_ok: bool = True, itl_ratio: float | None = None) -> Result:
    checks = [Check("greedy_match", "ok", 1.0, "fraction", "eager", 1.0, "min", batch_size=1),
              Check("cache_max_error", "ok" if cache_ok else "FAIL", 1e-6 if cache_ok else 2e-3,
                    "of the largest logit", "eager", 1e-3, "max", batch_size=1, step=None if cache_ok else 1),
              Check("itl_p50_ms", "reported", 0.25, "ms", batch_size=1),
              Check("decode_tokens_per_s", "reported", 4000.0 if format_name != "eager" else 1000.0, "tokens/s",
                    batch_size=1)]
    if itl_ratio is not None:
        checks.append(Check("itl_p50_ms", "REGRESSED" if itl_ratio > 1.25 else "ok", itl_ratio, "x", "accepted", 1.25,
                            "max", (itl_ratio * 0.9, itl_ratio * 1.1), batch_size=1))
    return Result("llm", format_name, "generative", tuple(checks))


def _document() -> RunResult:
    return RunResult(RUN, ordered([_decoder("eager"), _decoder("onnx", cache_ok=False),
                                   _decoder("openvino", itl_ratio=1.6),
                                   Result("llm", "executorch", "generative", skipped="executorch is not installed"),
                                   Result.from_row(ROW)], format_names()))


def test_a_failing_decoder_fails_every_writer_of_the_document() -> None:
    document = _document()
    assert [(r.name, r.status) for r in document.results] == [
        ("cnn/onnx", "ok"), ("llm/eager", "ok"), ("llm/onnx", "FAIL"), ("llm/openvino", "FAIL"),
        ("llm/executorch", "skipped")]
    line = verdict(document)
    assert line.startswith("deploycheck: 2 of 4 model x format(s) FAILED (llm/onnx, llm/openvino); 1 fell behind "
                           "its baseline")
    lines = "\n".join(summary_lines(document))
    assert "wrong from step 1" in lines and "itl_p50_ms 1.60x REGRESSED" in lines
    assert "deploycheck: llm/executorch skipped: executorch is not installed" in lines
    assert "best format for llm at batch 1" not in lines, "no decoder format passed but eager"

    annotations = github_annotations(document)
    assert len(annotations) == 2 and annotations[0].startswith("::error title=deploycheck%3A llm/onnx failed::")
    assert "cache_max_error at batch 1: 0.002 of the largest logit (at most 0.001 of the largest logit) from step 1 " \
           "FAIL" in annotations[0]
    assert "itl_p50_ms vs accepted at batch 1: 1.60x (at most 1.25x) REGRESSED" in annotations[1]
    assert "accept the new figures with: pytest --deploycheck-update" in annotations[1]

    markdown = markdown_report(document)
    assert markdown.startswith("## deploycheck: FAILED\n") and "**Verdict: FAILED** (3 of 5 passed)" in markdown
    rendered = MarkdownIt("commonmark").enable("table").render(markdown)
    assert rendered.count("<table>") == 3, "single-pass, decoders, and the comparisons that are not ok"
    page = html_report(document)
    assert "Generative decoders" in page and 'class="verdict fail"' in page and "llm/openvino" in page


def test_the_document_round_trips_through_json_within_its_schema(tmp_path: Path) -> None:
    document = _document()
    write_json_report(tmp_path / "run.json", document)
    data = json.loads((tmp_path / "run.json").read_text())
    jsonschema.validate(data, json.loads(SCHEMA_PATH.read_text()))
    assert RunResult.from_dict(data) == document
    infinite = RunResult(None, (Result("m", "onnx", "generative", (Check("mean_kl", "FAIL", float("inf"), "nats",
                                                                         "budget", 0.05, "max"),)),))
    assert infinite.to_dict()["results"][0]["checks"][0] == {"metric": "mean_kl", "status": "FAIL", "unit": "nats",
                                                             "against": "budget", "limit": 0.05, "bound": "max"}


def test_shards_of_both_kinds_merge_into_the_single_document(tmp_path: Path) -> None:
    document = _document()
    decoders = RunResult(RUN, tuple(document.of_kind("generative")))
    single_pass = RunResult(RUN, tuple(document.of_kind("single-pass")))
    for name, shard in (("a.json", decoders), ("b.json", single_pass)):
        write_json_report(tmp_path / name, shard)
    merged = merge_shards([tmp_path / "b.json", tmp_path / "a.json"])
    assert merged.results == document.results and verdict(merged) == verdict(document)
    assert summary_lines(merged) == summary_lines(document)


def test_a_report_of_rows_from_before_results_had_a_kind_still_merges(tmp_path: Path) -> None:
    (tmp_path / "old.json").write_text(json.dumps({"run": None, "results": [ROW]}))
    merged = merge_shards([tmp_path / "old.json"])
    assert [(r.kind, r.status, r.measurements["size_bytes"]) for r in merged.results] == [("single-pass", "ok", 4096)]
