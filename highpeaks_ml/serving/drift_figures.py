"""Served inputs against training: figures and the HTML section ``models report`` adds.

The evaluation report stored with a version (``training/report.py``) is an
immutable artifact made at training time; what a version is asked while it
serves is only known to the server. When GetVersionReport sends the HTML page,
the server adds (to the bytes it sends, never to the stored artifact) a
"Served inputs vs training" section made here from the version's
``DriftReport`` (``serving/drift.py``): per feature, for at most
``MAX_FEATURES`` features (highest PSI first, features with served rows only),
a bar chart of the training and served proportions over the same bins
(numeric: the training profile's bin edges; categorical: the kept categories,
"other", missing), with the PSI in the title and the rows seen and the window
in the caption. Without traffic the section is one line saying so.

Drawn with the stored report's own figure helpers (matplotlib's Agg backend,
bare ``Figure`` objects, ``FIG_WIDTH`` x ``FIG_HEIGHT`` pixels) and embedded
as base64 ``data:`` URLs, so the page stays self-contained under the stored
page's Content-Security-Policy (no network, no script). Rendering takes a
fraction of a second per feature: callers run it off the event loop.
"""

from __future__ import annotations

import base64
import html
import math

import numpy as np

from highpeaks_ml.serving.drift import DriftReport, FeatureDrift

#: Most features drawn (highest PSI first), so the page and the call stay small.
MAX_FEATURES = 12
#: Prefix of a served-vs-training figure's name (``served-<feature>``).
FIGURE_PREFIX = "served-"
#: The section's heading (tests and readers look for it).
HEADING = "Served inputs vs training"


def shown(report: DriftReport, most: int = MAX_FEATURES) -> list[FeatureDrift]:
    """The features the section draws: those with served rows, highest PSI first."""
    return [f for f in report.features if f.rows > 0 and not math.isnan(f.psi)][:most]


def _psi_text(f: FeatureDrift) -> str:
    return f"PSI {f.psi:.3f} ({f.level})"


def feature_png(f: FeatureDrift) -> bytes:
    """One feature's bar chart: training against served proportions over the same bins."""
    # The stored report's helpers: the same backend, size and DPI.
    from highpeaks_ml.training.report import _figure, _png

    fig, ax = _figure()
    x = np.arange(len(f.bins))
    width = 0.4
    ax.bar(x - width / 2, f.training, width, label="training")
    ax.bar(x + width / 2, f.served, width, label="served")
    many = len(f.bins) > 6
    ax.set_xticks(x, list(f.bins), rotation=45 if many else 0, ha="right" if many else "center")
    ax.tick_params(axis="x", labelsize=8)
    ax.set_ylabel("proportion of rows")
    ax.set_xlabel("bin (training profile)" if f.type == "numeric" else "category")
    ax.set_title(f"{f.name}: {_psi_text(f)}")
    ax.legend(loc="best")
    return bytes(_png(fig))


def _caption(f: FeatureDrift, report: DriftReport) -> str:
    return (
        f"{f.name} ({f.type}): {_psi_text(f)}; {f.rows} rows served in the last"
        f" {report.window_s:g} s on this server, against {report.training_rows} training rows."
    )


def note_html(text: str) -> str:
    """The one-line section of a page without served traffic (or without profiling)."""
    return f'<h2>{HEADING}</h2>\n<p class="served-note">{html.escape(text)}</p>'


def section_html(report: DriftReport) -> str:
    """The "Served inputs vs training" section (``note_html`` when no rows were seen)."""
    features = shown(report)
    if report.rows <= 0 or not features:
        return note_html(
            f"No served traffic was seen yet for this version on this server (window:"
            f" the last {report.window_s:g} s)."
        )
    from highpeaks_ml.training.report import FIG_HEIGHT, FIG_WIDTH

    more = len([f for f in report.features if f.rows > 0])
    parts = [
        f"<h2>{HEADING}</h2>",
        f"<p>Live on this server when this page was sent (not part of the stored report):"
        f" {report.rows} rows served in the last {report.window_s:g} s, against the"
        f" {report.training_rows}-row training profile. Proportions per bin of the training"
        " profile (missing values last); PSI under 0.1: no significant shift, 0.1 to 0.25:"
        " moderate, above 0.25: significant."
        + (
            f" The {len(features)} features with the highest PSI of {more} are drawn."
            if more > len(features)
            else ""
        )
        + "</p>",
    ]
    for f in features:
        data = base64.b64encode(feature_png(f)).decode()
        title = f"{HEADING}: {f.name}"
        parts.append(
            f'<figure class="served"><img alt="{html.escape(title)}" width="{FIG_WIDTH}"'
            f' height="{FIG_HEIGHT}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(_caption(f, report))}</figcaption></figure>"
        )
    return "\n".join(parts)


def add_section(page: bytes, section: str) -> bytes:
    """The stored page with ``section`` inserted before its ``</body>`` (appended if none)."""
    text = page.decode()
    at = text.rfind("</body>")
    if at < 0:
        return (text + "\n" + section + "\n").encode()
    return (text[:at] + section + "\n" + text[at:]).encode()


def figure_feature(figure: str, report: DriftReport) -> FeatureDrift | None:
    """The feature a ``served-<feature>`` figure name asks for (None: no such feature)."""
    if not figure.startswith(FIGURE_PREFIX):
        return None
    name = figure[len(FIGURE_PREFIX) :]
    return next((f for f in report.features if f.name == name), None)


__all__ = [
    "FIGURE_PREFIX",
    "HEADING",
    "MAX_FEATURES",
    "add_section",
    "feature_png",
    "figure_feature",
    "note_html",
    "section_html",
    "shown",
]
