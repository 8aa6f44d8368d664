"""Build-time content of the abe docs: what the code declares is never typed twice.

mkdocs runs this file as a hook (`hooks:` in mkdocs.yml). It replaces markers in the
Markdown pages while the site builds:

    <!-- abe:variables redis -->             the variable table of the backend `redis`
    <!-- abe:variables common -->            the ABE_MQ_* variables every backend reads
    <!-- abe:capabilities redis -->          its capabilities, keys and group names
    <!-- abe:capability-matrix memory redis ... -->  those backends side by side
    <!-- abe:public-names abe -->            a module's `__all__`, linked to the API pages
    <!-- abe:bench-table -->                 the results in docs/benchmarks/*.json
    <!-- abe:bench-about -->                 where and how those results were measured
    <!-- abe:bench-shapes -->                abe / raw per payload size and key count, from
                                             docs/benchmarks/shapes/*.json

Backends are found the way `load_backend()` finds them (entry points), so the docs build
needs abe-core and every provider installed (`nox -s docs` does that). The benchmark
chart is drawn with matplotlib from the same JSON files (the `abe bench --json` output)
and added to the site as `benchmarks/throughput.svg`; the sweeps over payload sizes and key
counts in docs/benchmarks/shapes/ as `benchmarks/shapes.svg`.

Two checks keep the site complete: every installed backend needs a page under
providers/, and the contract-suite page must name every test of
`abe.testing.BackendContract`.

Any problem (an unknown backend, a marker with a typo, no benchmark results) stops the
build with a message instead of leaving a gap in the site.
"""

from __future__ import annotations

import importlib
import io
import json
import posixpath
import re
from pathlib import Path
from typing import Any

import griffe
import matplotlib
from matplotlib.figure import Figure
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

try:
    from abe.backends.message_queue.base.keys import DEAD_LETTER_SUFFIX
    from abe.backends.message_queue.loader import available_backends, load_backend_class
    from abe.settings import COMMON_VARIABLES
    from abe.testing import BackendContract
except ImportError as exc:
    raise PluginError(
        f"abe docs: {exc}. The docs are built from the code: install abe-core[testing] and "
        f"every provider from this checkout, as `nox -s docs` does"
    ) from exc

MARKER = re.compile(r"<!--\s*abe:([a-z-]+)((?:\s+[\w.:-]+)*)\s*-->")
BENCH_DIR = "benchmarks"
CHART = f"{BENCH_DIR}/throughput.svg"
SHAPES_DIR = f"{BENCH_DIR}/shapes"
SHAPES_CHART = f"{BENCH_DIR}/shapes.svg"
TARGETS = {"publish": 0.95, "publish_many": 0.95}  # abe / raw wanted; drains: DRAIN_TARGET
DRAIN_TARGET = 0.9
UNCHARTED = {"drain_consumer"}  # against the ack-each loop: 2 to 40 times, off any shared scale
CONTRACT_PAGE = "contract-suite.md"
NONE = "\N{EN DASH}"
BACKEND_ORDER = ("memory", "redis", "nats", "kafka", "sqs")
WORKLOAD_TITLES = {
    "publish": "publish",
    "publish_many": "publish_many",
    "end_to_end": "end to end",
    "drain": "drain (consume)",
    "drain_consumer": "drain (consumer)",
    "drain_concurrent": "drain (consumer, c=16)",
}


# ---- backends and their declarations ---------------------------------------------------


def _backend_class(name: str) -> Any:
    try:
        return load_backend_class(name)
    except Exception as exc:
        raise PluginError(
            f"abe docs: the backend {name!r} is not installed or does not load ({exc}); "
            f"build the docs with `nox -s docs`, which installs every package"
        ) from exc


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def variables_table(name: str) -> str:
    """The backend's `variables` ClassVar as a Markdown table: name, default, meaning.

    `common` stands for `abe.settings.COMMON_VARIABLES`, which every first-party backend reads.
    """
    if name == "common":
        variables: tuple[Any, ...] = COMMON_VARIABLES
    else:
        backend = _backend_class(name)
        variables = getattr(backend, "variables", ())
        if not variables:
            raise PluginError(f"abe docs: {backend.__name__}.variables is empty")
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for variable in variables:
        label = f"`{variable.name}`"
        if variable.secret:
            label += " (secret)"
        default = f"`{variable.default}`" if variable.default else ""
        rows.append(f"| {label} | {default} | {_cell(variable.meaning)} |")
    return "\n".join(rows)


def _yes(value: bool) -> str:
    return "yes" if value else "**no**"


def _key_limit(rules: Any) -> int:
    reserved = len(DEAD_LETTER_SUFFIX) if rules.kind == "key" else 0
    return int(rules.max_length) - reserved


def capabilities_list(name: str) -> str:
    """The backend's `capabilities`, `key_rules` and `group_rules` as a bulleted list."""
    backend = _backend_class(name)
    caps = backend.capabilities
    lines = [
        f"- **Fan-out**: {_yes(caps.fan_out)}. "
        + (
            "Every group receives every message of a key."
            if caps.fan_out
            else "Groups reading the same key compete for its messages."
        ),
        f"- **Per-key ordering**: {_yes(caps.per_key_ordering)}. "
        + (
            "One consumer receives one key's messages in publish order (redeliveries aside)."
            if caps.per_key_ordering
            else "Messages of one key may arrive out of publish order."
        ),
        f"- **Persistence**: {_yes(caps.persistence)}. "
        + (
            "Acknowledged messages survive a broker restart."
            if caps.persistence
            else "Messages live in memory and are gone when the process ends."
        ),
        f"- **Native delay**: {_yes(caps.native_delay)}. "
        + (
            "The broker itself holds a nacked message back for its delay."
            if caps.native_delay
            else "The backend emulates `nack(delay)`; delays still hold."
        ),
        f"- **Largest payload**: {caps.max_payload_bytes:,} bytes of JSON by default.",
        f"- **Broker**: {'another process' if caps.remote else 'inside this process'}.",
        f"- **Keys**: {_cell(backend.key_rules.described)}; at most "
        f"{_key_limit(backend.key_rules):,} characters (room is kept for `-dlq`).",
        f"- **Group names**: {_cell(backend.group_rules.described)}; at most "
        f"{_key_limit(backend.group_rules):,} characters.",
    ]
    reserved = sorted(getattr(backend, "reserved_headers", ()))
    if reserved:
        shown = ", ".join(f"`{header}`" for header in reserved)
        lines.append(f"- **Reserved header names**: {shown}, which the wire format uses itself.")
    return "\n".join(lines)


def capability_matrix(names: list[str], page: str) -> str:
    """Several backends' capabilities side by side, one column each, linked to their pages."""
    if not names:
        raise PluginError("abe docs: capability-matrix needs backend names")
    classes = [_backend_class(name) for name in names]
    here = posixpath.dirname(page)
    links = [
        f"[{name}]({posixpath.relpath(f'providers/{name}.md', here or '.')})" for name in names
    ]
    header = "| | " + " | ".join(links) + " |"
    rows = [header, "|---|" + "---|" * len(names)]

    def row(title: str, values: list[str]) -> None:
        rows.append(f"| {title} | " + " | ".join(values) + " |")

    def flags(attribute: str) -> list[str]:
        return ["yes" if getattr(cls.capabilities, attribute) else "no" for cls in classes]

    row("Fan-out across groups", flags("fan_out"))
    row("Per-key ordering", flags("per_key_ordering"))
    row("Persistence", flags("persistence"))
    row("Native delay", flags("native_delay"))
    row(
        "Largest payload (bytes)",
        [f"{cls.capabilities.max_payload_bytes:,}" for cls in classes],
    )
    row("Longest key", [f"{_key_limit(cls.key_rules):,}" for cls in classes])
    row(
        "Broker",
        ["remote" if cls.capabilities.remote else "in-process" for cls in classes],
    )
    return "\n".join(rows)


# ---- public names -------------------------------------------------------------------


def public_names(module_name: str) -> str:
    """A module's `__all__` as a table linking each name to where the API pages document it.

    Summaries are the first paragraph of each docstring, read with griffe (the library
    mkdocstrings uses), so type aliases and constants get theirs too.
    """
    module = importlib.import_module(module_name)
    names = [name for name in getattr(module, "__all__", ()) if name != "__version__"]
    if not names:
        raise PluginError(f"abe docs: {module_name} has no __all__ to list")
    package = module_name.split(".", maxsplit=1)[0]
    loaded = griffe.load(module_name, resolve_aliases=True, resolve_external=False)
    rows = ["| Name | What it is |", "|---|---|"]
    for name in names:
        member = loaded[name]
        target = member.final_target if member.is_alias else member
        if target.docstring is not None:
            summary = target.docstring.value.split("\n\n")[0]
        elif target.is_attribute and target.value is not None:
            summary = f"Another name for `{target.value}`."
        else:
            raise PluginError(f"abe docs: {module_name}.{name} has no docstring to summarise")
        if not target.path.startswith(package):
            raise PluginError(f"abe docs: {module_name}.{name} is not defined in {package}")
        rows.append(f"| [`{name}`][{module_name}.{name}] | {_cell(summary)} |")
    return "\n".join(rows)


# ---- benchmarks -----------------------------------------------------------------------


def _bench_reports(config: MkDocsConfig, subfolder: str = BENCH_DIR) -> list[dict[str, Any]]:
    folder = Path(config["docs_dir"]) / subfolder
    reports = []
    for path in sorted(folder.glob("*.json")):
        try:
            report = json.loads(path.read_text())
        except ValueError as exc:
            raise PluginError(f"abe docs: {path} is not JSON: {exc}") from exc
        schema = report.get("schema")
        if schema == "abe-bench/1":  # one shape, at the top level
            settings = report["settings"]
            report["runs"] = [
                {
                    "payload_bytes": settings["payload_bytes"],
                    "keys": 1,
                    "workloads": report["workloads"],
                }
            ]
        elif schema != "abe-bench/2":
            raise PluginError(f"abe docs: {path} is not `abe bench --json` output (abe-bench/2)")
        report["workloads"] = report["runs"][0]["workloads"]  # the table's shape: the first
        report["_file"] = path.name
        reports.append(report)
    if not reports:
        raise PluginError(f"abe docs: no benchmark results in {folder} (abe bench --json)")

    def order(report: dict[str, Any]) -> tuple[int, str]:
        name = report["backend"]["name"]
        rank = BACKEND_ORDER.index(name) if name in BACKEND_ORDER else len(BACKEND_ORDER)
        return rank, name

    return sorted(reports, key=order)


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:,.0f}"


def bench_table(config: MkDocsConfig) -> str:
    """Every result file as rows: backend, workload, msgs/s, p50, p99, and abe/raw."""
    rows = [
        "| Backend | Workload | msgs/s | p50 ms | p99 ms | Raw client msgs/s | abe / raw |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for report in _bench_reports(config):
        backend = report["backend"]["name"]
        link = f"[{backend}]({BENCH_DIR}/{report['_file']})"
        for workload, entry in report["workloads"].items():
            raw = entry.get("raw")
            ratio = entry.get("abe_over_raw")
            rows.append(
                f"| {link} | {WORKLOAD_TITLES.get(workload, workload)} "
                f"| {_rate(entry['msgs_per_s'])} | {_ms(entry['p50_ms'])} | {_ms(entry['p99_ms'])} "
                f"| {_rate(raw['msgs_per_s']) if raw else NONE} "
                f"| {format(ratio['msgs_per_s'], '.2f') if ratio else NONE} |"
            )
            link = ""
    return "\n".join(rows)


def bench_about(config: MkDocsConfig) -> str:
    """One line per result file: versions, Python, date and settings of the run."""
    lines = []
    for report in _bench_reports(config):
        backend, settings, raw = report["backend"], report["settings"], report["raw_client"]
        client = {
            "measured": f"raw client {raw['name']}",
            "none": "no raw client",
            "skipped": "raw client skipped",
        }[raw["status"]]
        lines.append(
            f"- `{report['_file']}`: {backend['name']} ({backend['distribution']} "
            f"{backend['version']}), {report['python_implementation']} {report['python']}, "
            f"{report['started_at']}; {settings['messages']:,} messages of "
            f"~{report['runs'][0]['payload_bytes']} bytes, batches of {settings['batch_size']}; "
            f"{client}."
        )
    return "\n".join(lines)


def bench_chart(config: MkDocsConfig, image_format: str = "svg") -> bytes:
    """Throughput per workload and backend as a bar chart (log scale), abe beside raw."""
    reports = _bench_reports(config)
    workloads = list(WORKLOAD_TITLES)
    colors = matplotlib.colormaps["tab10"].colors
    measured = [report["raw_client"]["status"] == "measured" for report in reports]
    group_width = 0.8
    width = group_width / (len(reports) + sum(measured))
    style = {"svg.hashsalt": "abe-docs", "svg.fonttype": "none", "font.size": 10}
    with matplotlib.rc_context(style):
        figure = Figure(figsize=(8.5, 4.2), layout="constrained")
        axes = figure.subplots()
        for index, workload in enumerate(workloads):
            position = index - group_width / 2 + width / 2
            for number, report in enumerate(reports):
                entry = report["workloads"].get(workload)
                if entry is None:  # an older file without this workload
                    position += width
                    continue
                color = colors[number % len(colors)]
                name = report["backend"]["name"]
                label = name if index == 0 else None
                axes.bar(position, entry["msgs_per_s"], width, color=color, label=label)
                position += width
                if entry.get("raw") is not None:
                    axes.bar(
                        position,
                        entry["raw"]["msgs_per_s"],
                        width,
                        color="white",
                        edgecolor=color,
                        hatch="///",
                        label=f"{name}, raw client" if index == 0 else None,
                    )
                    position += width
        axes.set_yscale("log")
        axes.set_xticks(range(len(workloads)), [WORKLOAD_TITLES[name] for name in workloads])
        axes.set_ylabel("messages per second (log scale)")
        axes.set_title("abe bench: throughput per workload (higher is better)")
        axes.grid(axis="y", which="major", alpha=0.3)
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        buffer = io.BytesIO()
        metadata = {"Date": None} if image_format == "svg" else {}
        figure.savefig(buffer, format=image_format, metadata=metadata, dpi=110)
    return buffer.getvalue()


def _size(payload_bytes: int) -> str:
    return f"{payload_bytes // 1024} KiB" if payload_bytes >= 1024 else f"{payload_bytes} B"


def _shapes(
    report: dict[str, Any],
) -> tuple[list[int], dict[int, dict[str, Any]], list[dict[str, Any]]]:
    """A sweep's payload sizes in order, its run on one key for each, its runs on several."""
    runs = report["runs"]
    by_size = {run["payload_bytes"]: run for run in runs if run["keys"] == 1}
    return sorted(by_size), by_size, [run for run in runs if run["keys"] > 1]


def _ratio(run: dict[str, Any] | None, workload: str) -> float | None:
    entry = (run or {}).get("workloads", {}).get(workload) or {}
    ratio = entry.get("abe_over_raw")
    return ratio["msgs_per_s"] if ratio else None


def bench_shapes(config: MkDocsConfig) -> str:
    """For each sweep file, abe / raw per workload at each payload size and key count; a
    ratio under its target (0.95 publishing, 0.9 draining) is in bold."""
    parts = []
    for report in _bench_reports(config, SHAPES_DIR):
        sizes, by_size, spread = _shapes(report)
        columns = [_size(size) for size in sizes] + [f"{run['keys']} keys" for run in spread]
        name, file = report["backend"]["name"], report["_file"]
        rows = [
            f"**{name}** ([{file}]({SHAPES_DIR}/{file}))",
            "",
            "| workload | " + " | ".join(columns) + " |",
            "|---|" + "--:|" * len(columns),
        ]
        for workload, title in WORKLOAD_TITLES.items():
            ratios = [_ratio(by_size[size], workload) for size in sizes]
            ratios += [_ratio(run, workload) for run in spread]
            if all(ratio is None for ratio in ratios):
                continue
            target = TARGETS.get(workload, DRAIN_TARGET)
            cells = [
                NONE if ratio is None else f"**{ratio:.2f}**" if ratio < target else f"{ratio:.2f}"
                for ratio in ratios
            ]
            rows.append(f"| {title} | " + " | ".join(cells) + " |")
        parts.append("\n".join(rows))
    return "\n\n".join(parts)


def shapes_chart(config: MkDocsConfig) -> bytes:
    """abe / raw against payload size, one panel per broker, one line per workload (but the
    defaults' drain, measured against the plainest loop: the table has it)."""
    reports = _bench_reports(config, SHAPES_DIR)
    colors = matplotlib.colormaps["tab10"].colors
    style = {"svg.hashsalt": "abe-docs", "svg.fonttype": "none", "font.size": 10}
    with matplotlib.rc_context(style):
        figure = Figure(figsize=(8.5, 3.2), layout="constrained")
        panels = figure.subplots(1, len(reports), sharey=True, squeeze=False)[0]
        for axes, report in zip(panels, reports, strict=True):
            sizes, by_size, _ = _shapes(report)
            for number, (workload, title) in enumerate(WORKLOAD_TITLES.items()):
                if workload in UNCHARTED:
                    continue
                points = [(at, _ratio(by_size[size], workload)) for at, size in enumerate(sizes)]
                shown = [(at, ratio) for at, ratio in points if ratio is not None]
                if shown:
                    xs, ys = zip(*shown, strict=True)
                    axes.plot(xs, ys, marker="o", color=colors[number], label=title)
            axes.axhline(1.0, color="grey", linewidth=0.8)
            axes.axhline(0.95, color="grey", linewidth=0.8, linestyle="--")
            axes.set_xticks(range(len(sizes)), [_size(size) for size in sizes], fontsize=8)
            axes.set_title(report["backend"]["name"])
            axes.set_xlabel("payload size")
        panels[0].set_ylabel("abe / raw client (msgs/s)")
        panels[-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()


# ---- the contract suite page ------------------------------------------------------------


def check_contract_page(markdown: str) -> None:
    """Fail the build when a test of the contract suite is not named on its page."""
    tests = sorted(name for name in dir(BackendContract) if name.startswith("test_"))
    missing = [name for name in tests if f"`{name}`" not in markdown]
    if missing:
        raise PluginError(
            f"abe docs: {CONTRACT_PAGE} does not describe these contract tests: "
            f"{', '.join(missing)}"
        )


# ---- mkdocs events -----------------------------------------------------------------------


def on_files(files: Files, /, *, config: MkDocsConfig) -> Files:
    """Add the benchmark chart, drawn from docs/benchmarks/*.json, as a generated file.

    Also fail when an installed backend (every package of this checkout, in `nox -s
    docs`) has no page under providers/: a new provider comes with its documentation.
    """
    missing = [
        entry.name
        for entry in available_backends()
        if files.get_file_from_path(f"providers/{entry.name}.md") is None
    ]
    if missing:
        raise PluginError(
            f"abe docs: no page for the installed backend(s) {', '.join(missing)}: add "
            f"docs/providers/<name>.md (see docs/providers/redis.md) and list it in mkdocs.yml"
        )
    files.append(File.generated(config, CHART, content=bench_chart(config)))
    files.append(File.generated(config, SHAPES_CHART, content=shapes_chart(config)))
    return files


def on_page_markdown(markdown: str, /, *, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Replace every `<!-- abe:... -->` marker with what it names."""
    if page.file.src_uri == CONTRACT_PAGE:
        check_contract_page(markdown)

    def replace(match: re.Match[str]) -> str:
        kind, arguments = match.group(1), match.group(2).split()
        if kind == "variables" and len(arguments) == 1:
            return variables_table(arguments[0])
        if kind == "capabilities" and len(arguments) == 1:
            return capabilities_list(arguments[0])
        if kind == "capability-matrix":
            return capability_matrix(arguments, page.file.src_uri)
        if kind == "public-names" and len(arguments) == 1:
            return public_names(arguments[0])
        if kind == "bench-table" and not arguments:
            return bench_table(config)
        if kind == "bench-about" and not arguments:
            return bench_about(config)
        if kind == "bench-shapes" and not arguments:
            return bench_shapes(config)
        raise PluginError(f"abe docs: {page.file.src_uri}: unknown marker {match.group(0)!r}")

    return MARKER.sub(replace, markdown)
