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


def eval_batches() -> list:
    """Replace with real labelled data: (inputs, labels) batches for accuracy and int8 calibration."""
    generator = torch.Generator().manual_seed(1)
    inputs = [torch.randn(64, 16, generator=generator) for _ in range(4)]
    with torch.no_grad():
        reference = MyModel()
        return [(x, reference(x).argmax(1)) for x in inputs]


@deploycheck.model
def my_model() -> deploycheck.ModelSpec:
    return deploycheck.ModelSpec(
        name="my_model",
        model=MyModel(),
        factory=MyModel,
        example_inputs=(torch.randn(8, 16),),   # batch >= 2 with a dynamic batch axis
        eval_data=eval_batches(),
        max_accuracy_drop=0.02,                  # int8 formats may lose at most 2 points
    )
'''

TEST_TEMPLATE = '''"""The deployment gate: every registered model x every format, loaded back from disk."""


def test_parity(artifact, deploycheck):       # outputs match the eager model, per output
    deploycheck.assert_parity(artifact)


def test_accuracy(artifact, deploycheck):     # accuracy drop within ModelSpec(max_accuracy_drop=...)
    deploycheck.assert_accuracy(artifact)


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
