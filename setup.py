"""Package discovery, the one thing pyproject.toml cannot say: setuptools' ``packages.find`` only finds
folders where they lie, and the committed demo adapters (demo/, at the root so that commands and docs
name them ``demo/...``) must ship inside the wheel. They are mapped to ``assistant.demo``, next to the
code that looks for them (assistant/models.py ``demo_dir``). Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["assistant*", "train*", "space*", "study*"]), "assistant.demo"],
    package_dir={"assistant.demo": "demo"},
)
