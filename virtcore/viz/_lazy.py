"""Helpers shared by the view modules: lazy imports of optional packages, text views.

The display packages (matplotlib, ipywidgets, IPython, networkx) are never
imported when a ``virtcore.viz`` module loads; a view function that needs one
calls :func:`require` inside its body.  A missing package is a
:class:`MissingDependencyError` that says what to install.

>>> require("math").sqrt(16)
4.0
>>> require("no_such_package_xyz")
Traceback (most recent call last):
...
virtcore.viz._lazy.MissingDependencyError: this view needs the package 'no_such_package_xyz' ...
"""

from __future__ import annotations

import html
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from virtcore.errors import VirtcoreError

#: The import name → the distribution to install, where they differ.
_DISTRIBUTIONS = {"IPython": "ipython"}


class MissingDependencyError(VirtcoreError, ImportError):
    """An optional display package (matplotlib, ipywidgets, …) is not installed."""


def require(name: str) -> ModuleType:
    """Import and return the module ``name``, or raise :class:`MissingDependencyError`.

    Parameters
    ----------
    name : str
        A module name such as ``"matplotlib.pyplot"`` or ``"ipywidgets"``.

    Returns
    -------
    module
    """
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        top = name.split(".")[0]
        dist = _DISTRIBUTIONS.get(top, top)
        raise MissingDependencyError(
            f"this view needs the package {name!r} ({exc}); install it with "
            f"`pip install {dist}` or install virtcore with its notebook dependencies"
        ) from exc


class TextView(str):
    """A string that a notebook shows as itself, optionally with a rich rendering.

    A plain ``str`` returned by a cell shows as a quoted literal with ``\\n``
    escapes; a ``TextView``'s repr is its text, so tables line up.  With
    ``html`` or ``markdown`` given, Jupyter uses that rendering instead
    (``_repr_html_`` / ``_repr_markdown_``); doctests and terminals still see
    the text.

    Parameters
    ----------
    text : str
        The plain-text rendering (the value of the string).
    html : str, optional
        An HTML rendering.
    markdown : str, optional
        A Markdown rendering.

    Examples
    --------
    >>> v = TextView("a | b", html="<b>a</b>")
    >>> v
    a | b
    >>> v == "a | b", v._repr_html_()
    (True, '<b>a</b>')
    >>> TextView("x")._repr_html_() is None
    True
    """

    html: str | None
    markdown: str | None

    def __new__(cls, text: str, *, html: str | None = None,
                markdown: str | None = None) -> TextView:
        self = super().__new__(cls, text)
        self.html = html
        self.markdown = markdown
        return self

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str | None:
        return self.html

    def _repr_markdown_(self) -> str | None:
        return self.markdown


def esc(value: object) -> str:
    """HTML-escape ``str(value)``.

    >>> esc("<hlt> & more")
    '&lt;hlt&gt; &amp; more'
    """
    return html.escape(str(value), quote=True)


def wire_stepper(slider: Any, buttons: dict[str, Any], show: Callable[[int], None],
                 n: int) -> None:
    """Connect a stepper's ⏮ ◀ ▶ ⏭ buttons and slider to ``show(step)`` over ``n`` steps.

    ``buttons`` has the keys ``first``, ``prev``, ``next`` and ``last``; each click clamps the
    step to ``0 … n-1``, moves the slider (which calls ``show``) or, at a bound, shows again.
    Shared by the trap stepper (chapter 2a) and the KVM_RUN exit stepper (walkthrough).
    """

    def go(target: Callable[[int], int]) -> Callable[[Any], None]:
        def on_click(_button: Any) -> None:
            new = min(max(target(slider.value), 0), max(0, n - 1))
            if new == slider.value:
                show(new)
            slider.value = new
        return on_click

    buttons["first"].on_click(go(lambda _i: 0))
    buttons["prev"].on_click(go(lambda i: i - 1))
    buttons["next"].on_click(go(lambda i: i + 1))
    buttons["last"].on_click(go(lambda _i: n - 1))

