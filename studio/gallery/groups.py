"""Groups of generations (sweeps, comparisons and other studies) in the gallery: the part of the
:class:`studio.gallery.service.Gallery` facade that writes and reads ``GenerationGroup`` rows."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from studio.gallery.models import Generation, GenerationGroup


def json_safe(params: dict[str, Any]) -> dict[str, Any]:
    """Copy of ``params`` that a JSON column can store (odd values become strings)."""
    return json.loads(json.dumps(params, default=str))


class GroupsMixin:
    """Group methods of the gallery; the class it is mixed into provides ``session()``."""

    def create_group(self, *, kind: str, title: str, model_id: str, prompt: str, data: dict[str, Any]) -> int:
        """A new group (status ``running``); members join through ``fields={"group_id": id}``."""
        with self.session() as session:
            group = GenerationGroup(kind=kind, title=title, model_id=model_id, prompt=prompt,
                                    data=json_safe(data), status="running")
            session.add(group)
            session.flush()
            return group.id

    def update_group(self, group_id: int, *, data: dict[str, Any] | None = None, status: str | None = None) -> None:
        """Replace a group's data and/or status (KeyError for an unknown id)."""
        with self.session() as session:
            group = session.get(GenerationGroup, group_id)
            if group is None:
                raise KeyError(group_id)
            if data is not None:
                group.data = json_safe(data)
            if status is not None:
                group.status = status

    def get_group(self, group_id: int) -> GenerationGroup | None:
        """A detached group row or None."""
        with self.session() as session:
            return session.get(GenerationGroup, group_id)

    def groups(self, kind: str | None = None, limit: int = 50) -> list[GenerationGroup]:
        """Newest groups first (detached)."""
        with self.session() as session:
            stmt = select(GenerationGroup).order_by(GenerationGroup.id.desc()).limit(limit)
            if kind is not None:
                stmt = stmt.where(GenerationGroup.kind == kind)
            return list(session.scalars(stmt))

    def group_members(self, group_id: int) -> list[Generation]:
        """The group's generations that still exist, oldest first (detached)."""
        with self.session() as session:
            stmt = select(Generation).where(Generation.group_id == group_id).order_by(Generation.id)
            return list(session.scalars(stmt))
