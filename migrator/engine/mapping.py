"""Where each source folder goes on the target: a pure function of both folder lists and the config.

Order of rules, first match wins for the longest matching ancestor of a folder:
1. an explicit rename from [mapping].folders (keys as the source shows them, values as the target should);
2. a special-use role (INBOX, \\Sent, \\Drafts, \\Trash, \\Junk, \\Archive), told by the server or, when it
   says nothing, by well-known names ("Sent Items", "Deleted Messages", "Spam", ...): it lands in the
   target's folder of the same role, whatever that is called there;
3. otherwise the same names, joined with the target's separator. A name that contains the target's
   separator cannot be represented as one level there: the separator inside it becomes "_".
Children follow their parent: "Sent.2019" goes to "Sent Items/2019" when "Sent" maps to "Sent Items".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from migrator.model import FolderInfo, Role

WELL_KNOWN_NAMES: Mapping[str, Role] = {
    "inbox": Role.INBOX,
    "sent": Role.SENT, "sent items": Role.SENT, "sent messages": Role.SENT, "sent mail": Role.SENT,
    "drafts": Role.DRAFTS, "draft": Role.DRAFTS,
    "trash": Role.TRASH, "deleted items": Role.TRASH, "deleted messages": Role.TRASH, "bin": Role.TRASH,
    "junk": Role.JUNK, "junk email": Role.JUNK, "junk e-mail": Role.JUNK, "spam": Role.JUNK,
    "archive": Role.ARCHIVE, "archives": Role.ARCHIVE,
}
DEFAULT_ROLE_NAMES: Mapping[Role, str] = {
    Role.INBOX: "INBOX", Role.SENT: "Sent", Role.DRAFTS: "Drafts", Role.TRASH: "Trash", Role.JUNK: "Junk",
    Role.ARCHIVE: "Archive",
}


@dataclass(frozen=True)
class FolderRoute:
    source: FolderInfo
    target_path: str
    role: Role | None


def effective_role(folder: FolderInfo) -> Role | None:
    """The server's role, or a well-known top-level name's (also under a Courier-style "INBOX." prefix)."""
    if folder.role is not None:
        return folder.role
    parts = folder.parts
    if len(parts) == 2 and parts[0].upper() == "INBOX":
        parts = parts[1:]
    return WELL_KNOWN_NAMES.get(parts[0].lower()) if len(parts) == 1 else None


def _is_within(path: str, ancestor: str, separator: str | None) -> bool:
    return path == ancestor or (separator is not None and path.startswith(ancestor + separator))


def is_excluded(folder: FolderInfo, excluded: Sequence[str]) -> bool:
    """Excluded by name (and with it every child folder)."""
    return any(_is_within(folder.path, name, folder.separator) for name in excluded)


def _role_paths(target: Sequence[FolderInfo]) -> dict[Role, str]:
    paths: dict[Role, str] = {}
    for folder in sorted(target, key=lambda f: (f.role is None, f.path)):
        role = effective_role(folder)
        if role is not None and role not in paths:
            paths[role] = folder.path
    return paths


def copied_folders(source: Sequence[FolderInfo], excluded: Sequence[str]) -> list[FolderInfo]:
    """The source folders a pass copies: the selectable ones not excluded, in source order."""
    return [folder for folder in source if folder.selectable and not is_excluded(folder, excluded)]


def route_folders(source: Sequence[FolderInfo], target: Sequence[FolderInfo], target_separator: str | None,
                  renames: Mapping[str, str], excluded: Sequence[str]) -> list[FolderRoute]:
    """One route per folder copied_folders names, in source order."""
    role_paths = _role_paths(target)
    sep = target_separator or "/"
    by_path = {f.path: f for f in source}
    routes = []
    for folder in copied_folders(source, excluded):
        parts = folder.parts
        for depth in range(len(parts), 0, -1):
            ancestor_path = (folder.separator or "").join(parts[:depth])
            head = _head_target(by_path.get(ancestor_path), ancestor_path, renames, role_paths)
            if head is not None:
                break
        else:
            head, depth = None, 0
        tail = [part.replace(sep, "_") for part in parts[depth:]]
        target_path = sep.join(([head] if head is not None else []) + tail)
        routes.append(FolderRoute(folder, target_path, effective_role(folder) if depth == len(parts) else None))
    return routes


def _head_target(ancestor: FolderInfo | None, path: str, renames: Mapping[str, str],
                 role_paths: Mapping[Role, str]) -> str | None:
    if path in renames:
        return renames[path]
    role = effective_role(ancestor) if ancestor is not None else None
    if role is None:
        return None
    return role_paths.get(role, DEFAULT_ROLE_NAMES[role])
