"""pyproject's dependency floors: no lower than the first release that has what the code uses, and the releases that
README's "Oldest versions checked" note installs to test them (its install line pins each floor, so a raised floor
that is not checked again, or a note that names other versions, fails here)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (name in pyproject, the first release that has it, what the code uses from it, the module that uses it)
NEEDED = [
    ("lightning", (2, 6), "EarlyStoppingReason", "src/dynametric/engine/callbacks.py"),
    ("pillow", (9, 1), "Image.Resampling", "src/dynametric/data/transforms.py"),
    # Pillow 9.1's getexif() of a TIFF after load() reads its closed file: every TIFF failed to load
    ("pillow", (9, 2), "getexif", "src/dynametric/data/base.py"),
]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _floors() -> dict[str, tuple[int, ...]]:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M)
    assert block is not None
    floors = {}
    for name, version in re.findall(r'"([A-Za-z0-9_.-]+)>=([0-9.]+)"', block.group(1)):
        floors[name.lower()] = _version(version)
    assert {"torch", "lightning", "pillow", "timm", "matplotlib"} <= set(floors)
    return floors


def _checked() -> dict[str, tuple[int, ...]]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    note = readme.split("**Oldest versions checked.**", 1)[1].split("\n\n", 3)
    command = next(part for part in note if "pip install" in part)
    return {name.lower(): _version(version) for name, version in re.findall(r"([A-Za-z0-9_.-]+)==([0-9.]+)", command)}


def test_each_floor_has_what_the_code_uses_from_it() -> None:
    floors = _floors()
    for name, first, used, module in NEEDED:
        assert floors[name] >= first, f"{name}>={floors[name]} but {module} uses {used} (from {first} on)"
        assert used.split(".")[-1] in (ROOT / module).read_text(encoding="utf-8"), (name, used, module)


def test_the_readme_names_the_floors_it_checked() -> None:
    floors, checked = _floors(), _checked()
    assert set(floors) <= set(checked), f"floors without a checked release: {sorted(set(floors) - set(checked))}"
    for name, floor in floors.items():
        assert checked[name][:len(floor)] == floor, f"pyproject: {name}>={floor}; README checked {checked[name]}"


def test_the_readme_says_what_the_same_numbers_depend_on() -> None:
    """The synthetic images are drawn with Pillow, and Pillow 9.3 and 13.0 draw about 14 % of them differently."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "The same seed gives the same numbers on the same machine with the same versions of torch and Pillow" \
        in readme.replace("\n", " ")
