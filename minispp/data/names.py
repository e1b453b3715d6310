"""Names read from a data set that become parts of file paths: image ids (the ImageSets/Main
lists of a VOC devkit, minispp.data.voc) turn into ``JPEGImages/<id>.jpg``,
``Annotations/<id>.xml`` and the per-image caches ``<out>/proposals/<id>.h5`` and
``<out>/conv5-<s>/<id>.h5``; class names turn into ``ImageSets/Main/<class>_<split>.txt``.

A name is accepted when it is one plain path component: not empty, no ``/`` or ``\\``, no
NUL or other control character, not ``.`` or ``..``, not absolute. Anything else could
reach outside the folder it is meant for (``../../../tmp/x/pic``), so it is refused where
it is read, naming the list file and line. ``inside`` is the second line of defence where
a cache path is built.
"""
import os


class BadName(ValueError):
    """A name from a data set that cannot safely be a file name."""


def name_problem(name):
    """Why name is not a safe single path component, or None when it is."""
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a string"
    if name == "":
        return "is empty"
    if name in (".", ".."):
        return f"is {name!r}"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "contains a NUL or another control character"
    if os.path.isabs(name) or os.path.splitdrive(name)[0]:
        return "is an absolute path"
    return None


def check_name(name, where, what="image id"):
    """name if it is a safe single path component, else BadName naming where it was read
    (e.g. 'ImageSets/Main/test.txt line 3')."""
    problem = name_problem(name)
    if problem:
        raise BadName(f"{where}: {what} {name!r} {problem}; {what}s become file names, so "
                      f"they may not contain '/', '\\', '..', NUL or be absolute")
    return name


def inside(folder, name, suffix=""):
    """os.path.join(folder, name + suffix), refusing (BadName) a name that is not one plain
    component or a result that resolves outside folder."""
    check_name(name, f"a file in {folder}", "name")
    path = os.path.join(folder, name + suffix)
    root = os.path.abspath(folder)
    if os.path.dirname(os.path.abspath(path)) != root:
        raise BadName(f"{path} resolves outside {folder}")
    return path
