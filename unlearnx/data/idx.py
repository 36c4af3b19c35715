"""A strict reader for the IDX format used by MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number ``00 00 <dtype> <ndim>``, followed by ``ndim`` big-endian
``uint32`` dimension sizes, followed by the data in row-major order. Only the unsigned-byte dtype
(code ``0x08``) is supported, which is what (Fashion-)MNIST uses.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np

_UBYTE = 0x08


def parse_idx(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Parses the contents of an uncompressed IDX file.

    Args:
        data: The raw file contents.
        source: A name for the data used in error messages.

    Returns:
        A ``uint8`` array with the shape declared in the header.

    Raises:
        ValueError: If the magic number, dtype code or size is inconsistent.
    """
    if len(data) < 4:
        raise ValueError(f"{source}: too short for an IDX header ({len(data)} bytes).")
    zero0, zero1, dtype_code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise ValueError(f"{source}: bad IDX magic number {data[:4].hex()}; expected it to start with 0000.")
    if dtype_code != _UBYTE:
        raise ValueError(
            f"{source}: unsupported IDX dtype code 0x{dtype_code:02x}; only 0x08 (ubyte) is read."
        )
    if ndim == 0:
        raise ValueError(f"{source}: IDX header declares zero dimensions.")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise ValueError(
            f"{source}: truncated IDX header; {ndim} dimensions need {header_size} bytes, "
            f"file has {len(data)}."
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header_size + math.prod(shape)
    if len(data) != expected:
        raise ValueError(
            f"{source}: IDX header declares shape {shape} ({expected} bytes with header), "
            f"but the file has {len(data)} bytes."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an IDX file, gunzipping it first if its name ends in ``.gz``.

    Args:
        path: Path to the file.

    Returns:
        A ``uint8`` array with the shape declared in the header.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file is corrupt (bad gzip stream or inconsistent IDX header).
    """
    path = os.fspath(path)
    if path.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                data = f.read()
        except (EOFError, gzip.BadGzipFile, zlib.error) as err:
            raise ValueError(f"{path}: corrupt gzip stream ({err}).") from err
    else:
        with open(path, "rb") as f:
            data = f.read()
    return parse_idx(data, source=path)
