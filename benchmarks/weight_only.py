"""The weight-only formats side by side with fp32, on a ResNet-18 layout and BERT-tiny (the models of
`benchmarks/real_models.py`: transformers configs, random weights), in one table: size, the share of weights in
8 bits or fewer, batch-1 and batch-32 medians each timed interleaved with the fp32 model of the same runtime (so
a busy machine slows both alike; the ratio is fp32's median over the format's), and agreement with eager (top-1
and SQNR from parity, on every row the spec holds).

    python benchmarks/weight_only.py [--models resnet18,bert_tiny] [--time 2.0]

Prints; asserts nothing. ONNX Runtime's MatMulNBits takes MatMul weights only (ResNet-18: convolutions and one
Gemm, nothing changes); NNCF compresses convolutions too (in int8, also under int4).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import tempfile
from pathlib import Path

import numpy as np

import deploycheck
from deploycheck.latency import interleaved_times
from deploycheck.model_registry import MODEL_FUNCTION
from deploycheck.parity import check_parity
from deploycheck.table import format_table, human_size

sys.path.insert(0, str(Path(__file__).parent))
from real_models import CONFTEST  # the same model builders as the real-models benchmark

FP32_OF = {"onnx_int8_weight": "onnx", "onnx_int4_weight": "onnx",
           "openvino_int8_weight": "openvino", "openvino_int4_weight": "openvino"}
FORMATS = ["onnx", "openvino", *FP32_OF]


def model_builders(scratch: Path) -> object:
    path = scratch / "weight_only_models.py"
    path.write_text(CONFTEST.replace("{all_formats}", "True"))
    loaded = importlib.util.spec_from_file_location("weight_only_models", path)
    assert loaded is not None and loaded.loader is not None
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    return module


def side_by_side(artifact: deploycheck.Artifact, fp32: deploycheck.Artifact, batch: int,
                 time_s: float) -> tuple[float, float]:
    """The format's median (ms) and fp32's median over it, timed interleaved."""
    mine, theirs = interleaved_times(artifact, fp32, batch_size=batch, max_time_s=time_s)
    return float(np.median(mine)) * 1e3, float(np.median(theirs) / np.median(mine))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="resnet18,bert_tiny")
    parser.add_argument("--time", type=float, default=2.0, help="seconds per interleaved pair of timings")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        builders = model_builders(Path(scratch))
        for name in args.models.split(","):
            fixture = getattr(builders, name)
            spec = dataclasses.replace(getattr(fixture, MODEL_FUNCTION, fixture)(), formats=FORMATS)
            artifacts = deploycheck.export_all(spec, Path(scratch) / name)
            for format_name in FORMATS:
                artifact = artifacts[format_name]
                quantization = artifact.metadata.get("quantization") or {}
                parity = check_parity(artifact)
                top1 = parity.min_top1_agreement
                sqnr = min((o.sqnr_db for o in parity.outputs if o.sqnr_db is not None), default=None)
                fp32 = artifacts[FP32_OF.get(format_name, format_name)]
                timed = []
                for batch in (1, 32):
                    p50, ratio = side_by_side(artifact, fp32, batch, args.time)
                    timed += [f"{p50:.3f}", "" if fp32 is artifact else f"{ratio:.2f}x"]
                fraction = quantization.get("int8_weight_fraction")
                rows.append([name, format_name, human_size(artifact.size_bytes),
                             "" if fraction is None else f"{fraction:.0%}", *timed,
                             "" if top1 is None else f"{top1:.1%}", "" if sqnr is None else f"{sqnr:.1f}",
                             "ok" if parity.passed else "FAIL"])
                print(" | ".join(rows[-1]), flush=True)
    print()
    print(format_table(["model", "format", "size", "weights <= 8 bit", "p50 ms b1", "vs fp32 b1", "p50 ms b32",
                        "vs fp32 b32", "top-1 agree", "SQNR dB", "parity"], rows))


if __name__ == "__main__":
    main()
