"""The README's method example runs as written and does what it says."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from lightning_fair.diffusion import SamplerConfig
from lightning_fair.main import main
from lightning_fair.methods import ConditionalSampling, PlainSampling, method_registry

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def example_module(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    section = README.read_text().split("## Debiasing methods", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    folder = tmp_path_factory.mktemp("readme")
    (folder / "my_methods.py").write_text(code)
    sys.path.insert(0, str(folder))
    try:
        import my_methods

        yield my_methods
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("my_methods", None)


def test_readme_example_interpolates_between_plain_and_conditional(
    example_module: ModuleType, tiny_backbone: Path
) -> None:
    method_class = example_module.EarlyConditioning
    assert method_registry()["early_conditioning"] is method_class
    sampler = SamplerConfig(num_inference_steps=3, eta=1.0)
    images = {}
    for early_steps in (0, 1, 3):
        method = method_class(str(tiny_backbone), sampler=sampler, seed=5, early_steps=early_steps)
        images[early_steps], state = method.sample(4)
        assert images[early_steps].shape == (4, 3, 32, 32)
    plain, _ = PlainSampling(str(tiny_backbone), sampler=sampler, seed=5).sample(4)
    conditional, conditional_state = ConditionalSampling(str(tiny_backbone), sampler=sampler, seed=5).sample(4)
    torch.testing.assert_close(images[0], plain)  # never conditioned
    torch.testing.assert_close(images[3], conditional)  # conditioned throughout, on the same drawn classes
    assert torch.equal(state.conditions["early_class"], conditional_state.conditions["Male"])
    assert not torch.allclose(images[1], plain)


def test_readme_example_command_parses(
    example_module: ModuleType, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    command = re.search(r"PYTHONPATH=\. lightning-fair (test .*?)\n```", README.read_text(), re.DOTALL).group(1)
    arguments = command.replace("\\\n", " ").split()
    monkeypatch.chdir(README.parent)
    with pytest.raises(SystemExit) as exit_info:
        main([*arguments, "--print_config"])
    assert exit_info.value.code == 0
    output = capsys.readouterr().out
    assert "class_path: my_methods.EarlyConditioning" in output
    assert "early_steps: 5" in output
