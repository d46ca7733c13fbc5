"""Refuse image ids, label tags and image paths that would reach files outside the app's studies.

MONAI Label 0.8.5 turns request values into file paths without checking them:

- ``PUT /datastore/?image=ID`` writes ``STUDIES/ID.ext`` and ``PUT /datastore/label?tag=TAG`` writes
  ``STUDIES/labels/TAG/ID.ext``: an id or tag like ``../../x`` writes outside the studies folder;
- ``/infer/{model}?image=VALUE`` (or ``"image"`` inside the ``params`` JSON) uses ``VALUE`` as a path when a
  file of that name exists on the server, so a client could have any volume on the machine read;
- ``PUT /session/?uncompress=true`` unpacks the upload with ``shutil.unpack_archive``, which on Python 3.11
  extracts tar members named ``../x`` or absolute paths, and links, where they point.

The app keeps MONAI Label's endpoints and checks these values first (:class:`SafeLocalDatastore` for the
datastore writes, :func:`check_infer_image` for inference, :class:`SafeSessions` for archives); a refusal is an HTTP 400 that says why. Paths
the server creates itself stay allowed: uploaded files (``tempfile.NamedTemporaryFile`` names directly in
the temporary folder) and session images under the sessions folder.
"""

from __future__ import annotations

import os
import re
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

from fastapi import HTTPException
from monailabel.datastore.local import LocalDatastore
from monailabel.utils.sessions import Sessions

__all__ = ["check_name", "SafeLocalDatastore", "check_infer_image", "SafeSessions", "check_archive"]

# tempfile.NamedTemporaryFile names: "tmp" + 8 characters of its random name alphabet, then the suffix
_UPLOAD_NAME = re.compile(r"^tmp[a-z0-9_]{8}(\.[A-Za-z0-9.]+)?$")


def check_name(value: object, what: str) -> str:
    """``value`` if it is one plain file-name component, else HTTP 400 naming ``what`` and the reason.

    Refused: non-strings, empty, longer than 255, path separators, NUL or control characters, and names
    starting with a dot (``..``, hidden files).
    """
    if not isinstance(value, str) or not value:
        raise HTTPException(status_code=400, detail=f"{what} must be a non-empty name, got {value!r}")
    if len(value) > 255 or value.startswith(".") or any(c in value for c in "/\\") or not value.isprintable():
        raise HTTPException(
            status_code=400,
            detail=f"{what} {value!r} refused: a name may not contain path separators or control characters, "
            "start with a dot, or exceed 255 characters",
        )
    return value


class SafeLocalDatastore(LocalDatastore):
    """MONAI Label's ``LocalDatastore`` that refuses ids and tags which are not plain names before writing."""

    def add_image(self, image_id, image_filename, image_info):
        if image_id:  # empty: MONAI Label takes the upload's base name
            check_name(image_id, "image id")
        else:
            check_name(self._to_id(os.path.basename(image_filename))[0], "image file name")
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id, label_filename, label_tag, label_info):
        check_name(image_id, "image id")
        check_name(label_tag, "label tag")
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def remove_label(self, label_id, label_tag):
        check_name(label_id, "label id")
        check_name(label_tag, "label tag")
        return super().remove_label(label_id, label_tag)


def _inside(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def check_infer_image(image: object, datastore, session_roots: Iterable[str | Path] = ()) -> None:
    """Raise HTTP 400 unless an inference request's ``image`` is a datastore id or a file the server made.

    Args:
        image: the request's ``"image"`` after MONAI Label merged the ``params`` JSON into it (a string; other
            types, e.g. arrays from MONAI Label's own callers, are left to MONAI Label).
        datastore: the app's datastore (its ``get_image_uri`` knows the ids).
        session_roots: folders holding session images (``settings.MONAI_LABEL_SESSION_PATH``).
    """
    if not isinstance(image, str):
        return
    if image and datastore.get_image_uri(image):
        return  # a known id: MONAI Label resolves it inside the datastore
    if not os.path.exists(image):
        raise HTTPException(status_code=400, detail=f"image id {image!r} is not in the datastore")
    real = Path(os.path.realpath(image))
    upload = real.parent == Path(os.path.realpath(tempfile.gettempdir())) and _UPLOAD_NAME.match(real.name)
    sessions = [Path(os.path.realpath(r)) for r in session_roots if r]
    if not (upload or _inside(real, sessions)):
        raise HTTPException(
            status_code=400,
            detail=f"image {image!r} refused: give an image id of the datastore or upload the file, not a path",
        )


def _escapes(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":")


def check_archive(path: str | Path) -> None:
    """HTTP 400 unless every member of the tar or zip archive at ``path`` stays inside the extraction folder.

    Refused: absolute names, ``..`` components, drive letters, and (tar) links and device files.
    """
    try:
        if tarfile.is_tarfile(path):
            with tarfile.open(path) as archive:
                for member in archive.getmembers():
                    if _escapes(member.name) or not (member.isfile() or member.isdir()):
                        raise HTTPException(status_code=400, detail=f"archive member {member.name!r} refused")
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    if _escapes(name):
                        raise HTTPException(status_code=400, detail=f"archive member {name!r} refused")
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as e:
        raise HTTPException(status_code=400, detail=f"unreadable archive: {e}") from e


class SafeSessions(Sessions):
    """MONAI Label's sessions, with uploaded archives checked by :func:`check_archive` before unpacking."""

    def add_session(self, data_file: str, expiry: int = 0, uncompress: bool = False, session_id=None):
        if uncompress and not os.path.isdir(data_file):
            check_archive(data_file)
        return super().add_session(data_file, expiry, uncompress, session_id)
