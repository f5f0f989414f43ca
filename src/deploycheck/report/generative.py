"""The generative decoders of a run document as a table (one row per model x format x batch size), the best
decoder per batch size, and the decoders that could not run here: read from their checks alone, so the terminal,
the Markdown and the HTML report show the same figures, and a merged CI matrix the same as one job."""

from __future__ import annotations

from collections.abc import Sequence

from deploycheck.report.checks import value_text
from deploycheck.run_result import Check, Result, checks_status
from deploycheck.table import format_table, human_size

TITLES = ["model", "format", "batch", "greedy match", "cache", "low-bit weights", "mean KL", "top-1", "TTFT ms",
          "ITL ms", "decode tok/s", "size", "vs baseline", "status"]


def _batches(result: Result) -> list[int]:
    return list(dict.fromkeys(c.batch_size for c in result.checks if c.batch_size is not None))


def _measured(checks: Sequence[Check], metric: str) -> Check | None:
    return next((c for c in checks if c.metric == metric and c.against not in ("baseline", "accepted")), None)


def _cell(check: Check | None, spec: str) -> str:
    return "" if check is None or check.value is None else format(check.value, spec)


def _cache(check: Check | None) -> str:
    if check is None:
        return ""
    return "ok" if not check.failed else f"wrong from step {check.step}"


def _versus_baseline(checks: Sequence[Check]) -> str:
    """The first comparison that failed or was inconclusive, else the judged speed ratio, else "same"."""
    compared = [c for c in checks if c.against in ("baseline", "accepted")]
    problems = [c for c in compared if c.failed or c.status == "inconclusive"]
    if problems:
        first = problems[0]
        value = "" if first.value is None else f" {value_text(first.value, first.unit)}"
        return f"{first.metric}{value} {first.status}"
    speed = next((c for c in compared if c.metric == "itl_p50_ms" and c.value is not None), None)
    return f"ITL {speed.value:.2f}x accepted" if speed is not None and speed.value is not None else \
        "same" if compared else ""


def generation_cells(results: Sequence[Result]) -> tuple[list[str], list[list[str]]]:
    """Titles and cells: a row per decoder format and batch size (a failed or skipped format without figures,
    one row with its status)."""
    cells = []
    for result in results:
        general = [c for c in result.checks if c.batch_size is None]
        size = _measured(general, "size_bytes")
        batches = _batches(result)
        if not batches:
            cells.append([result.model, result.format, *[""] * (len(TITLES) - 3), result.status])
            continue
        for batch in batches:
            checks = [c for c in result.checks if c.batch_size == batch]
            fraction = _measured(checks, "int8_weight_fraction")
            cells.append([
                result.model, result.format, str(batch), _cell(_measured(checks, "greedy_match"), ".0%"),
                _cache(_measured(checks, "cache_max_error")), _cell(fraction, ".0%"),
                _cell(_measured(checks, "mean_kl"), ".2e"), _cell(_measured(checks, "top1_agreement"), ".1%"),
                _cell(_measured(checks, "ttft_ms"), ".2f"), _cell(_measured(checks, "itl_p50_ms"), ".3f"),
                _cell(_measured(checks, "decode_tokens_per_s"), ".0f"),
                "" if size is None or size.value is None else human_size(int(size.value)),
                _versus_baseline(checks), "FAIL" if result.failed_tests else checks_status(checks + general) or "ok"])
    return TITLES, cells


def generation_table(results: Sequence[Result]) -> str:
    return ("deploycheck: generative decoders against eager (greedy; quality teacher-forced on eager's tokens; "
            "speed: medians of side-by-side rounds)\n" + format_table(*generation_cells(results)))


def best_decoders(results: Sequence[Result]) -> list[str]:
    """Per model and batch size, the passing decoder format (eager aside) with the most decode tokens/s, and its
    median inter-token latency against eager's in the same rounds."""
    lines = []
    for model in dict.fromkeys(result.model for result in results):
        mine = [result for result in results if result.model == model]
        eager = next((result for result in mine if result.format == "eager"), None)
        for batch in dict.fromkeys(b for result in mine for b in _batches(result)):
            speeds = [(speed, result) for result in mine if result.format != "eager" and result.status != "FAIL"
                      and (speed := result.figure("decode_tokens_per_s", batch)) is not None]
            if not speeds:
                continue
            speed, best = max(speeds, key=lambda pair: pair[0])
            itl, eager_itl = best.figure("itl_p50_ms", batch), eager and eager.figure("itl_p50_ms", batch)
            versus = f", median ITL {eager_itl / itl:.1f}x shorter than eager's" if itl and eager_itl else ""
            lines.append(f"deploycheck: best format for {model} at batch {batch}: {best.format} ({speed:.0f} decode "
                         f"tokens/s{versus})")
    return lines


def skipped_decoders(results: Sequence[Result]) -> list[str]:
    return [f"deploycheck: {result.name} skipped: {result.skipped}" for result in results if result.skipped]

