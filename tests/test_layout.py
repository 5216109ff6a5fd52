"""The tree is the architecture (docs/architecture.md): every import statement of the package is checked against the
folder rules there, and the Hub code against what transformers' remote-code loader allows."""

import ast
import sys
from pathlib import Path

import pytest
from transformers.dynamic_module_utils import check_imports, get_imports

from transformers_qwen3.checkpoint.hub_folder import HUB_FILES, REMOTE_DIR

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "transformers_qwen3"
CONVERT = REPO / "convert"  # installed as transformers_qwen3.convert

# What each part may import of the package besides itself: docs/architecture.md, one paragraph per folder.
FOUNDATION = {"errors", "outputs"}
MAY_IMPORT = {
    "remote": set(),
    "errors": set(),
    "outputs": {"errors"},
    "formats": {"errors"},
    "convert": {"formats"} | FOUNDATION,
    "checkpoint": {"remote", "formats"} | FOUNDATION,
    "inference": {"remote", "checkpoint", "formats"} | FOUNDATION,
    "training": {"remote", "checkpoint", "formats"} | FOUNDATION,
    "runtime": {"remote", "checkpoint", "formats", "convert"} | FOUNDATION,
    "export": {"remote", "checkpoint", "formats", "convert", "runtime"} | FOUNDATION,
    "demo": {"remote", "checkpoint", "formats", "convert", "runtime", "training", "inference", "export"} | FOUNDATION,
    # demo: its cache root (one home); compress: the budget (hw probe, KV-cache formula, sizes)
    "serve": {"remote", "convert", "runtime", "demo", "compress"} | FOUNDATION,
    "compress": {"remote", "checkpoint", "formats", "convert", "runtime"} | FOUNDATION,
    # the package root registers the remote classes and exposes the Pipeline; the CLI names verbs by string
    "__init__": {"remote", "inference"},
    "cli": {"remote"} | FOUNDATION,
    # the vLLM plugin: our checkpoint key names and the processor's token-count helper (docs/vllm.md)
    "vllm_plugin": {"remote", "formats"} | FOUNDATION,
}


def modules():
    """(path, dotted module name) of every Python file of the installed package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ("transformers_qwen3",) + path.relative_to(PACKAGE).with_suffix("").parts
    for path in sorted(CONVERT.rglob("*.py")):
        yield path, ("transformers_qwen3", "convert") + path.relative_to(CONVERT).with_suffix("").parts


def part(module: tuple) -> str:
    """The folder (or top-level module) a module belongs to: 'convert', 'remote', 'errors', '__init__' ..."""
    return module[1] if len(module) > 1 else "__init__"


def imported(path: Path, module: tuple) -> set[tuple]:
    """The package modules ``path`` imports, relative imports resolved, at any depth of the file."""
    package = module[:-1] if module[-1] != "__init__" else module[:-1]
    if path.name == "__init__.py":
        package = module[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                found.add(base + tuple(node.module.split(".") if node.module else ()))
            elif node.module and node.module.split(".")[0] == "transformers_qwen3":
                found.add(tuple(node.module.split(".")))
        elif isinstance(node, ast.Import):
            found |= {tuple(a.name.split(".")) for a in node.names if a.name.split(".")[0] == "transformers_qwen3"}
    return found


def test_every_part_is_in_the_rules():
    parts = {part(m) for _, m in modules()}
    assert parts == set(MAY_IMPORT), f"new or missing parts: {sorted(parts ^ set(MAY_IMPORT))}"


@pytest.mark.parametrize("path,module", list(modules()), ids=lambda x: str(x) if isinstance(x, Path) else None)
def test_imports_point_one_way(path, module):
    me = part(module)
    for target in imported(path, module):
        if part(target) == me:
            continue
        if target == ("transformers_qwen3",) and me in ("runtime",):
            # `import transformers_qwen3` registers the Auto classes: the remote classes by another name
            continue
        assert part(target) in MAY_IMPORT[me], (
            f"{path.relative_to(REPO)} imports {'.'.join(target)}: {me} may import only {sorted(MAY_IMPORT[me])}"
        )


@pytest.mark.parametrize("name", HUB_FILES)
def test_hub_files_import_only_what_remote_code_allows(name):
    # transformers' own scanner: the imports it finds must be installed packages it can check (torch, transformers)
    # or the standard library; sibling files are imported relatively, flat, and exist.
    path = REMOTE_DIR / name
    found = set(get_imports(path))
    allowed = {"torch", "transformers"} | set(sys.stdlib_module_names)
    assert found <= allowed, f"{name} imports {sorted(found - allowed)}"
    for sibling in check_imports(path):  # raises ImportError if a required package is missing
        assert f"{sibling}.py" in HUB_FILES, f"{name} imports {sibling}, which does not ship"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            assert node.level == 1 and node.module and "." not in node.module, f"{name}: {ast.unparse(node)}"
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            assert not any(n.startswith("transformers_qwen3") for n in names), f"{name}: {ast.unparse(node)}"


def test_the_hub_folder_ships_every_code_file():
    assert set(HUB_FILES) == {p.name for p in REMOTE_DIR.glob("*.py")} - {"__init__.py"}
    assert {"configuration_qwen3_multimodal.py", "modeling_qwen3_multimodal.py"} <= set(HUB_FILES)


def test_no_module_imports_a_test_module():
    tests = {p.stem for p in (REPO / "tests").glob("test_*.py")}
    for folder in ("bench", "tests", "src", "convert"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                hit = [n for n in names if n.split(".")[0] in tests]
                assert not hit, f"{path.relative_to(REPO)} imports the test module {hit[0]}: share via tests/helpers/"
