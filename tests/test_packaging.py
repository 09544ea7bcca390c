"""Packaging: the bundle and presets ship in the wheel and are found without the repository; no import circle
between the CLI, the workflow module and the benchmark."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("module", ["workflow.py", "benchmark.py", "keys.py"])
def test_no_module_imports_the_cli(module):
    imports = _imports(ROOT / "alr_monai" / module)
    assert not {name for name in imports if name == "alr_monai.cli" or name.startswith("alr_monai.cli.")}, imports


def test_pyproject_lists_every_package_and_data_folder():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / "alr_monai").rglob("__init__.py")}
    assert on_disk <= listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"
    assert config["package-dir"] == {"alr_monai.bundles": "bundles", "alr_monai.configs": "configs"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("src")
    # Build from a copy of the checkout, so it gets no build/ or egg-info folders.
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            target = build / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    for name in ("alr_monai", "bundles", "configs"):  # files not yet committed count too
        for source in (ROOT / name).rglob("*"):
            if source.is_file() and "__pycache__" not in source.parts:
                target = build / source.relative_to(ROOT)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(source.read_bytes())
    command = [sys.executable, "-m", "pip", "wheel", str(build), "--no-deps", "-q"]  # isolated build
    subprocess.run([*command, "-w", str(out)], check=True, capture_output=True, cwd=build)
    (found,) = out.glob("alr_monai-*.whl")
    return found


def test_wheel_holds_the_bundle_and_presets(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for config in ("train.json", "train_manifest.json", "relabel.json", "inference.json", "metadata.json"):
        assert f"alr_monai/bundles/alr_classification/configs/{config}" in names
    assert "alr_monai/bundles/alr_classification/configs/logging.conf" in names
    assert "alr_monai/bundles/alr_classification/docs/README.md" in names
    for preset in ("smoke", "ce", "coteaching", "paper_recipe"):
        assert f"alr_monai/configs/presets/{preset}.json" in names
    assert "alr_monai/configs/benchmarks/small.json" in names
    assert "alr_monai/workflow.py" in names and "alr_monai/keys.py" in names
    for page in ("query.html", "query.css", "query.js"):  # the query sheet's markup, style and script
        assert f"alr_monai/relabel/page/{page}" in names


def test_package_data_is_found_without_the_repository(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = """
import json, sys
from importlib import resources
from pathlib import Path
import alr_monai.workflow as w, alr_monai.keys as k
assert not any(Path(p).resolve() == Path(ROOT) for p in sys.path if p), sys.path
files = w.phase1_files(["smoke"], manifest=True) + [w.bundle_file("relabel.json"), str(w.benchmark_preset_file("small"))]
packaged = Path(str(resources.files("alr_monai")))
assert all(Path(f).is_relative_to(packaged) for f in files), files
assert k.config_default("train.json", "max_epochs") == json.load(open(w.bundle_file("train.json")))["max_epochs"]
from alr_monai.relabel import query_page as q
assert Path(q.__file__).is_relative_to(packaged), q.__file__
assert all(q.page_file(name).strip() for name in q.PAGE_FILES)
q.write_query_page(Path("page.html"), [{"id": "a", "given_label": 0, "predicted_label": 0}], ["no image"], ["x"])
assert "<style>" in Path("page.html").read_text() and "sheet-data" in Path("page.html").read_text()
print("ok", packaged)
""".replace("ROOT", repr(str(ROOT)))
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok") and str(site) in result.stdout


def test_source_checkout_uses_the_top_level_folders():
    from alr_monai.workflow import bundle_dir, configs_dir

    assert bundle_dir() == ROOT / "bundles" / "alr_classification"
    assert configs_dir() == ROOT / "configs"


def test_run_config_written_by_another_install_is_relocated(tmp_path):
    from alr_monai.workflow import bundle_file, load_run_config, preset_files, save_run_config

    old = ["/gone/bundles/alr_classification/configs/train.json", "/gone/configs/presets/smoke.json"]
    save_run_config(tmp_path, config_files=old, overrides={"max_epochs": 1})
    config = load_run_config(tmp_path)
    assert config["config_files"] == [bundle_file("train.json"), *preset_files("smoke")]
    assert config["overrides"] == {"max_epochs": 1} and config["relabel"] == {}
    (tmp_path / "run_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="run_config.json is unreadable"):
        load_run_config(tmp_path)
