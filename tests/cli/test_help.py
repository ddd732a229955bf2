"""`shipyard --version`, `-h`, and help that shows every setting's environment variable and default."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from shipyard import __version__
from shipyard.config import Settings
from tests.cli.test_cli import shipyard
from tests.fixtures import ROOT


def flat(text: str) -> str:
    """Help text with rich's panel borders and line wrapping taken out."""
    return re.sub(r"[│╭╮╰╯─\s]+", " ", text)


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag: str) -> None:
    r = shipyard(flag)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()
    assert first == f"shipyard {__version__}"
    assert "python " in second and "torch " in second and "onnxruntime " in second


@pytest.mark.parametrize("args", [(), ("serve",), ("models", "list"), ("keys", "create"), ("zoo", "train", "code-lm")])
def test_h_is_help(args: tuple[str, ...]) -> None:
    long, short = shipyard(*args, "--help"), shipyard(*args, "-h")
    assert long.returncode == short.returncode == 0, short.stderr
    assert short.stdout == long.stdout and "Usage:" in short.stdout


@pytest.mark.parametrize("args", [("--version",), ("--help",), ("serve", "--help")])
def test_version_and_help_import_no_torch(args: tuple[str, ...]) -> None:
    code = ("import sys\nfrom shipyard.cli.main import main\n"
            f"sys.argv = ['shipyard', *{list(args)!r}]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'onnxruntime', 'fastapi') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_serve_help_names_every_setting_with_its_default() -> None:
    r = shipyard("serve", "--help", env={"COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    text = flat(r.stdout)
    # The brackets come out as written (they were read as a rich tag, and the text vanished).
    assert "Model repository folder. [env SHIPYARD_REPOSITORY; default model-repository]" in text
    options = set(re.findall(r"--([a-z][a-z-]*)", text))
    shown = 0
    for name, field in Settings.model_fields.items():
        if name.replace("_", "-") not in options:
            continue
        env = f"SHIPYARD_{name.upper()}"
        if field.default_factory is None and field.default is not None:
            assert f"[env {env}; default {field.default}]" in text, name
        else:
            assert f"[env {env}]" in text, name
        shown += 1
    assert shown >= 15  # repository, host, port, threads, batching, limits, grpc, auth...
    assert "default 127.0.0.1" in text and "default 8000" in text and "default 8001" in text


def test_help_escapes_brackets_everywhere() -> None:
    # Every subcommand's help, as one process, without a tag-shaped string being eaten.
    for args in (("models", "list"), ("demo",), ("optimize",), ("train",), ("zoo", "train", "code-lm")):
        r = shipyard(*args, "--help", env={"COLUMNS": "200"})
        assert r.returncode == 0, r.stderr
        assert "[env SHIPYARD_REPOSITORY; default model-repository]" in flat(r.stdout), args
