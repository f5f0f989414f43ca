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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
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


def trained_cnn() -> torch.nn.Module:
    """The trained demo CNN, from the weight cache when the same recipe was trained before."""
    recipe_key = hashlib.sha256(json.dumps({**RECIPE, "torch": torch.__version__}, sort_keys=True).encode())
    weights = cache_dir() / "weights" / f"digits_cnn-{recipe_key.hexdigest()[:16]}.pt"
    model = DigitsCNN()
    if weights.is_file():
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return model.eval()
    torch.manual_seed(RECIPE["seed"])
    model = DigitsCNN()
    x_train, y_train, _, _ = load_split()
    train(model, x_train, y_train)
    weights.parent.mkdir(parents=True, exist_ok=True)
    temporary = weights.with_suffix(f".tmp-{os.getpid()}")
    torch.save(model.state_dict(), temporary)
    os.replace(temporary, weights)
    return model


def batches(x: torch.Tensor, y: torch.Tensor, size: int = EVAL_BATCH) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def digits_spec(**overrides: Any) -> ModelSpec:
    """The demo spec: the trained CNN, evaluated on the 597 held-out digits, calibrated on training digits."""
    from deploycheck.spec import ModelSpec

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
