"""ConvNeXt checkpoints: read them safely, recognise their layout, map them onto a model.

Three layouts are in use for the same networks:

* **official** (facebookresearch/ConvNeXt, Liu et al., "A ConvNet for the 2020s", CVPR 2022, and
  facebookresearch/ConvNeXt-V2, Woo et al., "ConvNeXt V2", CVPR 2023): ``downsample_layers.*``,
  ``stages.i.j.dwconv/norm/pwconv1/pwconv2/gamma``, ``grn.gamma/beta`` of shape (1, 1, 1, C),
  final ``norm`` and ``head``; checkpoints wrap the state dict under ``model``.
* **timm**: ``stem.*``, ``stages.i.downsample.*``, ``stages.i.blocks.j.conv_dw/norm/mlp.fc1/
  mlp.fc2/mlp.grn.weight/bias/gamma``, ``norm_pre``, ``head.norm``, ``head.fc``; the small models
  (``conv_mlp``) store the MLP as (C_out, C_in, 1, 1) conv weights.
* **torchvision**: ``features.*`` (stem, stages and downsampling layers interleaved),
  ``block.0/2/3/5``, ``layer_scale`` of shape (C, 1, 1), ``classifier.0/2``.

:class:`convnext_fast.models.ConvNeXt` uses the timm names, which serve as the canonical layout
here: a source is detected, renamed to timm keys, renamed to the target model's layout, and
reshaped where the two differ only by size-1 dimensions.

Files are read without executing code: ``torch.load(..., weights_only=True)`` for ``torch.save``
files and ``safetensors.torch.load_file`` for safetensors, the format told from the file's first
bytes, not its name. Nothing is ever downloaded.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import pickletools
import re
import stat
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "LAYOUTS",
    "read_checkpoint",
    "unwrap_state_dict",
    "detect_layout",
    "convert_state_dict",
    "load_weights",
    "resolve_pretrained",
]

LAYOUTS = ("official", "timm", "torchvision")
_WRAPPER_KEYS = ("model", "state_dict", "model_ema", "state_dict_ema", "module")
_STRIP_PREFIXES = ("module.", "_orig_mod.")

StateDict = Dict[str, Tensor]
Source = Union[str, "os.PathLike[str]", Mapping[str, Any]]


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model (the message names the keys)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No file at a checkpoint path: a :class:`CheckpointError` that ``except FileNotFoundError``
    catches too."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.ENOENT


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------

# What a checkpoint file starts with. The format is told from these bytes, never from the file
# name: a safetensors file saved as ``.pth`` is common, and guessing from the name sent it to the
# pickle loader, whose refusal then blamed code that was not there.
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # torch.save's default (zip) format; an empty archive
_PICKLE_PROTOCOLS = range(2, 6)  # b"\x80" + protocol byte: torch.save's legacy format (protocol 2)
_SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors format's own limit on its JSON header
_SAFETENSORS_HINT = "an 8-byte little-endian header length, then a JSON header"


def _regular_file_size(path: str) -> int:
    """The size of the regular file at ``path``, told by ``stat`` without opening it (opening a FIFO
    blocks until something writes to it).

    Raises:
        CheckpointNotFoundError: nothing is at ``path``.
        CheckpointError: ``path`` is a dangling symbolic link, a directory, a FIFO, a socket or a
            device, or cannot be looked at (the message names the path and says which).
    """
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError) as e:
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            raise CheckpointError(f"cannot read checkpoint {path!r}: it is a symbolic link to {target!r}, which does "
                                  f"not exist (a dangling link): fix the link or pass the file itself") from None
        parent = os.path.dirname(os.path.abspath(path))
        where = "" if os.path.isdir(parent) else f"; its directory {parent!r} does not exist either"
        if isinstance(e, NotADirectoryError):
            where = "; a component of the path is a file, not a directory"
        raise CheckpointNotFoundError(f"checkpoint file not found: {path!r}: no such file{where}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path!r}: {e.strerror or e}") from e
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return st.st_size
    if stat.S_ISDIR(mode):
        what = "a directory, not a file: pass the checkpoint file itself"
    elif stat.S_ISFIFO(mode):
        what = "a FIFO (named pipe), not a regular file: save the checkpoint to a file and pass that"
    elif stat.S_ISSOCK(mode):
        what = "a socket, not a regular file"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        what = "a device, not a regular file"
    else:
        what = "not a regular file"
    link = f" (a symbolic link to {os.path.realpath(path)!r})" if os.path.islink(path) else ""
    raise CheckpointError(f"cannot read checkpoint {path!r}{link}: it is {what}")


def _sniff(path: str, size: int) -> str:
    """``"zip"``, ``"pickle"`` or ``"safetensors"`` from the first bytes of ``path``.

    Raises:
        CheckpointError: the file is empty or none of them (the message says what it looks like).
    """
    if size == 0:
        raise CheckpointError(f"cannot read checkpoint {path!r}: the file is empty (0 bytes); an interrupted "
                              f"download or save leaves files like this")
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(_ZIP_MAGICS):
        return "zip"
    if head[0] == 0x80 and len(head) > 1 and head[1] in _PICKLE_PROTOCOLS:
        return "pickle"
    # A JSON header after a plausible length; text that happens to hold "{" at byte 8 gives an
    # implausible length (its first 8 characters read as a number).
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= _SAFETENSORS_MAX_HEADER:
        return "safetensors"
    raise CheckpointError(f"cannot read checkpoint {path!r}: {_describe_unknown(path, head, size)}")


def _describe_unknown(path: str, head: bytes, size: int) -> str:
    """Words for a file that is no checkpoint format, from its first bytes."""
    known = (f"it is none of the checkpoint formats (safetensors: {_SAFETENSORS_HINT}; torch.save: a zip "
             f"archive, or a pickle in the legacy format)")
    if path.endswith(".safetensors"):
        known = f"its name says safetensors, but it does not start with {_SAFETENSORS_HINT}"
    if size < 9:
        return f"{known}; it is only {size} bytes long (a truncated file?)"
    # A multi-byte character cut at the 512th byte still reads as text.
    text = head.decode("utf-8", errors="replace").rstrip("\ufffd")
    if "\ufffd" in text or any(c < " " and c not in "\t\r\n" for c in text):
        return f"{known}; it starts with the bytes {head[:16]!r}"
    first = " ".join(text.split())[:60]
    if text.startswith("version https://git-lfs.github.com/spec/"):
        what = "a Git LFS pointer, not the weights it points to (fetch them with `git lfs pull`)"
    elif text.lstrip()[:1] == "<":
        what = "an HTML or XML page (a failed download, or a web page saved in place of the file?)"
    elif text.lstrip()[:1] in ("{", "["):
        what = "JSON text (the index of a sharded checkpoint? pass the weights file itself)"
    else:
        what = "a text file"
    return f"{known}; it is {what}, starting {first!r}"


def _read_safetensors(path: str, size: int) -> Dict[str, Any]:
    """Check a safetensors file's header against its size, then load it with ``safetensors``."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > size - 8:
            raise CheckpointError(
                f"cannot read checkpoint {path!r}: a safetensors file whose header length field says "
                f"{n} bytes, but only {size - 8} bytes follow it: the file is truncated or damaged")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {path!r}: its safetensors header ({n} bytes) is not valid "
                              f"JSON ({e}): the file is damaged") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"cannot read checkpoint {path!r}: its safetensors header is a JSON "
                              f"{type(header).__name__}, not an object: the file is damaged")
    data_size = size - 8 - n
    needed = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise CheckpointError(f"cannot read checkpoint {path!r}: the safetensors header entry for {key!r} has "
                                  f"no valid data_offsets ({entry!r:.120}): the file is damaged")
        needed = max(needed, offsets[1])
    if needed > data_size:
        raise CheckpointError(f"cannot read checkpoint {path!r}: the file is truncated: its safetensors header "
                              f"places tensor data up to byte {needed} of the data section, which holds only "
                              f"{data_size} bytes")
    try:
        from safetensors.torch import load_file
    except ImportError as e:
        raise ImportError(f"{path!r} is a safetensors file; reading it needs the safetensors package "
                          f"(pip install safetensors)") from e
    try:
        return load_file(path, device="cpu")
    except Exception as e:  # SafetensorError: overlapping or unknown-dtype entries and the like
        raise CheckpointError(f"cannot read checkpoint {path!r}: the safetensors file is damaged or uses a "
                              f"feature this safetensors version cannot read ({type(e).__name__}: {e})") from e


# The weights-only unpickler's words for a pickle that names a Python callable or class: loading
# it without the restriction would import and call it.
_CODE_GLOBAL = re.compile(r"GLOBAL ([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*)(?: |$)")
_CODE_MARKERS = ("Trying to call reduce for unrecognized function", "Can only create new object",
                 "Can only build Tensor")


# What a tensor checkpoint's pickle may name: tensor and storage rebuilders, OrderedDict, numpy
# arrays, and a few builtin containers. Any other name is a callable or class that unrestricted
# loading would import and call.
_DATA_GLOBAL_ROOTS = ("torch", "collections", "numpy", "_codecs")
_DATA_BUILTINS = {"set", "frozenset", "bytearray", "bytes", "slice", "complex", "range"}
_STRING_OPCODES = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
                   "BINUNICODE8"}
_MAX_PICKLES = 8  # the legacy torch.save format: a few pickles in a row, then raw storage bytes


def _is_data_global(name: str) -> bool:
    root, _, rest = name.partition(".")
    return root in _DATA_GLOBAL_ROOTS or (root in ("builtins", "__builtin__") and rest in _DATA_BUILTINS)


def _pickle_globals(f: Any) -> List[str]:
    """The module.name of every callable or class the pickles read from ``f`` name, in order, found
    with ``pickletools`` (which parses opcodes: nothing is imported or run). Stops quietly where
    the data stops being a pickle."""
    found: List[str] = []
    for _ in range(_MAX_PICKLES):
        # A tail of the unpickler's stack, as far as strings go: STACK_GLOBAL (protocol 4+) takes
        # its module and name from the two strings pushed before it, often through the memo.
        pushed: List[Optional[str]] = []
        memo: Dict[Any, Optional[str]] = {}
        try:
            for op, arg, _pos in pickletools.genops(f):
                name = op.name
                if name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                    pushed.append(None)
                elif name == "STACK_GLOBAL":
                    module, attr = pushed[-2:] if len(pushed) >= 2 else (None, None)
                    found.append(f"{module}.{attr}" if module and attr else "a callable whose name the pickle computes")
                    pushed.append(None)
                elif name in _STRING_OPCODES:
                    pushed.append(arg if isinstance(arg, str) else None)
                elif name == "MEMOIZE":
                    memo[len(memo)] = pushed[-1] if pushed else None
                elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[arg] = pushed[-1] if pushed else None
                elif name in ("GET", "BINGET", "LONG_BINGET"):
                    pushed.append(memo.get(arg))
                elif name not in ("FRAME", "PROTO", "STOP"):
                    pushed.append(None)
        except Exception:  # noqa: BLE001 - raw bytes after the pickles, or a truncated file
            break
    return found


def _code_globals(path: str, kind: str) -> List[str]:
    """The names in the checkpoint's pickles that are not tensor data (see :func:`_pickle_globals`)."""
    try:
        if kind == "zip":
            import zipfile

            names: List[str] = []
            with zipfile.ZipFile(path) as archive:
                for member in archive.namelist():
                    if member.endswith(".pkl"):
                        with archive.open(member) as f:
                            names += _pickle_globals(f)
        else:
            with open(path, "rb") as f:
                names = _pickle_globals(f)
    except Exception:  # noqa: BLE001 - an unreadable archive: the caller reports the damage
        return []
    return list(dict.fromkeys(n for n in names if not _is_data_global(n)))


def _refuse_code(path: str, what: str) -> CheckpointError:
    return CheckpointError(
        f"refusing to load {path!r}: it is not a plain tensor checkpoint ({what}), and loading it would run "
        f"code from the file (torch.load(weights_only=True) rejected it). Save a state dict "
        f"(torch.save(model.state_dict(), path)) or convert the file to safetensors from a trusted "
        f"environment.")


def _read_torch(path: str, kind: str) -> Any:
    """``torch.load(weights_only=True)`` with its failures told apart: code refused vs damage."""
    try:
        # An open file, not the path: torch.load hands paths ending in .safetensors to safetensors.
        with open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        found = _CODE_GLOBAL.search(msg)
        if found or any(m in msg for m in _CODE_MARKERS):
            # The reader names the first global it refused; the file's own list may name what the
            # code does (a tensor pickled with plain pickle refers to torch internals first).
            code = _code_globals(path, kind)
            if code:
                what = f"it references {', '.join(code[:4])}"
            else:
                what = f"it references {found[1]}" if found else "it builds Python objects other than tensors"
            raise _refuse_code(path, what) from e
        # The restricted unpickler can stop before it reaches the code (protocol 4 framing, an
        # opcode it does not know): read the names the file would import without running them.
        code = _code_globals(path, kind)
        if code:
            raise _refuse_code(path, f"it references {', '.join(code[:4])}") from e
        inner = _weights_only_reason(msg)
        raise CheckpointError(f"cannot read checkpoint {path!r}: {_damaged(kind)} (the pickle reader stopped at: "
                              f"{inner})") from e
    except Exception as e:  # zip/pickle corruption: RuntimeError, EOFError, KeyError, IndexError, ...
        code = _code_globals(path, kind)
        if code:
            raise _refuse_code(path, f"it references {', '.join(code[:4])}") from e
        inner = _first_sentence(str(e)) or "unexpected end of data"
        raise CheckpointError(f"cannot read checkpoint {path!r}: {_damaged(kind)} "
                              f"({type(e).__name__}: {inner})") from e


def _damaged(kind: str) -> str:
    if kind == "zip":
        return ("it is a zip archive but not a readable torch.save checkpoint: truncated, damaged, or a zip of "
                "something else")
    return "it is a pickle but not a readable torch.save checkpoint: truncated, damaged, or not written by torch.save"


def _weights_only_reason(msg: str) -> str:
    """The unpickler's own reason inside torch's long weights-only message."""
    return _first_sentence(msg.rsplit("WeightsUnpickler error:", 1)[-1]) or "unknown error"


def _first_sentence(msg: str) -> str:
    """The first sentence of an error message (torch's go on for a paragraph of advice)."""
    lines = [ln.strip() for ln in msg.strip().splitlines() if ln.strip()]
    return re.split(r"\. (?=[A-Z])", lines[0], maxsplit=1)[0].rstrip(".")[:200] if lines else ""


def read_checkpoint(path: Union[str, "os.PathLike[str]"]) -> Dict[str, Any]:
    """Load a checkpoint file onto the CPU without executing code from it.

    The format is told from the file's first bytes, not its name: safetensors (an 8-byte
    little-endian header length, then a JSON header), a ``torch.save`` zip archive or a legacy
    ``torch.save`` pickle.

    Args:
        path: a ``.safetensors`` file, or a PyTorch checkpoint (``.pth``, ``.pt``, ``.bin``, ...).

    Returns:
        The loaded dict (a state dict or a checkpoint wrapping one).

    Raises:
        CheckpointNotFoundError: no such file (a :class:`CheckpointError` and a ``FileNotFoundError``).
        CheckpointError: the path is a directory, a FIFO, a dangling symbolic link or another
            non-file (told by ``stat``, never opened); the pickle would run code (``weights_only=True``
            refused it, or it names callables that are not tensor data); or the file is empty,
            truncated, damaged or not a checkpoint. The message names the path and what is wrong.
    """
    path = os.fspath(path)
    size = _regular_file_size(path)
    try:
        kind = _sniff(path, size)
    except OSError as e:  # unreadable (permissions): stat said it is a regular file
        raise CheckpointError(f"cannot read checkpoint {path!r}: {e.strerror or e}") from e
    obj = _read_safetensors(path, size) if kind == "safetensors" else _read_torch(path, kind)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path!r} holds a {type(obj).__name__}, not a state dict")
    return dict(obj)


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> StateDict:
    """The state dict inside a checkpoint.

    Accepts a state dict itself or a dict wrapping one under ``model``, ``state_dict`` (then
    ``model_ema``, ``state_dict_ema``); strips the ``module.`` (DDP) and ``_orig_mod.``
    (torch.compile) prefixes.

    Raises:
        CheckpointError: no state dict found, or non-tensor values in it.
    """
    sd: Any = checkpoint
    for key in _WRAPPER_KEYS:
        inner = sd.get(key) if isinstance(sd, Mapping) else None
        if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
            sd = inner
            break
    if not isinstance(sd, Mapping) or not sd:
        raise CheckpointError("checkpoint holds no state dict (expected a dict of tensors, possibly under 'model' "
                              "or 'state_dict')")
    bad = [k for k, v in sd.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint is not a state dict: non-tensor entries {bad[:8]} (top-level keys: "
                              f"{list(sd)[:8]}); expected a dict of tensors, possibly under 'model' or 'state_dict'")
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in _STRIP_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


# ----------------------------------------------------------------------------------------------
# Layouts
# ----------------------------------------------------------------------------------------------


def detect_layout(keys: Any) -> str:
    """``"official"``, ``"timm"`` or ``"torchvision"`` for a state dict (or its keys).

    Raises:
        CheckpointError: the keys fit none of them.
    """
    keys = list(keys)
    if any(k.startswith("features.0.0.") for k in keys) or any(k.startswith("classifier.") for k in keys):
        return "torchvision"
    if any(k.startswith("downsample_layers.") for k in keys) or any(re.match(r"stages\.\d+\.\d+\.", k) for k in keys):
        return "official"
    if any(k.startswith("stem.") for k in keys) or any(re.match(r"stages\.\d+\.blocks\.", k) for k in keys):
        return "timm"
    raise CheckpointError(f"cannot tell the ConvNeXt layout of this state dict (first keys: {keys[:6]}); expected "
                          f"the official (downsample_layers.*, stages.i.j.*), timm (stem.*, stages.i.blocks.j.*) "
                          f"or torchvision (features.*, classifier.*) layout")


_BLOCK_OFFICIAL_TO_TIMM = {
    "dwconv.": "conv_dw.", "norm.": "norm.", "pwconv1.": "mlp.fc1.", "pwconv2.": "mlp.fc2.",
    "grn.gamma": "mlp.grn.weight", "grn.beta": "mlp.grn.bias", "gamma": "gamma",
}
_BLOCK_TV_TO_TIMM = {
    "block.0.": "conv_dw.", "block.2.": "norm.", "block.3.": "mlp.fc1.", "block.5.": "mlp.fc2.",
    "layer_scale": "gamma",
}
_BLOCK_TIMM_ALIASES = {"mlp.grn.gamma": "mlp.grn.weight", "mlp.grn.beta": "mlp.grn.bias"}


def _rename_block(rest: str, table: Mapping[str, str]) -> Optional[str]:
    for src, dst in table.items():
        if rest == src or (src.endswith(".") and rest.startswith(src)):
            return dst + rest[len(src):] if src.endswith(".") else dst
    return None


def _official_to_timm(k: str) -> Optional[str]:
    if k.startswith("downsample_layers.0."):
        return "stem." + k[len("downsample_layers.0."):]
    m = re.match(r"downsample_layers\.(\d+)\.(.*)", k)
    if m:
        return f"stages.{m[1]}.downsample.{m[2]}"
    m = re.match(r"stages\.(\d+)\.(\d+)\.(.*)", k)
    if m:
        rest = _rename_block(m[3], _BLOCK_OFFICIAL_TO_TIMM)
        return None if rest is None else f"stages.{m[1]}.blocks.{m[2]}.{rest}"
    if k.startswith("norm."):
        return "head.norm." + k[len("norm."):]
    if k.startswith("head."):
        return "head.fc." + k[len("head."):]
    return None


def _timm_to_official(k: str) -> Optional[str]:
    if k.startswith("stem."):
        return "downsample_layers.0." + k[len("stem."):]
    m = re.match(r"stages\.(\d+)\.downsample\.(.*)", k)
    if m:
        return f"downsample_layers.{m[1]}.{m[2]}"
    m = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.*)", k)
    if m:
        inverse = {v: s for s, v in _BLOCK_OFFICIAL_TO_TIMM.items()}
        rest = _rename_block(m[3], inverse)
        return None if rest is None else f"stages.{m[1]}.{m[2]}.{rest}"
    if k.startswith("head.norm."):
        return "norm." + k[len("head.norm."):]
    if k.startswith("head.fc."):
        return "head." + k[len("head.fc."):]
    return None


def _tv_to_timm(k: str) -> Optional[str]:
    m = re.match(r"features\.(\d+)\.(.*)", k)
    if m:
        idx, rest = int(m[1]), m[2]
        if idx == 0:
            return "stem." + rest
        if idx % 2 == 0:  # downsampling layer in front of stage idx/2
            return f"stages.{idx // 2}.downsample.{rest}"
        m2 = re.match(r"(\d+)\.(.*)", rest)
        if not m2:
            return None
        brest = _rename_block(m2[2], _BLOCK_TV_TO_TIMM)
        return None if brest is None else f"stages.{(idx - 1) // 2}.blocks.{m2[1]}.{brest}"
    if k.startswith("classifier.0."):
        return "head.norm." + k[len("classifier.0."):]
    if k.startswith("classifier.2."):
        return "head.fc." + k[len("classifier.2."):]
    return None


def _timm_to_tv(k: str) -> Optional[str]:
    if k.startswith("stem."):
        return "features.0." + k[len("stem."):]
    m = re.match(r"stages\.(\d+)\.downsample\.(.*)", k)
    if m:
        return f"features.{2 * int(m[1])}.{m[2]}"
    m = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.*)", k)
    if m:
        rest = _rename_block(m[3], {v: s for s, v in _BLOCK_TV_TO_TIMM.items()})
        return None if rest is None else f"features.{2 * int(m[1]) + 1}.{m[2]}.{rest}"
    if k.startswith("head.norm."):
        return "classifier.0." + k[len("head.norm."):]
    if k.startswith("head.fc."):
        return "classifier.2." + k[len("head.fc."):]
    return None


def _timm_to_timm(k: str) -> Optional[str]:
    m = re.match(r"(stages\.\d+\.blocks\.\d+\.)(.*)", k)
    if m and m[2] in _BLOCK_TIMM_ALIASES:
        return m[1] + _BLOCK_TIMM_ALIASES[m[2]]
    return k


_TO_TIMM: Dict[str, Callable[[str], Optional[str]]] = {
    "official": _official_to_timm, "timm": _timm_to_timm, "torchvision": _tv_to_timm}
_FROM_TIMM: Dict[str, Callable[[str], Optional[str]]] = {
    "official": _timm_to_official, "timm": lambda k: k, "torchvision": _timm_to_tv}


def _layout_shape(layout: str, key: str, t: Tensor) -> Tensor:
    """Reshape a tensor to the convention of ``layout`` (used when no target model is known)."""
    if layout == "official":
        if re.search(r"\.pwconv[12]\.weight$", key) and t.dim() == 4:
            return t.flatten(1)
        if re.search(r"\.grn\.(gamma|beta)$", key):
            return t.reshape(1, 1, 1, -1)
    if layout == "torchvision":
        if key.endswith(".layer_scale"):
            return t.reshape(-1, 1, 1)
        if re.search(r"\.block\.[35]\.weight$", key) and t.dim() == 4:
            return t.flatten(1)
    if layout == "timm" and re.search(r"(\.mlp\.grn\.(weight|bias)|\.gamma)$", key):
        return t.reshape(-1)
    return t


def convert_state_dict(state_dict: Mapping[str, Tensor], to: str = "timm",
                       source_layout: Optional[str] = None) -> StateDict:
    """Rename a ConvNeXt state dict from its layout (detected) to layout ``to``.

    Args:
        state_dict: official, timm or torchvision keys (use :func:`unwrap_state_dict` first for
            wrapped checkpoints).
        to: ``"official"``, ``"timm"`` (also :class:`convnext_fast.models.ConvNeXt`'s layout) or
            ``"torchvision"``.
        source_layout: skip detection.

    Returns:
        A new dict with the same tensors (reshaped views where the layouts differ in shape).

    Raises:
        CheckpointError: keys that have no counterpart in the target layout (named).
    """
    if to not in LAYOUTS:
        raise ValueError(f"unknown layout {to!r}; choose one of {', '.join(LAYOUTS)}")
    src = source_layout or detect_layout(state_dict.keys())
    if src not in LAYOUTS:
        raise ValueError(f"unknown layout {src!r}; choose one of {', '.join(LAYOUTS)}")
    out: StateDict = {}
    unmapped: List[str] = []
    for k, v in state_dict.items():
        new = _map_key(k, src, to)
        if new is None:
            unmapped.append(k)
            continue
        out[new] = _layout_shape(to, new, v)
    if unmapped:
        raise CheckpointError(f"{len(unmapped)} key(s) of the {src}-layout state dict have no counterpart in the "
                              f"{to} layout: {unmapped[:20]}")
    return out


def _map_key(key: str, src: str, to: str) -> Optional[str]:
    """``key`` of a ``src``-layout state dict renamed to layout ``to`` (None: no counterpart)."""
    canon = _TO_TIMM[src](key)
    return None if canon is None else _FROM_TIMM[to](canon)


def _dtype_kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "boolean"
    if dtype.is_complex:
        return "complex"
    return "floating-point" if dtype.is_floating_point else "integer"


def _squeezed(shape: Tuple[int, ...]) -> List[int]:
    return [s for s in shape if s != 1]


def load_weights(model: nn.Module, source: Source, strict: bool = True,
                 assign: bool = False) -> Tuple[List[str], List[str]]:
    """Load weights in the official, timm or torchvision layout into ``model``.

    The source layout is detected and mapped onto the model's own layout (a
    :class:`convnext_fast.models.ConvNeXt` uses timm's; a timm or torchvision model, converted or
    not, uses its own). Tensors that differ only by size-1 dimensions (1x1 conv vs Linear MLP
    weights, official GRN (1, 1, 1, C), torchvision layer scale (C, 1, 1)) are reshaped. A model
    without a classifier (``num_classes=0``) ignores the checkpoint's classifier.

    Args:
        model: the model to fill (in place).
        source: a checkpoint path (``.pth``/``.pt``/``.safetensors``; loaded with
            ``weights_only=True`` or safetensors, never executing code), a state dict, or a
            checkpoint dict wrapping one under ``model``/``state_dict``.
        strict: raise on missing or unexpected keys (default). With ``strict=False`` they are
            returned instead; shape mismatches always raise.
        assign: replace the model's parameters by the checkpoint's tensors (cast to each
            parameter's dtype, and copied when ``source`` is a caller's dict, so the model never
            shares memory with it) instead of copying into them. For models built on the meta
            device (the factories do this when given ``pretrained=``): nothing is initialized twice.

    Returns:
        ``(missing_keys, unexpected_keys)`` in the model's naming (empty when ``strict``).

    Raises:
        CheckpointError: missing / unexpected keys (named), mismatched shapes, tensors of another
            kind of dtype than the model's (integer, boolean or complex values for a floating-point
            parameter: named, never cast), unreadable, empty, truncated or damaged files, pickles that
            would execute code, paths that are no regular file (a directory, a FIFO, a dangling
            symbolic link: told by ``stat``, never opened). Errors about a file name the file; a
            missing file raises :class:`CheckpointNotFoundError`, a ``FileNotFoundError`` too.
    """
    from_file = isinstance(source, (str, os.PathLike))
    if assign and not strict:
        raise ValueError("load_weights(assign=True) needs strict=True: a missing key would leave a parameter unset")
    if from_file:
        checkpoint: Mapping[str, Any] = read_checkpoint(source)
    elif isinstance(source, Mapping):
        checkpoint = source
    else:
        raise TypeError(f"load_weights expects a file path or a state dict, got {type(source).__name__}")
    if not from_file:
        return _load_state_dict(model, checkpoint, strict, assign, from_file=False)
    try:
        return _load_state_dict(model, checkpoint, strict, assign, from_file=True)
    except CheckpointError as e:  # a file's contents that do not fit: say which file
        named = CheckpointError(f"checkpoint file {os.fspath(source)!r}: {e}")
        raise named.with_traceback(e.__traceback__) from None


def _load_state_dict(model: nn.Module, checkpoint: Mapping[str, Any], strict: bool, assign: bool,
                     from_file: bool) -> Tuple[List[str], List[str]]:
    """:func:`load_weights` once the checkpoint is in memory (``from_file``: tensors are ours)."""
    sd = unwrap_state_dict(checkpoint)
    target = model.state_dict()
    target_layout = detect_layout(target.keys())
    source_layout = detect_layout(sd.keys())
    mapped = convert_state_dict(sd, to=target_layout, source_layout=source_layout)
    origin = {_map_key(k, source_layout, target_layout): k for k in sd}

    # A model built without a classifier ignores the checkpoint's classifier.
    head_prefix = _CLASSIFIER_PREFIX[target_layout]
    if not any(k.startswith(head_prefix) for k in target):
        mapped = {k: v for k, v in mapped.items() if not k.startswith(head_prefix)}

    missing = sorted(set(target) - set(mapped))
    unexpected = sorted(set(mapped) - set(target))
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing[:20]}{' ...' if len(missing) > 20 else ''}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected[:20]}"
                         f"{' ...' if len(unexpected) > 20 else ''}")
        raise CheckpointError(f"checkpoint does not fit {type(model).__name__}: " + "; ".join(parts)
                              + "  (check the model variant, num_classes and head options)")
    bad_shapes, bad_dtypes = [], []
    final: StateDict = {}
    for k, v in mapped.items():
        if k not in target:
            continue
        # Casting would silently turn integers, booleans or complex numbers into other numbers
        # (copy_ drops imaginary parts, makes 0/1 of booleans): not a checkpoint of this model.
        if _dtype_kind(v.dtype) != _dtype_kind(target[k].dtype):
            named = k if origin.get(k, k) == k else f"{k} (checkpoint key {origin[k]})"
            bad_dtypes.append(f"{named}: checkpoint {_dtype_kind(v.dtype)} {v.dtype} vs model "
                              f"{_dtype_kind(target[k].dtype)} {target[k].dtype}")
            continue
        want = tuple(target[k].shape)
        if tuple(v.shape) != want:
            if _squeezed(tuple(v.shape)) != _squeezed(want):
                bad_shapes.append(f"{k}: checkpoint {tuple(v.shape)} vs model {want}")
                continue
            v = v.reshape(want)
        if assign:
            dtype = target[k].dtype
            v = v.to(dtype) if v.dtype != dtype or from_file else v.to(dtype, copy=True)
        final[k] = v
    if bad_dtypes:
        raise CheckpointError(f"checkpoint tensors have the wrong kind of dtype for {type(model).__name__} "
                              f"({len(bad_dtypes)}): {bad_dtypes[:20]}{' ...' if len(bad_dtypes) > 20 else ''}; "
                              f"refusing to cast between integer, boolean, floating-point and complex values: that "
                              f"changes the numbers, not only their precision (is this a checkpoint of this model?)")
    if bad_shapes:
        raise CheckpointError(f"checkpoint shapes do not fit {type(model).__name__}: {bad_shapes[:20]}"
                              f"  (a different model size, or num_classes: pass num_classes=... to the factory)")
    model.load_state_dict(final, strict=False, assign=assign)
    return missing, unexpected


_CLASSIFIER_PREFIX = {"timm": "head.fc.", "official": "head.", "torchvision": "classifier.2."}


def without_classifier(source: Source) -> Tuple[StateDict, Optional[int]]:
    """``(the checkpoint's state dict without its classifier, the classifier's class count)``, the
    count None when it has no classifier. For fine-tuning from pretrained weights with another
    class count (timm's ``create_model(..., pretrained=True, num_classes=n)``).

    Raises:
        CheckpointError: as :func:`load_weights` for an unreadable file or a state dict of no known layout.
    """
    checkpoint = read_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source
    sd = unwrap_state_dict(checkpoint)
    prefix = _CLASSIFIER_PREFIX[detect_layout(sd.keys())]
    weight = sd.get(prefix + "weight")
    classes = int(weight.shape[0]) if weight is not None else None
    return {k: v for k, v in sd.items() if not k.startswith(prefix)}, classes


def resolve_pretrained(name: str, pretrained: Any) -> Optional[Source]:
    """Validate a factory's ``pretrained=`` argument: None/False, a local file or a state dict.

    Raises:
        ValueError: ``True`` or a string that is not an existing file (e.g. a hub name): nothing
            is downloaded, the message says how to pass a local file.
        CheckpointError: a path to a directory, a FIFO, a dangling symbolic link or another
            non-file (a ValueError too; the message says which).
        TypeError: anything else.
    """
    if pretrained is None or pretrained is False:
        return None
    how = (f"convnext_fast never downloads weights. Download a checkpoint yourself (e.g. timm's "
           f"'{name}' weights from the Hugging Face hub, torchvision's, or the official release) and pass the "
           f"local file: {name}(pretrained='/path/to/weights.safetensors' or '.pth'), or a state dict: "
           f"{name}(pretrained=timm.create_model('{name}', pretrained=True).state_dict())")
    if pretrained is True:
        raise ValueError(f"{name}(pretrained=True): {how}")
    if isinstance(pretrained, (str, os.PathLike)):
        if os.path.lexists(os.fspath(pretrained)):
            _regular_file_size(os.fspath(pretrained))  # a directory, FIFO or dangling link: say which
        if not os.path.isfile(os.fspath(pretrained)):
            raise ValueError(f"{name}(pretrained={os.fspath(pretrained)!r}): no such file. {how}")
        return pretrained
    if isinstance(pretrained, Mapping):
        return pretrained
    raise TypeError(f"{name}(pretrained=...) expects a file path or a state dict, got {type(pretrained).__name__}")
