"""The one matrix: every session runs over every package found in packages/, on every Python.

`nox` runs everything CI runs; `nox -l` shows the matrix. A new folder in packages/
joins every session without an edit here. `nox -s bench` is kept out of the default run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from xml.etree import ElementTree

import nox

ROOT = Path(__file__).parent
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
MAIN_PYTHON = "3.12"
PACKAGES = sorted(path.parent.name for path in ROOT.glob("packages/*/pyproject.toml"))
PROVIDERS = [name for name in PACKAGES if name.startswith("abe-mq-")]
# Neither core nor a provider: they declare `opentelemetry_instrumentor`, and their tests
# need their `test` extra (the OpenTelemetry SDK) and, against brokers, every provider.
INSTRUMENTATIONS = [name for name in PACKAGES if name.startswith("opentelemetry-instrumentation-")]
CORE = "abe-core"
TEST_TOOLS = ["pytest>=8", "pytest-asyncio>=0.24"]

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_venv = "no"
nox.options.error_on_missing_interpreters = True
nox.options.sessions = [
    "lint",
    "typecheck",
    "tests",
    "integration",
    "crash",
    "clusters",
    "build",
    "packaging",
    "docs",
    "pages",
    "demo",
    "template",
]


def _expose_pyenv_pythons() -> None:
    """Let `python3.X` resolve on machines where pyenv installs several Pythons.

    pyenv's shims only run the versions named by `pyenv global` or PYENV_VERSION;
    naming every installed 3.10-3.13 here makes all of them reachable for the matrix.
    """
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    if "PYENV_VERSION" in os.environ or not (root / "versions").is_dir():
        return
    wanted = re.compile(r"3\.1[0-3]\.\d+$")
    versions = sorted(
        (path.name for path in (root / "versions").iterdir() if wanted.match(path.name)),
        key=lambda name: [int(part) for part in name.split(".")],
    )
    try:
        current = subprocess.run(
            ["pyenv", "version-name"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        current = ""
    chosen = [name for name in [current, *reversed(versions)] if name]
    os.environ["PYENV_VERSION"] = ":".join(dict.fromkeys(chosen))
    os.environ.setdefault("UV_PYTHON_DOWNLOADS", "never")


_expose_pyenv_pythons()


def _local(package: str, extras: str = "") -> str:
    return f"{ROOT / 'packages' / package}{extras}"


def _install_with_core(session: nox.Session, package: str, *extra: str) -> None:
    """Install `package` from this checkout, with abe-core from this checkout too."""
    targets = [_local(CORE, "[testing,metrics]")]
    if package in INSTRUMENTATIONS:
        targets.append(_local(package, "[test]"))
    elif package != CORE:
        targets.append(_local(package))
    session.install(*targets, *extra)


@nox.session(python=MAIN_PYTHON)
@nox.parametrize("package", PACKAGES)
def lint(session: nox.Session, package: str) -> None:
    """ruff: lint and formatting of one package."""
    session.install("ruff")
    folder = f"packages/{package}"
    session.run("ruff", "check", folder)
    session.run("ruff", "format", "--check", folder)
    if package == CORE:  # the shared files live beside the packages
        shared = ["noxfile.py", "tools", "tests-integration"]
        session.run("ruff", "check", *shared)
        session.run("ruff", "format", "--check", *shared)
        # import cycles, provider size and imports, no asyncio.wait_for in providers
        session.run("python", "tools/check_structure.py")


@nox.session(python=MAIN_PYTHON)
@nox.parametrize("package", PACKAGES)
def typecheck(session: nox.Session, package: str) -> None:
    """mypy --strict on one package's src/, with its dependencies installed."""
    _install_with_core(session, package, "mypy")
    # Module names from src/, so namespace packages (opentelemetry.instrumentation.abe) resolve.
    source = f"packages/{package}/src"
    session.run("mypy", "--strict", "--explicit-package-bases", source, env={"MYPYPATH": source})


@nox.session(python=PYTHONS)
@nox.parametrize("package", PACKAGES)
def tests(session: nox.Session, package: str) -> None:
    """A package's fast offline tests, on each supported Python."""
    # pip and hatchling: the loader tests install test-only distributions with pip;
    # mypy: abe-core's tests type-check the protocol page's skeleton against it.
    _install_with_core(session, package, *TEST_TOOLS, "pip", "hatchling", "mypy")
    session.run("pytest", f"packages/{package}/tests", *session.posargs)


@nox.session(python=MAIN_PYTHON)
@nox.parametrize("package", PACKAGES)
def integration(session: nox.Session, package: str) -> None:
    """A package's tests against real brokers (tests-integration/<package>/)."""
    folder = ROOT / "tests-integration" / package
    if not folder.is_dir():
        session.error(f"{package} has no integration tests: add tests-integration/{package}/")
    # abe-core's own (`abe run`) and an instrumentation's run on every broker
    wants_all = package == CORE or package in INSTRUMENTATIONS
    providers = [_local(name) for name in PROVIDERS] if wants_all else []
    _install_with_core(session, package, *providers, "-r", "tests-integration/requirements.txt")
    session.run("pytest", str(folder), *session.posargs)


@nox.session(python=MAIN_PYTHON)
def crash(session: nox.Session) -> None:
    """The crash test on every broker: workers SIGKILLed and the broker crashed while messages
    flow; nothing confirmed may be lost, duplicates stay within what the crashes explain.

    CI sizes by default (1,500 messages a broker, a few minutes in all). The full run is
    `nox -s crash -- --messages 10000` (ABE_CRASH_MESSAGES; every ABE_CRASH_* size in
    tests-integration/crash/abe_crash/sizes.py can be set); other arguments go to pytest.
    """
    packages = [_local(CORE, "[testing]"), *(_local(provider) for provider in PROVIDERS)]
    session.install(*packages, "-r", "tests-integration/requirements.txt")
    args, env = _crash_arguments(session, list(session.posargs))
    session.run("pytest", "tests-integration/crash", *args, env=env)


@nox.session(python=MAIN_PYTHON)
def clusters(session: nox.Session) -> None:
    """Against a Redis Cluster (three masters, a replica each), a three-node NATS JetStream
    cluster and three Tansu brokers on one bucket: the contract suite, and a failover run
    each (a node SIGKILLed and restarted while a producer and worker processes run; nothing
    confirmed may be lost). A few minutes in all.

    The failover sizes are the crash test's ABE_CRASH_* variables; arguments go to pytest.
    Two pytest-xdist workers take one file each at a time: the Kafka contract suite waits on
    group rebalances for about four minutes, the rest runs beside it.
    """
    clustered = ("abe-mq-redis", "abe-mq-nats", "abe-mq-kafka")
    packages = [_local(CORE, "[testing]"), *(_local(provider) for provider in clustered)]
    session.install(*packages, "-r", "tests-integration/requirements.txt", "pytest-xdist")
    # a failure shows the clients' INFO records too (joins, rebalances, redeliveries)
    args = ["-n", "2", "--dist", "loadfile", "--log-level=INFO", *session.posargs]
    session.run("pytest", "tests-integration/clusters", *args)


def _crash_arguments(session: nox.Session, args: list[str]) -> tuple[list[str], dict[str, str]]:
    """Take `--messages N` (or `--messages=N`) out of the arguments, as ABE_CRASH_MESSAGES."""
    env: dict[str, str] = {}
    rest: list[str] = []
    items = iter(args)
    for arg in items:
        if arg == "--messages" or arg.startswith("--messages="):
            value = arg.partition("=")[2] or next(items, "")
            if not value.isdigit() or int(value) < 1:
                session.error(f"--messages needs a whole number of messages, got {value!r}")
            env["ABE_CRASH_MESSAGES"] = value
        else:
            rest.append(arg)
    return rest, env


@nox.session(python=MAIN_PYTHON)
@nox.parametrize("package", PACKAGES)
def build(session: nox.Session, package: str) -> None:
    """Wheel and sdist into dist/; twine check; the wheel installed alone and resolved.

    `nox -s build` builds them all: then `pip install --find-links dist abe-core
    abe-mq-redis` installs from this checkout exactly as from an index.
    """
    session.install("build[uv]", "twine", "uv")
    # dist/ holds every package's wheel and sdist side by side, so that from a clone
    # `pip install --find-links dist abe-core abe-mq-kafka` works as it will from PyPI.
    out = ROOT / "dist"
    stem = package.replace("-", "_")
    for old in out.glob(f"{stem}-*"):
        old.unlink()
    _build(session, f"packages/{package}", out)
    built = [str(path) for path in out.glob(f"{stem}-*")]
    session.run("twine", "check", "--strict", *built)
    wheels = [_newest(out, f"{stem}-*.whl")]
    if package != CORE:
        core_out = Path(session.create_tmp()) / "core"
        _build(session, _local(CORE), core_out, "--wheel")
        wheels.append(_newest(core_out, "*.whl"))
    python = _fresh_venv(session, "fresh")
    session.run("uv", "pip", "install", "--quiet", "--python", python, *wheels)
    session.run(python, str(ROOT / "tools" / "check_installed.py"), package, external=True)


@nox.session(python=MAIN_PYTHON)
def packaging(session: nox.Session) -> None:
    """Every wheel in one fresh venv: release metadata, no file shared between distributions,
    and uninstalling any one provider leaves abe-core and the others working."""
    session.install("build[uv]", "uv")
    out = Path(session.create_tmp()) / "wheels"
    shutil.rmtree(out, ignore_errors=True)
    for package in PACKAGES:
        _build(session, f"packages/{package}", out, "--wheel")
    python = _fresh_venv(session, "together")
    session.run("uv", "pip", "install", "--quiet", "--python", python, *map(str, out.glob("*.whl")))
    uv = shutil.which("uv", path=session.bin) or "uv"
    session.run(
        python, str(ROOT / "tools" / "check_packaging.py"), uv, str(out), *PACKAGES, external=True
    )


def _build(session: nox.Session, source: str, out: Path, *options: str) -> None:
    session.run(
        "python", "-m", "build", "--installer", "uv", "--outdir", str(out), *options, source
    )


def _fresh_venv(session: nox.Session, name: str) -> str:
    """A new, empty virtualenv on the session's Python; returns its interpreter."""
    folder = Path(session.create_tmp()) / name
    session.run("uv", "venv", "--quiet", "--clear", "--python", sys.executable, str(folder))
    return str(folder / "bin" / "python")


@nox.session(python=MAIN_PYTHON)
def docs(session: nox.Session) -> None:
    """The documentation site, built strict: any warning fails.

    Every package is installed from this checkout: the API pages, the providers'
    variable tables and the capability lists are generated from their code
    (docs/hooks/abe_docs.py), and abe.testing needs abe-core's `testing` extra.
    """
    packages = [_local(CORE, "[testing]"), *(_local(name) for name in PACKAGES if name != CORE)]
    session.install("-r", "docs/requirements.txt", "mypy", *packages)
    session.run("mkdocs", "build", "--strict", "--site-dir", str(ROOT / "site"))
    session.run(
        "python", "tools/check_site.py", str(ROOT / "site"), "https://abe-mq.github.io/abe/"
    )
    elsewhere = Path(session.create_tmp()) / "site-elsewhere"  # served from another place
    local = "http://127.0.0.1:8000/"
    session.run(
        "mkdocs", "build", "--strict", "--site-dir", str(elsewhere), env={"SITE_URL": local}
    )
    session.run("python", "tools/check_site.py", str(elsewhere), local)
    session.run("python", "tools/check_examples.py")  # every example passes mypy --strict


@nox.session(python=MAIN_PYTHON)
def pages(session: nox.Session) -> None:
    """The getting-started and writing-a-provider pages, run as a reader runs them.

    tests-integration/docs/ builds every package's wheel from this checkout, lays out a
    new HOME as a clone after `nox -s build`, and runs each page's shell, console and
    Python blocks in order in one bash (the page makes its own virtualenv and installs
    with its own `pip` lines), Redis steps on the CI broker. A failing command, or output
    other than the page shows, fails it. Nothing of abe is installed here: the page does.
    """
    session.install("-r", "tests-integration/requirements.txt", "uv")
    session.run("pytest", "tests-integration/docs", *session.posargs)


@nox.session(python=MAIN_PYTHON)
def demo(session: nox.Session) -> None:
    """abe's main job on the embedded default: `abe demo` must end with its verdict OK."""
    session.install(_local(CORE))
    session.run("abe", "demo", env={"QUEUE_BACKEND": ""})


@nox.session(python=MAIN_PYTHON)
def template(session: nox.Session) -> None:
    """The provider template as a third party gets it, so it can never rot.

    abe-core's wheel is built from its sdist (the template must ship in both); from that
    wheel `abe new-provider acme` renders a copy, which is installed beside it, resolved
    by `load_backend("acme")` and `abe backends`, linted, type-checked, and put through
    its tests (the contract suite) with no test skipped. Copies named with the shortest
    and longest names accepted are linted too, since the names change line lengths.
    """
    session.install("build")
    # Outside .nox/, which ruff never looks into.
    work = Path(tempfile.mkdtemp(prefix="abe-template-"))
    try:
        _check_template(session, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check_template(session: nox.Session, work: Path) -> None:
    session.run("python", "-m", "build", "--outdir", str(work / "dist"), _local(CORE))
    wheel = _newest(work / "dist", "*.whl")
    session.install(wheel)
    session.run("abe", "new-provider", "acme", "--dir", str(work))
    rendered = work / "abe-mq-acme"
    session.install(f"{wheel}[testing]", f"{rendered}[test]", "mypy", "ruff")
    session.run("python", str(ROOT / "tools" / "check_installed.py"), "abe-mq-acme")
    listed = str(session.run("abe", "backends", silent=True, env={"QUEUE_BACKEND": ""}))
    if "abe_mq_acme:AcmeBackend" not in listed or "OK, builds <AcmeBackend" not in listed:
        session.error(f"`abe backends` does not list the rendered provider:\n{listed}")
    (work / "names").mkdir()
    for name in ("q", "abcdefghijklmnopqrst"):
        session.run("abe", "new-provider", name, "--dir", str(work / "names"), silent=True)
        session.run("ruff", "check", str(work / "names" / f"abe-mq-{name}"))
        session.run("ruff", "format", "--check", str(work / "names" / f"abe-mq-{name}"))
    report = work / "pytest.xml"
    session.chdir(rendered)
    try:
        session.run("ruff", "check", ".")
        session.run("ruff", "format", "--check", ".")
        session.run("mypy", "--strict", "src", "tests")
        # xunit1: the suite records properties, which the default junit family warns about
        session.run("pytest", f"--junitxml={report}", "-o", "junit_family=xunit1", *session.posargs)
    finally:
        session.chdir(ROOT)
    suites = ElementTree.parse(report).iter("testsuite")
    skipped = sum(int(suite.get("skipped", "0")) for suite in suites)
    if skipped:
        session.error(f"{skipped} test(s) of the rendered provider were skipped; none may be")


@nox.session(python=MAIN_PYTHON)
def bench(session: nox.Session) -> None:
    """`abe bench` on memory, and on each backend named after `--`: `nox -s bench -- redis nats`."""
    session.install(_local(CORE), *(_local(provider) for provider in PROVIDERS))
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    for backend in ["memory", *session.posargs]:
        with (out / f"{backend}.json").open("w") as results:
            session.run("abe", "bench", "--json", env={"QUEUE_BACKEND": backend}, stdout=results)
        session.log(f"bench results for {backend}: {out / f'{backend}.json'}")


@nox.session(python=MAIN_PYTHON, name="bench-peers", default=False)
def bench_peers(session: nox.Session) -> None:
    """abe's drains beside FastStream's on the brokers the environment names (REDIS_URL, ...).

    `nox -s bench-peers -- redis nats kafka`: for each, `abe bench` runs its drains and
    tools/bench_peers.py FastStream's, in the same session; both land in bench-results/.
    """
    brokers = session.posargs or ["redis", "nats", "kafka"]
    providers = [_local(f"abe-mq-{name}") for name in brokers]
    session.install(_local(CORE), *providers, "faststream[redis,nats,kafka]")
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    drains = "drain,drain_consumer,drain_concurrent"
    for backend in brokers:
        with (out / f"{backend}-drains.json").open("w") as results:
            session.run(
                "abe",
                "bench",
                "--json",
                "--no-progress",
                "--repeat",
                "3",
                "--workloads",
                drains,
                env={"QUEUE_BACKEND": backend},
                stdout=results,
            )
    with (out / "peers.json").open("w") as results:
        session.run(
            "python", "tools/bench_peers.py", "--brokers", ",".join(brokers), stdout=results
        )
    session.log(f"results in {out}: <backend>-drains.json and peers.json")


def _newest(folder: Path, pattern: str) -> str:
    found = sorted(folder.glob(pattern), key=lambda path: path.stat().st_mtime)
    if not found:
        raise RuntimeError(f"nothing matches {pattern} in {folder}")
    return str(found[-1])
