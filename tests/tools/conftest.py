"""The scripts under tools/ loaded as modules, so tests call their functions in-process."""
import importlib.util
import os

import pytest

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools")


def load_tool(script):
    """tools/<script>.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"segdep_tool_{script}", os.path.join(TOOLS, f"{script}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def benchmark_tool():
    return load_tool("benchmark")


@pytest.fixture(scope="module")
def demo():
    return load_tool("demo")


@pytest.fixture(scope="module")
def export_tool():
    return load_tool("export_model")


@pytest.fixture(scope="module")
def visualize_tool():
    return load_tool("visualize_depth_panoptic")


@pytest.fixture(scope="module")
def train_net_tool():
    return load_tool("train_net")
