"""The text an encoder sees for one app. One function, shared by catalogue builds and request-time encoding,
so that a new app is encoded exactly like the catalogue was."""

from __future__ import annotations

from appsim.domain import AppMetadata


def app_text(app: AppMetadata, *, include_category: bool = True) -> str:
    """``"<name>. <category>. <description>"`` (category left out when ``include_category`` is False or
    missing); whitespace collapsed. Never empty for an app with a name."""
    parts = [app.name or ""]
    if include_category and app.category:
        parts.append(app.category)
    if app.description:
        parts.append(app.description)
    text = ". ".join(p.strip() for p in parts if p and p.strip())
    return " ".join(text.split())
