"""Sphinx configuration of the unlearnx API reference (``sphinx-build -W -b html docs docs/_build/html``)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

project = "unlearnx"
author = "unlearnx authors"
copyright = "2026, unlearnx authors"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax"]

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "imported-members": True, "undoc-members": True}


exclude_patterns = ["_build"]
html_theme = "alabaster"
html_title = "unlearnx API reference"

# ``Attributes:`` sections as ``:ivar:`` fields: dataclass and NamedTuple fields are then described once (as
# fields of the class), not twice (the section's ``.. attribute::`` and autodoc's member entry).
napoleon_use_ivar = True

# Modules whose docstrings are still being rewritten by other work (issue 17) write |x| for absolute values
# and set sizes, which reStructuredText reads as substitution references. Until they are rewritten, their
# bars are escaped here; only these modules are touched, the rest must be valid reStructuredText.
_PLAIN_BAR_MODULES = ("unlearnx.eval.", "unlearnx.data.", "unlearnx.continual.", "unlearnx.models.")


def _escape_bars(app, what, name, obj, options, lines):
    module = getattr(obj, "__module__", None) or name
    if what == "module":
        module = name
    if not (module + ".").startswith(_PLAIN_BAR_MODULES):
        return
    for i, line in enumerate(lines):
        lines[i] = line.replace("\\|", "|").replace("|", "\\|")


def setup(app):
    app.connect("autodoc-process-docstring", _escape_bars, priority=400)
