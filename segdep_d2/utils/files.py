"""Writing files so that a final name never holds half a file, for resumable converters.

Every writer here renders to a temporary name in the destination's folder
(``.tmp-<pid>-<name>``) and renames it onto the final name with ``os.replace`` (atomic on one file
system): a killed run leaves at most a temporary file, which :func:`remove_leftovers` deletes on
the next run (unless the process that wrote it is still alive). Used by
``datasets/prepare_vkitti2.py``, the NYUv2 preparation and ``tools/generate_pseudo_labels.py``.
"""
import json
import os

import numpy as np
from PIL import Image

__all__ = [
    "TMP_PREFIX",
    "tmp_name",
    "replace_into",
    "png_writer",
    "json_writer",
    "pid_alive",
    "remove_leftovers",
]

TMP_PREFIX = ".tmp-"


def tmp_name(path):
    """The temporary name ``path`` is written under: same folder (so that the rename stays on one
    file system), same extension, owned by this process."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f"{TMP_PREFIX}{os.getpid()}-{name}")


def replace_into(path, write):
    """``write(tmp)`` then rename onto ``path``: ``path`` is either absent / unchanged or complete."""
    tmp = tmp_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def png_writer(array, **save_kwargs):
    """A ``write(tmp)`` for :func:`replace_into`: uint8 H x W -> an "L" PNG, uint8 H x W x 3 -> an
    "RGB" PNG (through PIL)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return lambda tmp: Image.fromarray(array).save(tmp, format="PNG", **save_kwargs)


def json_writer(data, **dump_kwargs):
    """A ``write(tmp)`` for :func:`replace_into` dumping ``data`` as JSON."""

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, **dump_kwargs)

    return write


def pid_alive(pid):
    """Whether another process with this id exists (this process's own id counts as dead: its
    temporary files are never left over from a write still going on)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_leftovers(folders):
    """Delete the temporary files of runs that ended before renaming them, in each of ``folders``
    (not recursive; absent folders are skipped), except those of a run still going on in another
    process. Returns how many were removed."""
    removed = 0
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            if not name.startswith(TMP_PREFIX):
                continue
            pid = name[len(TMP_PREFIX):].split("-", 1)[0]
            if pid.isdigit() and pid_alive(int(pid)):
                continue
            os.remove(os.path.join(folder, name))
            removed += 1
    return removed
