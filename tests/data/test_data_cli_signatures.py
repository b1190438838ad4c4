"""The datamodules' signatures are what LightningCLI parses: every argument must be typed and
documented, since that text is the `--help` users read."""

import inspect

import pytest
from jsonargparse import ArgumentParser

from lit_unitscale.data import CausalLMData, G2PData, MaskedLMData, NERData, SentimentData

MODULES = [CausalLMData, MaskedLMData, G2PData, SentimentData, NERData]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_every_argument_is_typed_and_documented(module):
    parser = ArgumentParser()
    parser.add_class_arguments(module, "data")
    help_text = parser.format_help()
    for name, parameter in inspect.signature(module.__init__).parameters.items():
        if name == "self":
            continue
        assert parameter.annotation is not inspect.Parameter.empty, name
        action = next(a for a in parser._actions if a.dest == f"data.{name}")
        assert action.help and not action.help.startswith("(type"), f"{name} has no description"
    assert "batch_size" in help_text


def test_a_recipe_style_config_instantiates(fixtures):
    parser = ArgumentParser()
    parser.add_class_arguments(CausalLMData, "data")
    config = parser.parse_object(
        {"data": {"corpus": str(fixtures / "text"), "seq_len": 8, "batch_size": 2}}
    )
    data = parser.instantiate_classes(config).data
    assert isinstance(data, CausalLMData) and data.seq_len == 8
