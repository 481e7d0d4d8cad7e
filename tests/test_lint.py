"""Public API docstrings (issue #23): numpydoc sections that describe every parameter.

``ruff check`` (numpy-convention D rules on the API modules) checks the docstrings' form; this
checks their content: every parameter of every public callable is described under
*Parameters*, and whatever returns a value has *Returns*. A generator twin (``find_atoms_iter``)
may refer to its public function for the parameters they share (it describes only its own
extra ones), and has *Yields* and *Returns*. A class's
constructor parameters are described in the class docstring (the numpydoc convention).
"""

from __future__ import annotations

import inspect
import re

import pytest
from test_public_api import CALLABLES


def _sections(doc: str) -> dict[str, str]:
    """numpydoc sections of a docstring: ``{"Parameters": body, ...}`` (a title over dashes)."""
    parts = re.split(r"^([A-Z][A-Za-z ]+)\n-{3,}\n", doc, flags=re.M)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def _described(body: str) -> set[str]:
    """Names on the unindented ``name : type`` lines of a section (``a, b : int`` names two)."""
    names = set()
    for line in body.splitlines():
        if line and not line[0].isspace():
            names.update(n.strip().lstrip("*") for n in line.split(":")[0].split(","))
    return names


def test_section_parser_reads_numpydoc():
    doc = "Summary.\n\nParameters\n----------\nimage : array\n    The image.\ntile, overlap : int\n"
    doc += "    Sizes.\n\nReturns\n-------\nResult\n    What was found.\n"
    sections = _sections(doc)
    assert set(sections) == {"Parameters", "Returns"}
    assert _described(sections["Parameters"]) == {"image", "tile", "overlap"}


@pytest.mark.parametrize("name", sorted(CALLABLES))
def test_public_docstring_describes_every_parameter(name):
    func = CALLABLES[name]
    documented = func
    if name.endswith(".__init__"):  # documented by the class itself
        documented = getattr(inspect.getmodule(func), func.__qualname__.split(".")[0])
    doc = inspect.getdoc(documented) or ""
    sections = _sections(doc)
    sig = inspect.signature(func)
    params = [p for p in sig.parameters if p not in ("self", "cls")]
    twin = name.endswith("_iter") and re.search(r"same parameters as :func:`(\w+)`", doc)
    if twin:  # the parameters it shares are described by the public function
        shared = inspect.signature(CALLABLES[twin.group(1)]).parameters
        params = [p for p in params if p not in shared]
    if params:
        assert "Parameters" in sections, f"help({name}) has no Parameters section"
        missing = [p for p in params if p not in _described(sections["Parameters"])]
        assert not missing, f"help({name}) does not describe {missing}"
    if name.endswith("_iter"):
        assert "Yields" in sections, f"help({name}) does not say what it yields"
    returns_nothing = sig.return_annotation in (None, "None") or name.endswith("__init__")
    if not returns_nothing:
        assert "Returns" in sections, f"help({name}) has no Returns section"
