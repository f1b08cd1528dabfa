"""The package's shape: what the wheel installs, and which way imports may run.

Two facts docs/architecture.md states and a change could quietly break:

- every package folder is in setup.cfg's ``packages`` under the one import name,
  ``eventrouter`` (a folder left out would be missing from the wheel, while the
  editable install of the test venv still finds it);
- the layers run one way: the core (``router_core/``, imported as ``eventrouter``)
  never imports the dashboard, the snippet origin, the built-in plugins or sinks, and
  inside the core a package imports only from the layers below it. An upward import
  fails :func:`test_imports_run_down_the_layers` with the module, line and import.
"""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Folder → import name (setup.cfg ``package_dir``).
FOLDERS = {
    "router_core": "eventrouter",
    "admin": "eventrouter.admin",
    "plugins": "eventrouter.plugins",
    "sinks": "eventrouter.sinks",
    "snippet": "eventrouter.snippet",
}

#: The extension folders: built on the core, never imported by it.
EXTENSIONS = {"admin", "plugins", "sinks", "snippet"}

#: The core's layers, top first. A module may import from its own area and from any
#: area of a lower layer; areas in one layer do not import one another. The areas are
#: the subpackages of router_core/ and its top-level modules.
LAYERS: list[set[str]] = [
    {"cli", "asgi", "testing"},  # entry points: ``eventrouter ...``, ``eventrouter.asgi:app``,
    # and ``eventrouter.testing`` (the sink conformance kit, a pytest plugin)
    {"server"},  # gunicorn and uvicorn around the app
    {"app"},  # the Falcon app: wires the edge, the bus and the plugins' routes together
    {"edge"},  # HTTP in: ingest, limits, rate limits, auth, the query API
    {"privacy", "queue", "quality"},  # suppression and erasure; the broker, spool and
    # worker; tracking plans and the ``plan`` and ``violations`` commands
    {"bus", "logs"},  # stages and sinks (a sink may bring a store); log lines
    {"store"},  # the store interface, the query layer, SQL erase and admin tables
    {"events", "client"},  # the wire model and commands; the batch API client
    {"metrics"},  # Prometheus collectors (multiprocess files in the data directory)
    {"files"},  # the data directory and private files
    {"scaffold"},  # ``eventrouter new-plugin``: package templates, nothing of the runtime
    {"config"},  # the configuration schema (names the JSON columns scrubbing may reach)
    {"scan"},  # the byte scans of a request body: the compiled ``_scan`` or pure Python
    {"columns", "errors", "health", "redact", "__init__"},  # the foundation
]

#: Imports between extension folders that are allowed, and why.
EXTENSION_IMPORTS = {
    ("admin", "snippet"): "the Sources page shows each source's loader snippet",
}


def layer_of(area: str) -> int:
    for index, areas in enumerate(LAYERS):
        if area in areas:
            return index
    raise AssertionError(f"router_core area {area!r} is in no layer of test_packaging.py")


def modules() -> list[tuple[str, Path]]:
    """Every module of the distribution: (folder area, path)."""
    found = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found.append((folder, path))
    return found


def area_of_module(folder: str, path: Path) -> str:
    """``edge`` for router_core/edge/ingest.py, ``app`` for router_core/app.py, the folder
    for an extension."""
    if folder != "router_core":
        return folder
    relative = path.relative_to(ROOT / folder)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import of an eventrouter module in ``path``,
    including those under ``if TYPE_CHECKING`` and inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            found += [(node.lineno, name) for name in [node.module, *names]]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "eventrouter"]


def target_area(name: str) -> tuple[str, str] | None:
    """The (folder, area) an ``eventrouter...`` import name lands in, or None when the
    name is an attribute rather than a module (``eventrouter.__version__``)."""
    parts = name.split(".")
    if len(parts) == 1:
        return ("router_core", "__init__")
    if parts[1] in EXTENSIONS:
        return (parts[1], parts[1])
    core = ROOT / "router_core"
    if (core / parts[1]).is_dir() or (core / f"{parts[1]}.py").exists():
        return ("router_core", parts[1])
    return ("router_core", "__init__")  # ``from eventrouter import __version__``


def test_every_package_folder_is_in_setup_cfg() -> None:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    listed = set(parser["options"]["packages"].split())
    mapping = dict(
        line.split("=", 1) for line in parser["options"]["package_dir"].split("\n") if line
    )
    mapping = {key.strip(): value.strip() for key, value in mapping.items()}
    assert {name: mapping[name] for name in FOLDERS.values()} == {
        import_name: folder for folder, import_name in FOLDERS.items()
    }
    expected = set()
    for folder, import_name in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            expected.add(".".join([import_name, *relative]))
    assert sorted(expected - listed) == [], "package folders missing from setup.cfg packages"
    assert sorted(listed - expected) == [], "setup.cfg lists packages that are not folders"


def test_every_core_area_is_in_a_layer() -> None:
    areas = {area_of_module(folder, path) for folder, path in modules() if folder == "router_core"}
    for area in sorted(areas):
        layer_of(area)


def upward_imports() -> list[str]:
    problems = []
    for folder, path in modules():
        source = area_of_module(folder, path)
        seen = set()
        for line, name in imported(path):
            target = target_area(name)
            if target is None or (line, target) in seen:
                continue  # ``from eventrouter.admin import views``: one finding, not two
            seen.add((line, target))
            target_folder, area = target
            where = f"{path.relative_to(ROOT)}:{line} imports {name}"
            if folder == "router_core":
                if target_folder in EXTENSIONS:
                    problems.append(f"{where} (the core imports {target_folder}/)")
                elif area != source and layer_of(area) <= layer_of(source):
                    problems.append(f"{where} ({area} is not below {source})")
            elif (
                target_folder in EXTENSIONS
                and target_folder != folder
                and (folder, target_folder) not in EXTENSION_IMPORTS
            ):
                problems.append(f"{where} ({folder}/ imports {target_folder}/)")
    return problems


def test_imports_run_down_the_layers() -> None:
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch) -> None:
    """The check itself: an import of the dashboard from the bus is found."""
    fake = tmp_path / "router_core" / "bus"
    fake.mkdir(parents=True)
    (fake / "leak.py").write_text(
        "from eventrouter.admin import views\nimport eventrouter.edge.ingest\n"
    )
    monkeypatch.setattr(f"{__name__}.modules", lambda: [("router_core", fake / "leak.py")])
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    (tmp_path / "router_core" / "edge").mkdir()
    problems = upward_imports()
    assert len(problems) == 2, problems
    assert "the core imports admin/" in problems[0]
    assert "edge is not below bus" in problems[1]


@pytest.mark.parametrize("plugin", ["admin", "snippet"])
def test_front_ends_are_built_in_plugins(plugin) -> None:
    """The dashboard and the snippet origin mount their routes through the plugin hook,
    registered by entry point like any third-party plugin."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    group = dict(
        (key.strip(), value.strip())
        for key, value in (
            line.split("=", 1)
            for line in parser["options.entry_points"]["eventrouter"].split("\n")
            if line
        )
    )
    assert plugin in group
    module = group[plugin]
    source = ROOT / module_path(module)
    assert "def eventrouter_register_routes" in source.read_text()


def module_path(module: str) -> Path:
    """router_core/..., admin/... path of an ``eventrouter.*`` module name."""
    parts = module.split(".")
    if parts[1] in EXTENSIONS:
        base, rest = Path(parts[1]), parts[2:]
    else:
        base, rest = Path("router_core"), parts[1:]
    path = base.joinpath(*rest)
    return path / "__init__.py" if (ROOT / path).is_dir() else path.with_suffix(".py")


def test_the_compiled_modules_are_optional_extensions() -> None:
    """setup.py builds router_core/_scan.c as ``eventrouter._scan`` and sinks/_native.c as
    ``eventrouter.sinks._native``, and may fail to: a machine without a C compiler still
    installs (eventrouter.scan's and the ClickHouse sink's pure-Python code runs).
    tests/integration/test_packaging_build.py builds them both ways."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    extensions = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Extension"
    ]
    sources = {
        "eventrouter._scan": "router_core/_scan.c",
        "eventrouter.sinks._native": "sinks/_native.c",
    }
    assert [ast.literal_eval(e.args[0]) for e in extensions] == list(sources)
    for extension in extensions:
        name, files = (ast.literal_eval(arg) for arg in extension.args)
        assert files == [sources[name]]
        assert {k.arg: ast.literal_eval(k.value) for k in extension.keywords} == {"optional": True}
        assert (ROOT / sources[name]).is_file()
    # An edit of a C source or of setup.py rebuilds the modules in the venv (make).
    makefile = (ROOT / "Makefile").read_text()
    for stamp in ("$(STAMP):", "$(TEST_STAMP):"):
        (rule,) = [line for line in makefile.splitlines() if line.startswith(stamp)]
        assert {"setup.py", *sources.values()} <= set(rule.split()), rule
    # The editable install builds them in place: never committed, never sent to docker.
    assert "*.so" in (ROOT / ".gitignore").read_text().split()
    assert "**/*.so" in (ROOT / ".dockerignore").read_text().split()
