"""`abe new-provider`: the template rendered with the new name, valid names only, nothing clobbered.

Whether the rendered package installs, lints, type-checks and passes the contract suite
is `nox -s template`'s job; these tests check the rendering itself.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from importlib.resources import files
from pathlib import Path

import pytest

import abe
from abe.cli import main
from abe.cli.errors import EXIT_USAGE, CommandError
from abe.cli.new_provider import ProviderNames, check_name, render, template_files

TEMPLATE = Path(str(files("abe") / "_templates" / "provider"))


def _rendered_files(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_the_template_ships_with_abe_core() -> None:
    shipped = {"/".join(parts) for parts, _ in template_files(TEMPLATE)}
    assert {
        "pyproject.toml",
        "README.md",
        "CHANGELOG.md",
        "LICENSE",
        "src/abe_mq_example/__init__.py",
        "src/abe_mq_example/py.typed",
        "src/abe_mq_example/_backend.py",
        "src/abe_mq_example/_receiver.py",
        "src/abe_mq_example/_settings.py",
        "tests/test_contract.py",
    } <= shipped


def test_renders_every_file_with_the_new_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["new-provider", "acme", "--dir", str(tmp_path)]) == 0
    target = tmp_path / "abe-mq-acme"
    rendered = _rendered_files(target)
    expected = {
        "/".join(parts).replace("abe_mq_example", "abe_mq_acme")
        for parts, _ in template_files(TEMPLATE)
    }
    assert set(rendered) == expected
    assert [path.name for path in tmp_path.iterdir()] == ["abe-mq-acme"]  # no staging left

    pyproject = rendered["pyproject.toml"]
    assert 'name = "abe-mq-acme"' in pyproject
    assert 'acme = "abe_mq_acme:AcmeBackend"' in pyproject
    assert 'path = "src/abe_mq_acme/_version.py"' in pyproject
    assert "class AcmeBackend(BaseBackend):" in rendered["src/abe_mq_acme/_backend.py"]
    assert "class AcmeReceiver(Receiver):" in rendered["src/abe_mq_acme/_receiver.py"]
    settings = rendered["src/abe_mq_acme/_settings.py"]
    assert '"ACME_URL"' in settings
    assert '"acme://localhost:7000"' in settings
    assert "| `ACME_TOKEN` |" in rendered["README.md"]
    assert "class TestAcmeContract(CoreContract):" in rendered["tests/test_contract.py"]
    for name, text in rendered.items():
        assert re.search("example", name + text, re.IGNORECASE) is None, name
        if name.endswith(".py"):
            compile(text, name, "exec")

    out = capsys.readouterr().out
    assert f"Created {target}" in out
    assert f"cd {target}" in out
    assert "pytest" in out


def test_a_hyphenated_name_has_every_spelling() -> None:
    names = ProviderNames.of("rabbit-mq")
    assert names == ProviderNames(
        name="rabbit-mq",
        distribution="abe-mq-rabbit-mq",
        package="abe_mq_rabbit_mq",
        camel="RabbitMq",
        upper="RABBIT_MQ",
    )
    text = "abe-mq-example abe_mq_example ExampleBackend EXAMPLE_URL ABE_EXAMPLE_X example://h"
    assert names.substitute(text) == (
        "abe-mq-rabbit-mq abe_mq_rabbit_mq RabbitMqBackend RABBIT_MQ_URL ABE_RABBIT_MQ_X "
        "rabbit-mq://h"
    )


def test_the_current_folder_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["new-provider", "s3q"]) == 0
    assert (tmp_path / "abe-mq-s3q" / "src" / "abe_mq_s3q" / "_backend.py").is_file()


def test_a_missing_folder_is_refused_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    assert main(["new-provider", "acme", "--dir", str(missing)]) == 2
    assert "is not an existing folder" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def test_the_new_folder_has_the_usual_mode_and_an_absolute_path_is_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "no-python-here"))
    previous = os.umask(0o022)
    try:
        assert main(["new-provider", "acme", "--dir", "."]) == 0
    finally:
        os.umask(previous)
    created = tmp_path / "abe-mq-acme"
    assert stat.S_IMODE(created.stat().st_mode) == 0o755
    out = capsys.readouterr().out
    assert out.startswith(f"Created {created.resolve()}\n")
    assert f"{sys.executable} -m pip install -e '.[test,lint]'" in out


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("Acme", "lowercase letters"),
        ("1acme", "starting with a letter"),
        ("ac_me", "lowercase letters"),
        ("acme-", "single '-'"),
        ("ac--me", "single '-'"),
        ("a" * 21, "at most 20 characters"),
        ("abe-mq-acme", "`abe new-provider acme`"),
        ("example", "the template's own name"),
        ("redis", "taken by abe's own abe-mq-redis"),
        ("memory", "taken by abe's own abe-core"),
    ],
)
def test_bad_names_are_refused(
    name: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["new-provider", name, "--dir", str(tmp_path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("abe new-provider: ")
    assert says in err
    assert list(tmp_path.iterdir()) == []


def test_the_name_of_an_installed_backend_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(CommandError) as refused:
        check_name("acme", installed={"memory", "acme"})
    assert refused.value.code == EXIT_USAGE
    assert "is installed already" in str(refused.value)

    from abe.backends.message_queue.loader import BackendEntry

    installed = [BackendEntry("acme", "abe_mq_acme:AcmeBackend", "abe-mq-acme", "1.0")]
    monkeypatch.setattr("abe.cli.new_provider.available_backends", lambda: installed)
    assert main(["new-provider", "acme", "--dir", str(tmp_path)]) == EXIT_USAGE
    assert "a backend named 'acme' is installed already" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    existing = tmp_path / "abe-mq-acme"
    existing.mkdir()
    (existing / "mine.txt").write_text("keep me")
    assert main(["new-provider", "acme", "--dir", str(tmp_path)]) == EXIT_USAGE
    assert "exists already" in capsys.readouterr().err
    assert [path.name for path in tmp_path.iterdir()] == ["abe-mq-acme"]
    assert [path.name for path in existing.iterdir()] == ["mine.txt"]


def test_caches_and_builds_are_not_copied(tmp_path: Path) -> None:
    template = tmp_path / "template"
    for name in ("__pycache__/x.cpython-312.pyc", ".pytest_cache/v", "dist/a.whl", "a.egg-info/b"):
        (template / name).parent.mkdir(parents=True, exist_ok=True)
        (template / name).write_text("")
    (template / "pyproject.toml").write_text('name = "abe-mq-example"\n')
    (template / "src" / "abe_mq_example").mkdir(parents=True)
    (template / "src" / "abe_mq_example" / "logo.bin").write_bytes(b"\xff\x00example")
    (tmp_path / "out").mkdir()
    target = render(ProviderNames.of("acme"), tmp_path / "out", template)
    assert sorted(path.relative_to(target).as_posix() for path in target.rglob("*")) == [
        "pyproject.toml",
        "src",
        "src/abe_mq_acme",
        "src/abe_mq_acme/logo.bin",
    ]
    assert (target / "pyproject.toml").read_text() == 'name = "abe-mq-acme"\n'
    assert (target / "src/abe_mq_acme/logo.bin").read_bytes() == b"\xff\x00example"  # not text


def test_a_spelling_rendering_would_miss_fails_and_leaves_nothing(tmp_path: Path) -> None:
    template = tmp_path / "template"
    (template / "src").mkdir(parents=True)
    (template / "pyproject.toml").write_text('name = "abe-mq-example"\n')
    (template / "src" / "notes.txt").write_text("fine: ExampleBackend\nnot fine: eXample\n")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CommandError) as failed:
        render(ProviderNames.of("acme"), out, template)
    assert "'eXample' at src/notes.txt:2" in str(failed.value)
    assert list(out.iterdir()) == []


def test_the_template_depends_on_this_abe_core() -> None:
    """The template's abe-core range holds this version, so a rendered copy installs beside it."""
    pyproject = (TEMPLATE / "pyproject.toml").read_text(encoding="utf-8")
    major, minor = (int(part) for part in abe.__version__.split(".")[:2])
    wanted = f"abe-core>={major}.{minor},<{major}.{minor + 1}"
    assert f'dependencies = ["{wanted}"]' in pyproject
    assert f'test = ["abe-core[testing]>={major}.{minor},<{major}.{minor + 1}"]' in pyproject


def _python_on_path(folder: Path, target: str) -> None:
    """Make `folder/python` a link to `target`, as a virtualenv's bin/ has it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "python").symlink_to(target)


def test_the_printed_steps_say_python_when_it_is_the_python_abe_runs_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In an activated virtualenv the steps read as the documentation shows and runs them."""
    bin_dir = tmp_path / "venv" / "bin"
    _python_on_path(bin_dir, os.path.realpath(sys.executable))
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python3"))
    (bin_dir / "python3").symlink_to(os.path.realpath(str(bin_dir / "python")))
    monkeypatch.setenv("PATH", str(bin_dir))
    assert main(["new-provider", "acme", "--dir", str(tmp_path)]) == 0
    steps = capsys.readouterr().out.split("as it is", 1)[1]
    assert "\n  python -m pip install -e '.[test,lint]'\n  python -m pytest\n" in steps


def test_the_printed_steps_name_abe_s_python_when_python_is_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another environment's `python` (the same binary, another bin/) would lack abe-core."""
    other = tmp_path / "other-venv" / "bin"
    _python_on_path(other, os.path.realpath(sys.executable))
    monkeypatch.setenv("PATH", str(other))
    assert main(["new-provider", "acme", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"\n  {sys.executable} -m pip install -e '.[test,lint]'\n" in out
    assert "\n  python -m" not in out
