"""The code is ruff clean, and the house keeps its shape: the model and the train step carry no platform checks
and never import sampling's weight formats; functions in lm/train stay short; no module grows past ~300
lines."""

import ast
import glob
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The modules that are the same on every backend: the model, its objective and the train step.
BACKEND_NEUTRAL = [*glob.glob(os.path.join(ROOT, "lm", "model", "*.py")), os.path.join(ROOT, "lm", "train", "step.py"),
                   os.path.join(ROOT, "lm", "train", "loop.py")]
PLATFORM_CHECKS = ("default_backend", ".platform", "device_kind", "jax.devices(", "local_devices(")


def test_ruff_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "lm", "configs", "tests", "experiments",
                             "setup.py"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _imports(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.update([node.module or ""] + [f"{node.module}.{a.name}" for a in node.names])
    return names


def test_the_model_and_the_train_step_check_no_platform_and_training_never_imports_sampling():
    """The model and the train step neither look at the platform nor import a backend (start-up hands them
    their choices); nothing in the model or in training imports sampling's weight formats."""
    assert len(BACKEND_NEUTRAL) >= 8
    for path in BACKEND_NEUTRAL:
        with open(path) as f:
            source = f.read()
        found = [check for check in PLATFORM_CHECKS if check in source]
        assert not found, f"{path} checks the platform: {found}"
        backends = [name for name in _imports(ast.parse(source)) if name.startswith("lm.backends")]
        assert not backends, f"{path} imports {backends}"
    for path in glob.glob(os.path.join(ROOT, "lm", "model", "*.py")) + glob.glob(os.path.join(ROOT, "lm", "train",
                                                                                              "*.py")):
        with open(path) as f:
            sampling = [name for name in _imports(ast.parse(f.read())) if name.startswith("lm.sample")]
        assert not sampling, f"{path} imports {sampling}"


def test_train_functions_and_modules_stay_small():
    for path in glob.glob(os.path.join(ROOT, "lm", "**", "*.py"), recursive=True):
        with open(path) as f:
            source = f.read()
        lines = source.count("\n")
        assert lines <= 300, f"{path} has {lines} lines"
        if os.sep + "train" + os.sep in path:
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.FunctionDef):
                    length = node.end_lineno - node.lineno + 1
                    assert length <= 60, f"{path}: {node.name} is {length} lines"
