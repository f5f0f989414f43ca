"""The gate on real architectures, at CI cost (run on demand; prints, asserts nothing).

Builds models from `transformers` configs (random weights; nothing is downloaded): a ResNet-18 layout at 224x224,
MobileNetV2, a BERT-tiny classifier (hidden 128, 2 layers, seq 32, input_ids + attention_mask, the sequence axis
dynamic), plus an LSTM classifier and the digits CNN. BatchNorm statistics are re-estimated on synthetic data so
that outputs depend on the input, and the labels are the eager model's own top-1. Each goes through the plugin
exactly as a user's gate would (`pytest` in a generated project, every format, parity + accuracy + speed, default
settings), and the script prints the wall time per phase (export, parity, accuracy, bench) per model, the whole
run's wall time and the peak RSS of the pytest process.

    pip install -e ".[bench]"          # transformers
    python benchmarks/real_models.py [--models resnet18,mobilenet_v2,bert_tiny,lstm] [-- extra pytest args]
    python benchmarks/real_models.py --models digits_cnn,resnet18 --all-formats   # every format, AOTInductor too
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import defaultdict
from pathlib import Path

CONFTEST = textwrap.dedent('''
    """Real architectures from transformers configs, random weights, BatchNorm statistics re-estimated."""
    import functools

    import torch
    import transformers

    import deploycheck
    from deploycheck.digits import digits_spec
    from deploycheck.formats import default_formats, format_names

    ROWS = 32
    FORMATS = format_names() if {all_formats} else default_formats()  # --all-formats: the opt-in ones too


    def settle_batchnorm(model, make_batch, batches=4):
        """Re-estimate BatchNorm running statistics on synthetic data (a random init leaves mean 0 / var 1,
        under which an untrained network's outputs barely depend on its input)."""
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
        model.train()
        with torch.no_grad():
            for _ in range(batches):
                model(*make_batch())
        return model.eval()


    def labelled(model, batches, keyword=False):
        with torch.no_grad():
            return [(b, (model(**b) if keyword else model(*b)).logits.argmax(-1)) for b in batches]


    def vision(name, model_class, config, size):
        torch.manual_seed(0)
        model = settle_batchnorm(model_class(config), lambda: (torch.randn(16, 3, size, size),))
        generator = torch.Generator().manual_seed(1)
        batches = [(torch.randn(16, 3, size, size, generator=generator),) for _ in range(ROWS // 16)]
        data = [((b[0],), y) for b, y in labelled(model, batches)]
        return deploycheck.ModelSpec(name=name, model=model, factory=functools.partial(model_class, config),
                                     example_inputs=batches[0][0][:2], eval_data=data, max_accuracy_drop=0.05,
                                     formats=FORMATS)


    @deploycheck.model
    def digits_cnn():
        return digits_spec(formats=FORMATS)


    @deploycheck.model
    def resnet18():
        torch.manual_seed(0)
        config = transformers.ResNetConfig(layer_type="basic", depths=[2, 2, 2, 2],
                                           hidden_sizes=[64, 128, 256, 512], num_labels=10)
        return vision("resnet18", transformers.ResNetForImageClassification, config, 224)


    @deploycheck.model
    def mobilenet_v2():
        torch.manual_seed(0)
        config = transformers.MobileNetV2Config(num_labels=10, image_size=224)
        return vision("mobilenet_v2", transformers.MobileNetV2ForImageClassification, config, 224)


    @deploycheck.model
    def bert_tiny():
        torch.manual_seed(0)
        config = transformers.BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=512, num_labels=4)
        model = transformers.BertForSequenceClassification(config).eval()
        generator = torch.Generator().manual_seed(1)
        batches = []
        for _ in range(ROWS // 16):
            ids = torch.randint(1, config.vocab_size, (16, 32), generator=generator)
            mask = torch.ones(16, 32, dtype=torch.long)
            mask[8:, 24:] = 0
            batches.append({"input_ids": ids * mask, "attention_mask": mask})
        return deploycheck.ModelSpec(
            name="bert_tiny", model=model,
            factory=functools.partial(transformers.BertForSequenceClassification, config),
            example_inputs={k: v[:2] for k, v in batches[0].items()},
            eval_data=labelled(model, batches, keyword=True), max_accuracy_drop=0.05,
            dynamic_axes={"input_ids": {1: "seq"}, "attention_mask": {1: "seq"}}, formats=FORMATS)


    class LSTMClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(40, 128, num_layers=2, batch_first=True)
            self.head = torch.nn.Linear(128, 10)

        def forward(self, x):
            output, _ = self.lstm(x)
            return self.head(output[:, -1])


    @deploycheck.model
    def lstm():
        torch.manual_seed(0)
        model = LSTMClassifier().eval()
        generator = torch.Generator().manual_seed(1)
        batches = [torch.randn(16, 50, 40, generator=generator) for _ in range(ROWS // 16)]
        with torch.no_grad():
            data = [((b,), model(b).argmax(-1)) for b in batches]
        return deploycheck.ModelSpec(name="lstm", model=model, factory=LSTMClassifier, example_inputs=batches[0][:2],
                                     eval_data=data, max_accuracy_drop=0.05, formats=FORMATS)
''')

TESTS = textwrap.dedent('''
    def test_parity(artifact, deploycheck):
        deploycheck.assert_parity(artifact)


    def test_accuracy(artifact, deploycheck):
        deploycheck.assert_accuracy(artifact)


    def test_speed(artifact, deploycheck):
        deploycheck.bench(artifact)
''')

DURATION = re.compile(r"^([\d.]+)s (setup|call|teardown)\s+\S+::test_(\w+)\[([\w.-]+)/(\w+)\]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,mobilenet_v2,bert_tiny,lstm",
                        help="any of digits_cnn,resnet18,mobilenet_v2,bert_tiny,lstm")
    parser.add_argument("--all-formats", action="store_true",
                        help="the opt-in formats too (aot_inductor); name them in --deploycheck-formats as well")
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()
    project = Path(tempfile.mkdtemp(prefix="deploycheck-real-"))
    (project / "conftest.py").write_text(CONFTEST.replace("{all_formats}", str(args.all_formats)))
    (project / "test_gate.py").write_text(TESTS)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=0", "--durations-min=0",
               "--deploycheck-no-baselines", f"--deploycheck-models={args.models}",
               f"--deploycheck-artifacts={project / 'artifacts'}", *args.pytest_args]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=project, capture_output=True, text=True)
    wall = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    phases: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    exports: dict[str, dict[str, float]] = defaultdict(dict)  # model -> format -> seconds
    for line in done.stdout.splitlines():
        match = DURATION.match(line.strip())
        if match:
            seconds, when, test, model, format_name = match.groups()
            phase = "export" if when == "setup" and test == "parity" else {"speed": "bench"}.get(test, test)
            phases[model][phase] += float(seconds)
            if phase == "export":
                exports[model][format_name] = float(seconds)
    tail = [line for line in done.stdout.splitlines() if " passed" in line or " failed" in line or "error" in line]
    print(f"pytest exit {done.returncode}: {tail[-1] if tail else done.stdout[-2000:]}")
    print(f"{'model':14s} {'export s':>9s} {'parity s':>9s} {'accuracy s':>11s} {'bench s':>8s}")
    for model, figures in phases.items():
        print(f"{model:14s} {figures['export']:9.1f} {figures['parity']:9.1f} {figures['accuracy']:11.1f} "
              f"{figures['bench']:8.1f}")
    for model, seconds in exports.items():
        print(f"{model} export s (with the model's set-up for the first): "
              + ", ".join(f"{name} {value:.1f}" for name, value in seconds.items()))
    print(f"wall {wall:.1f} s, peak RSS {peak_mb:.0f} MB (the pytest process); project in {project}")
    summary = done.stdout.splitlines()
    start = next((i for i, line in enumerate(summary) if "= deploycheck =" in line), None)
    if start is not None:  # the plugin's summary: the tables, the best format, what was shortened
        end = next((i for i in range(start + 1, len(summary)) if summary[i].startswith("=")), len(summary))
        print("\n".join(summary[start + 1:end]))
    failures = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    if failures:
        print("\n".join(failures))


if __name__ == "__main__":
    main()
