"""scripts/check_imports.py: the package has no import cycle and no upward import, and the
check would see one."""

from __future__ import annotations

from pathlib import Path

from _scripts import load_script

ROOT = Path(__file__).resolve().parents[2]


def test_the_package_imports_only_downwards_without_cycles() -> None:
    assert load_script("check_imports").problems(ROOT / "src") == []


def test_every_module_is_in_a_layer() -> None:
    check = load_script("check_imports")
    for name in check.graph(ROOT / "src"):
        check.layer(name)  # exits naming the module otherwise


def test_a_cycle_and_an_upward_import_are_reported(tmp_path: Path) -> None:
    pkg = tmp_path / "pimpic"
    (pkg / "data").mkdir(parents=True)
    (pkg / "protocol").mkdir()
    for init in (pkg, pkg / "data", pkg / "protocol"):
        (init / "__init__.py").write_text("")
    (pkg / "data" / "a.py").write_text("def f():\n    from pimpic.protocol import b\n")
    (pkg / "protocol" / "b.py").write_text("from pimpic.data.a import f\n")
    (pkg / "data" / "typed.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pimpic.protocol import b\n")
    check = load_script("check_imports")
    low, high = check.layer("pimpic.data.a"), check.layer("pimpic.protocol.b")
    assert check.problems(tmp_path) == [
        "cycle: pimpic.data.a ↔ pimpic.protocol.b",
        f"upward import: pimpic.data.a (layer {low}) imports pimpic.protocol.b (layer {high})"]


def test_a_method_module_loading_a_registry_user_is_reported(tmp_path: Path) -> None:
    """The registry imports the method modules by name (no import statement shows it): a config
    that looks the methods up must not be loaded by them, except for type checking."""
    pkg = tmp_path / "pimpic"
    methods = pkg / "pretraining" / "methods"
    methods.mkdir(parents=True)
    for init in (pkg, pkg / "pretraining", methods):
        (init / "__init__.py").write_text("")
    (pkg / "registry.py").write_text("def discover():\n    pass\n")
    (pkg / "pretraining" / "config.py").write_text("from pimpic import registry\n")
    (pkg / "pretraining" / "helper.py").write_text("from pimpic.pretraining import config\n")
    (methods / "typed.py").write_text(
        "from typing import TYPE_CHECKING\nfrom pimpic.registry import discover\n"
        "if TYPE_CHECKING:\n    from pimpic.pretraining.config import x\n")
    check = load_script("check_imports")
    assert check.problems(tmp_path) == []
    (methods / "bad.py").write_text("from pimpic.pretraining.helper import y\n")
    assert check.problems(tmp_path) == [
        "discovery re-enters: pimpic.pretraining.config imports pimpic.registry and is loaded "
        "by pimpic.pretraining.methods"]
