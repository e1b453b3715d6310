"""Checks of arguments and outputs before any work (a one-line error, exit status 2), and
output that cannot fail on a file name that is not valid UTF-8."""
import codecs
import os
import sys


def ints(text, what):
    try:
        return [int(v) for v in str(text).split(",")]
    except ValueError:
        raise ValueError(f"{what} must be integers separated by commas, got {text!r}") from None


def at_least(value, least, flag):
    """ValueError unless the integer option is at least `least` (None: not given, fine)."""
    if value is not None and value < least:
        raise ValueError(f"{flag} must be at least {least}, got {value}")


def writable_file(path, flag):
    """ValueError unless a file can be written at path (its folder exists and is writable, and
    path is not a folder): checked before a long run, which would otherwise fail at its end."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a folder; give a file name")
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path}: the folder {folder} does not exist")
    if (not os.access(folder, os.W_OK | os.X_OK)
            or (os.path.exists(path) and not os.access(path, os.W_OK))):
        raise ValueError(f"{flag} {path} is not writable")


def writable_dir(path, flag):
    """ValueError unless path is a writable folder or can be made one: the nearest part of it
    that exists is a writable folder (not a file)."""
    full = os.path.abspath(path)
    if os.path.lexists(full) and not os.path.isdir(full):
        raise ValueError(f"{flag} {path} exists and is not a folder")
    probe = full
    while not os.path.lexists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"{flag} {path} cannot be created: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path} cannot be written: {probe} is not writable")


# commands whose --out is a folder they create
OUT_FOLDERS = ("train", "embedded", "compare", "features-compare", "proposals", "detect-train",
               "detect")


def add_device_argument(parser):
    """--device cpu|gpu: where the command's nets run (its models are placed there; the
    pipelines feed host batches and read host results either way)."""
    parser.add_argument("--device", choices=("cpu", "gpu"),
                        help="cpu (the default, or MINISPP_DEVICE's) or gpu: CuPy and a CUDA GPU, "
                             "pip install -e '.[gpu]' (README, \"The GPU path\")")


def check_outputs(a):
    """Refuse an --out folder or a --json file that cannot be written, or --device gpu where
    CuPy or a GPU is missing, before the command runs (train, embedded ... would otherwise
    fail after their work, or leave half a run behind); then place the models on --device."""
    if hasattr(a, "device"):
        from minispp import backend         # (imports CuPy where it is installed)
        if a.device is not None:
            backend.use_device(a.device)    # GPUUnavailable: a ValueError of one line
        elif chosen_device(a) == "gpu":
            try:                            # the environment's choice, asked as plainly
                backend.use_device("gpu")
            except backend.GPUUnavailable as err:
                raise backend.GPUUnavailable(str(err).replace("--device gpu", "MINISPP_DEVICE=gpu", 1)) from None
    if a.command in OUT_FOLDERS:
        writable_dir(a.out, "--out")
    if getattr(a, "json", None):
        writable_file(a.json, "--json")


def chosen_device(a):
    """The device a command asks for: --device, else "gpu" where MINISPP_DEVICE=gpu (a
    command refuses it without a GPU, see check_outputs), else None (the CPU); "cpu" for a
    command that runs no net."""
    if not hasattr(a, "device"):
        return "cpu"
    if a.device is not None:
        return a.device
    return "gpu" if os.environ.get("MINISPP_DEVICE", "").lower() == "gpu" else None


def _escape(err):
    """Codec error handler "minispp.escape": a byte of a file name that is not UTF-8 (a
    surrogate escape from argv, PEP 383) becomes \\xNN, any other unencodable character
    \\uNNNN, as backslashreplace writes it."""
    if not isinstance(err, UnicodeEncodeError):
        raise err
    out = []
    for ch in err.object[err.start:err.end]:
        c = ord(ch)
        out.append(f"\\x{c - 0xDC00:02x}" if 0xDC80 <= c <= 0xDCFF else
                   f"\\u{c:04x}" if c <= 0xFFFF else f"\\U{c:08x}")
    return "".join(out), err.end


codecs.register_error("minispp.escape", _escape)


def printable(text):
    """text on one line, with what is not valid UTF-8 escaped, so printing cannot fail."""
    return " ".join(str(text).splitlines()).encode("utf-8", "minispp.escape").decode("utf-8")


def tolerant_output():
    """Printing a name that is not valid UTF-8 (or not encodable in the terminal's encoding)
    writes an escape instead of raising UnicodeEncodeError, which would end a finished command
    with an error."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) in ("strict", "backslashreplace"):
            try:
                stream.reconfigure(errors="minispp.escape")
            except (AttributeError, ValueError, OSError):
                pass


def error_line(err):
    """The one-line message of an expected exception."""
    if isinstance(err, UnicodeEncodeError) and "surrogates" in str(err.reason):
        return (f"the name {printable(err.object)} is not valid UTF-8 and cannot be stored; "
                f"rename it")
    return printable(err) or type(err).__name__
