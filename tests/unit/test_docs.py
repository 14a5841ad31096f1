"""The contracts in docs/ say what the code does: every setting, command, route, metric and topic
is documented there, nothing in the repository points outside it, and every relative link in
the docs and READMEs leads somewhere. Each failure names what is missing, so that a change to
the code that leaves the docs behind fails here rather than in a reader's hands."""

from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^(#{1,6}) +(.+?) *#*$", re.MULTILINE)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def doc(name: str) -> str:
    return (DOCS / name).read_text()


def prose(text: str) -> str:
    """Markdown without its fenced code blocks (a `# comment` in a shell example is no
    heading, and a `[x](y)` in SQL no link)."""
    return FENCE.sub("", text)


def sections(text: str) -> dict[str, str]:
    """Heading text -> the text under it, up to the next heading of any level."""
    text = prose(text)
    found: dict[str, str] = {}
    marks = list(HEADING.finditer(text))
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        end = following.start() if following else len(text)
        found[mark.group(2)] = text[mark.end() : end]
    return found


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation but `-` and `_` dropped,
    spaces as `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for mark in HEADING.finditer(prose(text)):
        base = slug(mark.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


# (a) settings


def test_every_setting_is_documented() -> None:
    from runtime.settings import Settings

    text = doc("settings.md")
    missing = [
        f"METERING_{name.upper()}"
        for name in Settings.model_fields
        if f"`METERING_{name.upper()}`" not in text
    ]
    assert not missing, f"docs/settings.md does not document these settings: {missing}"


def test_settings_doc_names_no_setting_that_does_not_exist() -> None:
    from runtime.settings import Settings

    fields = {f"METERING_{name.upper()}" for name in Settings.model_fields}
    # Environment variables that are no settings have a section of their own at the end.
    settings_part = doc("settings.md").split("## Not settings", 1)[0]
    stale = sorted(set(re.findall(r"METERING_[A-Z0-9_]+", settings_part)) - fields)
    assert not stale, f"docs/settings.md documents settings that do not exist: {stale}"


# (b) the CLI


def commands(
    group: click.Group, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[str, click.Command]]:
    """Every subcommand of `group`, recursively, as ("metering a b", command)."""
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        yield "metering " + " ".join(path), command
        if isinstance(command, click.Group):
            yield from commands(command, path)


def command_heading(headings: Iterable[str], name: str) -> str | None:
    """The heading of `name`'s section: "`metering send FILE`" for "metering send"."""
    wanted = re.compile(rf"`{re.escape(name)}(?: [^`]*)?`")
    return next((h for h in headings if wanted.fullmatch(h)), None)


def test_every_command_and_option_is_documented() -> None:
    from metering.cli import main

    found = sections(doc("cli.md"))
    problems = []
    for name, command in commands(main):
        heading = command_heading(found, name)
        if heading is None:
            problems.append(f"no section headed `{name} ...`")
            continue
        body = heading + found[heading]
        for param in command.params:
            if isinstance(param, click.Option):
                longs = [o for o in (*param.opts, *param.secondary_opts) if o.startswith("--")]
                if longs and not any(f"`{o}" in body for o in longs):
                    problems.append(f"{name}: option {longs[0]} is not in its section")
            elif param.human_readable_name not in body:
                problems.append(f"{name}: argument {param.human_readable_name} is not named")
    assert not problems, "docs/cli.md is behind metering.cli:\n" + "\n".join(problems)


def test_cli_doc_has_no_section_for_a_command_that_does_not_exist() -> None:
    from metering.cli import main

    names = {name for name, _ in commands(main)}
    stale = [
        heading
        for heading in sections(doc("cli.md"))
        if (m := re.fullmatch(r"`(metering(?: [a-z][a-z-]*)+)(?: [^`]*)?`", heading))
        and not any(m.group(1) == n or m.group(1).startswith(n + " ") for n in names)
    ]
    assert not stale, f"docs/cli.md has sections for commands that do not exist: {stale}"


# (c) HTTP


def app_routes(routes: Iterable[Any], prefix: str = "") -> Iterator[tuple[str, frozenset[str]]]:
    """(path, methods) of every route, looking into included routers (FastAPI wraps them in
    an object that keeps the router as `original_router`)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            context = getattr(route, "include_context", None)
            yield from app_routes(included.routes, prefix + getattr(context, "prefix", ""))
        elif hasattr(route, "path"):
            yield prefix + route.path, frozenset(getattr(route, "methods", None) or ())


def the_app() -> Any:
    from api.service import ReadModelService
    from billing.plan import load_plan
    from runtime.settings import Settings
    from server.app import create_app

    # Built, not started: no broker is needed to list its routes.
    settings = Settings(
        kafka_bootstrap="unused:1", api_host="127.0.0.1", metrics_host="127.0.0.1", api_keys=[]
    )
    return create_app(ReadModelService(settings, load_plan()))


def test_every_route_is_documented() -> None:
    from fastapi.routing import APIRoute

    text = doc("http.md")
    routes = set(app_routes(the_app().routes))
    assert any(path == "/v1/events" for path, _ in routes), "routes not found: see app_routes"
    missing = []
    for path, methods in sorted(routes):
        wanted = [f"{m} {path}" for m in sorted(methods - {"HEAD"})] or [f"`{path}"]
        missing += [w for w in wanted if w not in text]
    # Every router's own routes too, whatever the app makes of them: each module of
    # api/routes has one, and web/routes.py has the page's.
    import api.routes
    import web.routes

    modules = [
        importlib.import_module(f"api.routes.{m.name}")
        for m in pkgutil.iter_modules(api.routes.__path__)
    ]
    for router in (*(m.router for m in modules if hasattr(m, "router")), web.routes.router):
        for route in router.routes:
            if isinstance(route, APIRoute):
                verbs = sorted(route.methods or ())
                missing += [f"{v} {route.path}" for v in verbs if v != "HEAD"]
    missing = sorted({m for m in missing if m not in text})
    assert not missing, f"docs/http.md does not document these routes: {missing}"


def test_http_doc_has_no_section_for_a_route_that_does_not_exist() -> None:
    known = {(m, path) for path, methods in app_routes(the_app().routes) for m in methods}
    stale = [
        heading
        for heading in sections(doc("http.md"))
        if (m := re.match(r"`([A-Z]+) (/\S*)`", heading)) and (m.group(1), m.group(2)) not in known
    ]
    assert not stale, f"docs/http.md has sections for routes that do not exist: {stale}"


# (d) metrics


def metric_definitions() -> Iterator[tuple[str, tuple[str, ...]]]:
    """(exposed name, label names) of every metric each process defines. Reads
    prometheus-client's own `_name`, `_type` and `_labelnames` (as of 0.26): a metric with
    labels and no series yet has no other way to tell its labels."""
    from prometheus_client.metrics import MetricWrapperBase

    from observability.metrics import ReadModelMetrics, WorkerMetrics
    from observability.notifier_metrics import NotifierMetrics

    made = (WorkerMetrics, ReadModelMetrics, NotifierMetrics)
    for metrics in (kind(CollectorRegistry()) for kind in made):
        for value in vars(metrics).values():
            if isinstance(value, MetricWrapperBase):
                suffix = "_total" if value._type == "counter" else ""
                yield value._name + suffix, tuple(value._labelnames)


def test_every_metric_is_documented_with_its_labels() -> None:
    lines = doc("metrics.md").splitlines()
    defined = list(metric_definitions())
    assert len(defined) >= 20, "metric_definitions found too few metrics: see its docstring"
    problems = []
    for name, labels in defined:
        row = next((line for line in lines if f"`{name}`" in line), None)
        if row is None:
            problems.append(f"{name} is not documented")
            continue
        problems += [f"{name}: label {label} is not in its row" for label in labels
                     if f"`{label}`" not in row]  # fmt: skip
    assert not problems, "docs/metrics.md is behind observability/metrics.py:\n" + "\n".join(
        problems
    )


def test_metrics_doc_names_no_metric_that_does_not_exist() -> None:
    exposed = {name for name, _ in metric_definitions()}
    named = set(re.findall(r"\bmetering_[a-z0-9_]*[a-z0-9]", doc("metrics.md")))
    # Histograms are also read as their `_bucket`, `_sum` and `_count` series.
    stale = sorted(n for n in named if re.sub(r"_(bucket|sum|count)$", "", n) not in exposed)
    stale = [n for n in stale if n not in exposed]
    assert not stale, f"docs/metrics.md names metrics that do not exist: {stale}"


# (e) topics


def test_every_topic_changelog_and_header_is_documented() -> None:
    from runtime.topics import topics_named
    from streams.routing import FORWARDED_FROM, ORIGIN_LOG_TIME
    from streams.store import TABLES

    text = doc("topics.md")
    wanted = [f"`{name}`" for name in topics_named("").all]
    wanted += [f"-{table}-changelog`" for table in TABLES]
    wanted += [f"`{FORWARDED_FROM}`", f"`{ORIGIN_LOG_TIME}`"]
    missing = [w for w in wanted if w not in text]
    assert not missing, f"docs/topics.md does not document: {missing}"


# (f) nothing refers outside the repository


def repository_files() -> list[Path]:
    """Tracked files and new ones not ignored: what a commit of the working tree holds."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / name for name in listed.decode().split("\0") if name]


def test_no_file_refers_outside_the_repository() -> None:
    # Written in pieces, so that this file does not find itself.
    outside = ("../" + "shared", "/work/" + "shared", "DESIGN" + ".md")
    found = []
    for path in repository_files():
        if path.name == "requirements.lock" or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue  # binary
        text = data.decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            found += [f"{path.relative_to(ROOT)}:{number}: {w}" for w in outside if w in line]
    assert not found, "files that refer outside the repository (point at docs/ instead):\n" + (
        "\n".join(found)
    )


# (g) links


def markdown_files() -> list[Path]:
    """docs/, the top-level Markdown files and every folder's README (not hidden folders such
    as .venv or .pytest_cache, nor build output)."""
    files = [*sorted(ROOT.glob("*.md")), *sorted(DOCS.glob("*.md"))]
    for readme in sorted(ROOT.glob("*/README.md")):
        folder = readme.parent.name
        if not folder.startswith(".") and folder not in {"build", "node_modules"}:
            files.append(readme)
    return files


def broken_links(path: Path) -> Iterator[str]:
    for target in LINK.findall(prose(path.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:
        file_part, _, anchor = target.partition("#")
        where = (path.parent / file_part).resolve() if file_part else path
        if not where.is_relative_to(ROOT):
            yield f"{target}: outside the repository"
        elif not where.exists():
            yield f"{target}: no such file"
        elif anchor and where.suffix == ".md" and anchor not in anchors(where.read_text()):
            yield f"{target}: no heading #{anchor} in {where.relative_to(ROOT)}"


def test_every_relative_link_resolves() -> None:
    files = markdown_files()
    assert DOCS / "README.md" in files and ROOT / "README.md" in files
    broken = [
        f"{path.relative_to(ROOT)}: {problem}" for path in files for problem in broken_links(path)
    ]
    assert not broken, "links that lead nowhere:\n" + "\n".join(broken)


def test_the_index_links_every_page_and_the_readme_links_the_index() -> None:
    index = LINK.findall(doc("README.md"))
    unlisted = [p.name for p in sorted(DOCS.glob("*.md")) if p.name not in (*index, "README.md")]
    assert not unlisted, f"docs/README.md does not link these pages: {unlisted}"
    readme = LINK.findall((ROOT / "README.md").read_text())
    assert any(t.startswith("docs/") for t in readme), "README.md does not link docs/"
