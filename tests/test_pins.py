"""The pins: what CI and the Space install is exact, consistent with pyproject's ranges, and runs no
code from the Hub (docs/training.md, "No code from the Hub")."""

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / ".ci"))
import pins  # noqa: E402


def ranges() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    texts = project["dependencies"] + extras["train"] + extras["test"]
    return [Requirement(t) for t in texts if not t.startswith("phi2-assistant")]


def test_every_range_is_pinned_within_it_and_the_app_pins_agree_with_the_tests():
    constraints = pins.pins(ROOT / "constraints.txt")
    app = pins.pins(ROOT / "requirements.txt")
    for requirement in ranges():
        name = canonicalize_name(requirement.name)
        assert name in constraints, f"{name} has a range in pyproject.toml but no pin"
        assert requirement.specifier.contains(constraints[name], prereleases=True), (name, constraints[name])
    assert app and all(constraints.get(name) == version for name, version in app.items())
    # The app's pins hold what the app imports, not the training or test tools.
    assert "torch" in app and "gradio" in app and "trl" not in app and "pytest" not in app


def test_no_hub_kernels_are_pinned_or_importable():
    assert "kernels" not in pins.pins(ROOT / "constraints.txt")
    assert importlib.util.find_spec("kernels") is None, (
        "the `kernels` package is installed: bitsandbytes would fetch and run a kernel from the Hub at "
        "import; install with -c constraints.txt"
    )


def test_the_pins_diff_names_each_change(tmp_path):
    old, new = tmp_path / "old.txt", tmp_path / "new.txt"
    old.write_text("# header\ntorch==2.13.0\nkernels==0.19.1\nscipy==1.17.1\n")
    new.write_text("torch==2.13.0\nscipy==1.17.2\ntrl==1.16.0; python_version >= '3.11'\n")
    done = subprocess.run(
        [sys.executable, ROOT / ".ci" / "pins.py", "diff", old, new], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["  scipy 1.17.1 -> 1.17.2", "  + trl 1.16.0", "  - kernels 0.19.1"]
