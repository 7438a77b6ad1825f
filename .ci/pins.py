"""The pinned files, from what is installed in the running interpreter (.ci/refresh-pins calls it).

    python .ci/pins.py write DIR     # DIR/constraints.txt (everything installed) and DIR/requirements.txt
                                     # (the app's own dependencies, recursively: what the Space installs)
    python .ci/pins.py diff OLD NEW  # what changed between two constraints files, one line a package

Versions lose their local label (torch 2.13.0+cpu pins as torch==2.13.0, which a GPU machine resolves to
its CUDA build). A direct dependency keeps the environment marker pyproject.toml gives it.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import distribution, distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "phi2-assistant"
NOT_PINNED = {"pip", "setuptools", "wheel", PROJECT}
HEADER = (
    "# Written by .ci/refresh-pins from pyproject.toml's ranges, after the suite passed on exactly these.\n"
    "# Do not edit by hand: change the range in pyproject.toml and run .ci/refresh-pins.\n"
)


def installed() -> dict[str, str]:
    """Every installed distribution but the project and the installer: name -> version (no local label)."""
    found = {canonicalize_name(d.metadata["Name"]): d.version.split("+")[0] for d in distributions()}
    return {name: version for name, version in sorted(found.items()) if name not in NOT_PINNED}


def app_closure() -> dict[str, str]:
    """The project's dependencies without extras, followed recursively: name -> marker ('' if none)."""
    direct = {}
    for text in distribution(PROJECT).requires or []:
        requirement = Requirement(text)
        if requirement.marker is None or "extra" not in str(requirement.marker):
            direct[canonicalize_name(requirement.name)] = str(requirement.marker or "")
    closure, todo = dict(direct), list(direct)
    while todo:
        name = todo.pop()
        for text in distribution(name).requires or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            dependency = canonicalize_name(requirement.name)
            if dependency not in closure:
                closure[dependency] = ""
                todo.append(dependency)
    return closure


def write(folder: Path) -> None:
    versions = installed()
    lines = [f"{name}=={version}" for name, version in versions.items()]
    (folder / "constraints.txt").write_text(HEADER + "\n".join(lines) + "\n")
    app = [
        f"{name}=={versions[name]}" + (f"; {marker}" if marker else "")
        for name, marker in sorted(app_closure().items())
        if name in versions
    ]
    (folder / "requirements.txt").write_text(
        HEADER + "# The app's dependencies (the Space installs this file); the tests' are in constraints.txt.\n"
        + "\n".join(app) + "\n"
    )  # fmt: skip


def pins(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    found = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", path.read_text(), re.M)
    return {canonicalize_name(name): version for name, version in found}


def diff(old: Path, new: Path) -> list[str]:
    before, after = pins(old), pins(new)
    changes = [f"  {n} {before[n]} -> {after[n]}" for n in after if n in before and before[n] != after[n]]
    changes += [f"  + {n} {after[n]}" for n in after if n not in before]
    changes += [f"  - {n} {before[n]}" for n in before if n not in after]
    return changes


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "write":
        write(Path(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "diff":
        print("\n".join(diff(Path(sys.argv[2]), Path(sys.argv[3]))) or "  nothing changed")
    else:
        sys.exit("usage: python .ci/pins.py write DIR | diff OLD NEW")
