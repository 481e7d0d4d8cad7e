"""Every name the README and the design notes tell a user to import or call exists."""

import importlib
import re
from pathlib import Path

import pytest

import napari_microml as mm

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "design.md"]
FILE_SUFFIXES = {"py", "md", "json", "csv", "tif", "tiff", "pt", "yaml", "zarr", "png", "txt"}


def _text():
    return "\n".join(p.read_text(encoding="utf-8") for p in DOCS if p.exists())


def test_imports_shown_in_the_docs_resolve():
    imports = re.findall(r"^from (napari_microml[\w.]*) import ([\w, ]+)$", _text(), re.M)
    assert imports, "the README shows no import: the pattern no longer matches it"
    missing = [
        f"{mod}.{name.strip()}"
        for mod, names in imports
        for name in names.split(",")
        if not hasattr(importlib.import_module(mod), name.strip())
    ]
    assert not missing, missing


def test_api_calls_and_dotted_names_in_the_docs_exist():
    text = _text()
    calls = sorted(set(re.findall(r"\bmm\.([a-z_]\w*)\(", text)))
    assert calls and not [c for c in calls if not hasattr(mm, c)]
    missing, checked = [], []
    # `package.module.attribute` references, e.g. `spectra.preprocess.auto_window`
    for dotted in sorted(set(re.findall(r"`((?:[a-z_]+\.){1,3}[a-z_]\w*)`", text))):
        parts = dotted.split(".")
        if parts[-1] in FILE_SUFFIXES:
            continue
        for cut in range(len(parts) - 1, 0, -1):
            try:
                obj = importlib.import_module("napari_microml." + ".".join(parts[:cut]))
            except ImportError:
                continue
            for attr in parts[cut:]:
                obj = getattr(obj, attr, None)
            checked.append(dotted)
            if obj is None:
                missing.append(dotted)
            break
    assert len(checked) > 10 and not missing, missing


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_exist(doc):
    assert doc.exists()
