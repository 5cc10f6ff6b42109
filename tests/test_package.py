import re
import subprocess
import sys
from pathlib import Path

import captum_concepts

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_readme_first_two_commands_install_and_test_and_ci_runs_them():
    commands = _readme_commands()
    install, test = commands[0], commands[1]
    assert install.startswith("pip install") and ".[dev]" in install
    assert "pytest" in test
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert any(line.startswith(install) for line in ci_lines), "install command differs in .ci/run"
    assert any(line.startswith(test) for line in ci_lines), "test command differs in .ci/run"
    assert any(line.startswith("ruff check") for line in ci_lines)
    assert any(line.startswith("python tutorials/build.py --check") for line in ci_lines)
    assert any(line.startswith("python -m sphinx -W -b html docs docs/_build/html") for line in ci_lines)


def test_import_does_not_pull_torchvision():
    code = "import sys; from captum_concepts import *; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_public_names_reexported_at_top_level():
    for sub in (captum_concepts.attr, captum_concepts.concept, captum_concepts.metrics):
        for name in sub.__all__:
            assert getattr(captum_concepts, name) is getattr(sub, name)
    for folder in ("captum_concepts", "tests", "tutorials", "benchmarks", "experiments", ".ci"):
        assert (ROOT / folder).exists(), folder
