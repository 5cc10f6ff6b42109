import os
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


def test_ci_second_pass_reruns_the_kernel_tests_on_other_kernel_paths():
    """After the README's test command, .ci/run reruns the ``kernels`` tests with other threads, other
    batch compositions and another CPU path (RELIABILITY.md, "Results across machines")."""
    test = _readme_commands()[1]
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    first = next(i for i, line in enumerate(lines) if line.startswith(test))
    second = next(i for i, line in enumerate(lines) if line.startswith('env "${OTHER_KERNEL_PATHS[@]}"'))
    assert first < second and "python -m pytest" in lines[second] and "-m kernels tests" in lines[second]
    assert "pytest_ok $?" in lines[first] and "pytest_ok $?" in lines[second]  # exit 5 is not a failure
    settings = " ".join(lines[lines.index("OTHER_KERNEL_PATHS=(") : second])
    for var in ("OMP_NUM_THREADS=1", "MKL_NUM_THREADS=1", "ATEN_CPU_CAPABILITY=default"):
        assert var in settings, var
    threads = re.search(r"CAPTUM_CONCEPTS_TEST_THREADS=(\d+)", settings)
    batch = re.search(r"CAPTUM_CONCEPTS_TEST_BATCH=(\d+)", settings)
    assert threads and int(threads.group(1)) != 1  # the first pass runs 1 thread per pytest -n worker
    assert batch
    # the variables are the ones the suite reads
    code = [sys.executable, "-m", "pytest", "--co", "-p", "no:cacheprovider", "tests/test_package.py"]
    env = dict(os.environ, CAPTUM_CONCEPTS_TEST_THREADS=threads.group(1), CAPTUM_CONCEPTS_TEST_BATCH="3")
    out = subprocess.run(code, capture_output=True, text=True, cwd=ROOT, env=env).stdout
    assert f"{threads.group(1)} intra-op threads" in out and "test batch 3" in out, out[:2000]
    probe = "import sys; sys.path.insert(0, 'tests'); import _kernels; print(_kernels.kernel_batch(5))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.stdout.strip() == "3", out.stderr


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
