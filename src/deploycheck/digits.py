"""The embedded default: a small CNN trained on scikit-learn's `load_digits` (8x8 grey digits, shipped inside
scikit-learn, so nothing is downloaded).

Training is deterministic (fixed seed, one thread) and takes a few seconds; the weights are cached under the
deploycheck cache directory, keyed by the training recipe and the torch version, and reloaded with
`weights_only=True`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deploycheck.spec import ModelSpec

TRAIN_SIZE = 1200
EVAL_BATCH = 64
RECIPE = {"seed": 0, "epochs": 30, "batch": 32, "lr": 3e-3, "train_size": TRAIN_SIZE, "version": 1}


def cache_dir() -> Path:
    """Where deploycheck keeps trained demo weights and exports: $DEPLOYCHECK_CACHE, else the user cache."""
    configured = os.environ.get("DEPLOYCHECK_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "deploycheck"


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions, a 2x2 max-pool and two Linear layers: 8x8 grey image -> 10 logits.

    `channels` and `hidden` are parameters so that smaller students and channel-pruned variants share the class.
    """

    def __init__(self, channels: tuple[int, int] = (16, 32), hidden: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels[0], 3, padding=1)
        self.conv2 = nn.Conv2d(channels[0], channels[1], 3, padding=1)
        self.fc1 = nn.Linear(channels[1] * 16, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        logits: torch.Tensor = self.fc2(torch.relu(self.fc1(x.flatten(1))))
        return logits


def load_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): a fixed shuffled split of the 1797 digits, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    images = torch.tensor(digits.images[order] / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(digits.target[order], dtype=torch.int64)
    return images[:TRAIN_SIZE], labels[:TRAIN_SIZE], images[TRAIN_SIZE:], labels[TRAIN_SIZE:]


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: dict[str, Any] | None = None,
          teacher: torch.nn.Module | None = None) -> torch.nn.Module:
    """Deterministic Adam training; with a `teacher`, distillation on its soft targets plus the labels."""
    recipe = {**RECIPE, **(recipe or {})}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(recipe["seed"])
        optimiser = torch.optim.Adam(model.parameters(), lr=recipe["lr"])
        model.train()
        for _ in range(recipe["epochs"]):
            for batch in torch.randperm(len(x), generator=generator).split(recipe["batch"]):
                logits = model(x[batch])
                loss = torch.nn.functional.cross_entropy(logits, y[batch])
                if teacher is not None:
                    with torch.no_grad():
                        soft = torch.softmax(teacher(x[batch]) / 2.0, dim=1)
                    loss = loss + torch.nn.functional.kl_div(torch.log_softmax(logits / 2.0, dim=1), soft,
                                                             reduction="batchmean") * 4.0
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def trained_cnn() -> DigitsCNN:
    """The trained demo CNN, from the weight cache when the same recipe was trained before."""
    def build() -> DigitsCNN:
        torch.manual_seed(RECIPE["seed"])
        model = DigitsCNN()
        x_train, y_train, _, _ = load_split()
        train(model, x_train, y_train)
        return model

    return _cached("digits_cnn", DigitsCNN(), build)


def _cached(name: str, shell: DigitsCNN, build: Callable[[], DigitsCNN]) -> DigitsCNN:
    """`build()`'s weights, cached under `name` and the recipe (and torch version): reloaded into `shell` with
    `weights_only=True`; written atomically."""
    recipe_key = hashlib.sha256(json.dumps({**RECIPE, "torch": torch.__version__}, sort_keys=True).encode())
    weights = cache_dir() / "weights" / f"{name}-{recipe_key.hexdigest()[:16]}.pt"
    if weights.is_file():
        shell.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return shell.eval()
    model = build()
    weights.parent.mkdir(parents=True, exist_ok=True)
    temporary = weights.with_suffix(f".tmp-{os.getpid()}")
    torch.save(model.state_dict(), temporary)
    os.replace(temporary, weights)
    return model.eval()


FINE_TUNE = {"epochs": 8, "lr": 1e-3}
SLIM_CHANNELS, SLIM_HIDDEN = (8, 16), 64
STUDENT_CHANNELS, STUDENT_HIDDEN = (8, 16), 32


def pruned_unstructured(amount: float = 0.5) -> DigitsCNN:
    """The demo CNN with `amount` of its conv and Linear weights zeroed by global L1 magnitude
    (`torch.nn.utils.prune`), fine-tuned with the mask in place, then made permanent: same shapes, sparse."""
    from torch.nn.utils import prune

    def build() -> DigitsCNN:
        model = trained_cnn()
        layers = [(model.conv1, "weight"), (model.conv2, "weight"), (model.fc1, "weight"), (model.fc2, "weight")]
        prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=amount)
        x_train, y_train, _, _ = load_split()
        train(model, x_train, y_train, FINE_TUNE)
        for module, name in layers:
            prune.remove(module, name)
        return model

    return _cached(f"digits_pruned_unstructured_{amount}", DigitsCNN(), build)


def pruned_channels() -> DigitsCNN:
    """The demo CNN with half of each convolution's output channels removed: channels ranked by L1 norm with
    `prune.ln_structured`, the kept ones copied into a narrower `DigitsCNN`, then fine-tuned. Fewer channels
    really compute less, unlike zeros."""
    from torch.nn.utils import prune

    def build() -> DigitsCNN:
        model = trained_cnn()
        slim = DigitsCNN(SLIM_CHANNELS, SLIM_HIDDEN)
        kept = []
        for conv, width in ((model.conv1, SLIM_CHANNELS[0]), (model.conv2, SLIM_CHANNELS[1])):
            prune.ln_structured(conv, "weight", amount=conv.out_channels - width, n=1, dim=0)
            prune.remove(conv, "weight")
            kept.append(torch.nonzero(conv.weight.flatten(1).abs().sum(1)).flatten())
        first, second = kept
        weights = model.state_dict()
        slim.load_state_dict({
            "conv1.weight": weights["conv1.weight"][first], "conv1.bias": weights["conv1.bias"][first],
            "conv2.weight": weights["conv2.weight"][second][:, first], "conv2.bias": weights["conv2.bias"][second],
            "fc1.weight": weights["fc1.weight"].view(model.fc1.out_features, -1, 16)[:, second].flatten(1),
            "fc1.bias": weights["fc1.bias"], "fc2.weight": weights["fc2.weight"], "fc2.bias": weights["fc2.bias"]})
        x_train, y_train, _, _ = load_split()
        train(slim, x_train, y_train, FINE_TUNE)
        return slim

    return _cached("digits_pruned_channels", DigitsCNN(SLIM_CHANNELS, SLIM_HIDDEN), build)


def distilled_student() -> DigitsCNN:
    """A smaller CNN (8/16 channels, 32 hidden) trained on the labels and the demo CNN's soft targets."""
    def build() -> DigitsCNN:
        torch.manual_seed(RECIPE["seed"])
        student = DigitsCNN(STUDENT_CHANNELS, STUDENT_HIDDEN)
        x_train, y_train, _, _ = load_split()
        train(student, x_train, y_train, teacher=trained_cnn())
        return student

    return _cached("digits_student", DigitsCNN(STUDENT_CHANNELS, STUDENT_HIDDEN), build)


def slim_cnn() -> DigitsCNN:
    """An untrained `DigitsCNN` of the channel-pruned shape (the state_dict factory of that variant)."""
    return DigitsCNN(SLIM_CHANNELS, SLIM_HIDDEN)


def student_cnn() -> DigitsCNN:
    """An untrained `DigitsCNN` of the student's shape."""
    return DigitsCNN(STUDENT_CHANNELS, STUDENT_HIDDEN)


COMPRESSED: dict[str, tuple[Callable[[], DigitsCNN], Callable[[], DigitsCNN]]] = {
    "pruned_unstructured": (pruned_unstructured, DigitsCNN),
    "pruned_channels": (pruned_channels, slim_cnn),
    "student": (distilled_student, student_cnn),
}


def compressed_spec(kind: str, original: Any = None, **overrides: Any) -> ModelSpec:
    """A compressed variant of the demo CNN (`pruned_unstructured`, `pruned_channels` or `student`) gated
    against the original (default: the trained demo CNN itself; pass a registered model's name in a gate)."""
    build, factory = COMPRESSED[kind]
    settings: dict[str, Any] = {
        "name": f"digits_{kind}", "model": build(), "factory": factory,
        "original": trained_cnn() if original is None else original,
        "max_accuracy_drop_vs_original": 0.02, "min_agreement_vs_original": 0.97, **overrides}
    return digits_spec(**settings)


def batches(x: torch.Tensor, y: torch.Tensor, size: int = EVAL_BATCH) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def digits_spec(**overrides: Any) -> ModelSpec:
    """The demo spec: the trained CNN, evaluated on the 597 held-out digits, calibrated on training digits."""
    x_train, _, x_test, y_test = load_split()
    settings: dict[str, Any] = {
        "name": "digits_cnn",
        "model": trained_cnn(),
        "factory": DigitsCNN,
        "example_inputs": (x_test[:8],),
        "input_names": ["image"],
        "output_names": ["logits"],
        "eval_data": batches(x_test, y_test),
        "calibration_data": [x_train[i:i + EVAL_BATCH] for i in range(0, 8 * EVAL_BATCH, EVAL_BATCH)],
        "max_accuracy_drop": 0.02,
    }
    settings.update(overrides)
    return ModelSpec(**settings)
