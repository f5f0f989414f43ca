"""What `deploycheck init` writes into a new project: a conftest registering a model, the gate's tests, and the
`[tool.deploycheck]` settings. Plain text, kept apart from the command that writes it."""

CONFTEST_TEMPLATE = '''"""deploycheck gate configuration: the models to gate, registered with @deploycheck.model."""

import torch

import deploycheck


class MyModel(torch.nn.Module):
    """Replace with your model (and its factory, so the state_dict round trip is checked too)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def labelled_batches() -> list:
    """Replace with real labelled data: (inputs, labels) batches for accuracy and int8 calibration. Here: points
    around four centres, one class each, which a trained model tells apart with a margin, as a real one does."""
    generator = torch.Generator().manual_seed(1)
    centres = 3 * torch.randn(4, 16, generator=generator)
    labels = torch.randint(0, 4, (256,), generator=generator)
    inputs = centres[labels] + torch.randn(256, 16, generator=generator)
    return [(inputs[i:i + 64], labels[i:i + 64]) for i in range(0, 256, 64)]


def trained_model() -> MyModel:
    """Replace with your trained weights, e.g. `model.load_state_dict(torch.load("weights.pt"))`; here a few
    steps of training on the data above (an untrained model's near-tied outputs would flip under int8)."""
    model = MyModel()
    inputs = torch.cat([x for x, _ in labelled_batches()])
    labels = torch.cat([y for _, y in labelled_batches()])
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(100):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        optimiser.step()
    return model.eval()


@deploycheck.model
def my_model() -> deploycheck.ModelSpec:
    return deploycheck.ModelSpec(
        name="my_model",
        model=trained_model(),
        factory=MyModel,
        example_inputs=(torch.randn(8, 16),),   # batch >= 2 with a dynamic batch axis
        eval_data=labelled_batches(),
        max_accuracy_drop=0.02,                  # int8 formats may lose at most 2 points
    )
'''

# the same models for a project with its own conftest.py, which imports them (`__all__`: only the fixtures)
MODELS_TEMPLATE = CONFTEST_TEMPLATE.replace(
    "registered with @deploycheck.model.",
    "registered with @deploycheck.model;\nloaded by the line `deploycheck init` added to conftest.py.", 1).replace(
    "\nimport deploycheck\n", '\nimport deploycheck\n\n__all__ = ["my_model"]  # what conftest.py imports\n', 1)

TEST_TEMPLATE = '''"""The deployment gate: every registered model x every format, loaded back from disk."""


def test_parity(artifact, deploycheck):       # outputs match the eager model, per output
    deploycheck.assert_parity(artifact)


def test_accuracy(artifact, deploycheck):     # accuracy drop within ModelSpec(max_accuracy_drop=...)
    deploycheck.assert_accuracy(artifact)


def test_size(artifact, deploycheck):         # the artifact's bytes, held to the baseline
    deploycheck.assert_size(artifact)


def test_speed(artifact, deploycheck):        # latency per batch size, held to the baseline
    deploycheck.bench(artifact)
'''

PYPROJECT_TEMPLATE = '''
[tool.deploycheck]
baselines = "baselines"

[tool.deploycheck.rules]
accuracy_drop = 0.005
latency = ["p50:10%", "p99:25%"]
'''
