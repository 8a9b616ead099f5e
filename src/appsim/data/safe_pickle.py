"""A restricted unpickler for the company's embedding pickles.

``pickle.load`` runs whatever callable a pickle names (``os.system``, ``builtins.eval``, ...). This module
loads a pickle with :class:`RestrictedUnpickler`, whose ``find_class`` admits only the globals listed in
:data:`ALLOWED_GLOBALS`. ``find_class`` is called when the unpickler reads a ``GLOBAL`` / ``STACK_GLOBAL`` /
``INST`` / ``OBJ`` / ``EXT*`` opcode, i.e. *before* any ``REDUCE`` / ``NEWOBJ`` / ``BUILD`` could call the
object, so a refused global never runs: :class:`~appsim.errors.UnsafePickleError` is raised naming
``module.name``.

The allow-list was found by pickling the accepted layouts (dict of vectors, dict of lists, ``(n, d)``
ndarray, DataFrame with a vector column or ``d`` numeric columns, DataFrame indexed by id, Series) with
protocols 2..5 under numpy 2.x / pandas 3.x (the installed versions), numpy 1.26 / pandas 2.2 and
numpy 1.24 / pandas 1.5, and tracing ``find_class``. It is the union of what those need, nothing more:

* numpy: ``ndarray``, ``dtype``, ``_reconstruct`` (array ``__reduce__``), ``scalar`` (numpy scalars),
  ``_frombuffer`` (protocol 5 arrays). numpy 1.x spells the module ``numpy.core``; numpy 2 renamed it
  ``numpy._core``: both spellings resolve to the ``numpy._core`` object (no deprecation warning).
* pandas: ``DataFrame``, ``Series``, ``Index``, ``RangeIndex``, ``_new_Index``, ``BlockManager``,
  ``SingleBlockManager``, ``_unpickle_block``, and the pandas-3 string column types (``StringDtype``,
  ``StringArray`` and Cython's ``__pyx_unpickle_NDArrayBacked``). Legacy locations (pandas 1.x/2.x
  ``pandas.core.frame.DataFrame``, ``pandas.core.indexes.numeric.Int64Index``, ...) are remapped the way
  ``pandas.compat.pickle_compat`` does.
* builtins: ``slice`` (block placements), ``collections.OrderedDict`` (an ordered dict of vectors) and
  ``_codecs.encode``, which protocol 2 uses to rebuild ``bytes``; it is replaced by a function that only
  accepts the ``latin1`` codec.

Not supported (refused, by design): pyarrow-backed string columns (``ArrowStringArray`` needs
``pyarrow`` globals), categorical / datetime columns, sparse frames, protocol 0/1 pickles (they need
``copyreg._reconstructor``). Gzip / bz2 / xz compressed pickles (``pd.to_pickle(..., compression=...)``)
are detected by their magic bytes and decompressed first.
"""

from __future__ import annotations

import bz2
import gzip
import importlib
import io
import lzma
import pickle
from pathlib import Path
from typing import IO, Any

from appsim.errors import DataError, UnsafePickleError


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """Stand-in for ``_codecs.encode`` in protocol-2 pickles, which spell ``bytes`` as
    ``_codecs.encode(<str>, "latin1")``. Any other codec is refused."""
    if encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise UnsafePickleError(
            f"pickle asked _codecs.encode for codec {encoding!r}; only latin1 is allowed",
            check="allow-list",
            global_name="_codecs.encode",
        )
    if not isinstance(text, str):
        raise UnsafePickleError("pickle passed a non-str to _codecs.encode", check="allow-list")
    return text.encode("latin1")


_NP_CORE = "numpy._core"
_PD_STR = "pandas.core.arrays.string_"

#: requested ``(module, name)`` -> ``(module, name)`` actually imported. Only these globals are loaded.
ALLOWED_GLOBALS: dict[tuple[str, str], tuple[str, str]] = {
    # -- builtins ----------------------------------------------------------------------------------------
    ("builtins", "slice"): ("builtins", "slice"),
    ("__builtin__", "slice"): ("builtins", "slice"),  # protocol 2 writes Python-2 module names
    ("collections", "OrderedDict"): ("collections", "OrderedDict"),
    ("_codecs", "encode"): (__name__, "_latin1_encode"),
    # -- numpy (2.x spelling and the 1.x one) --------------------------------------------------------------
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"): (f"{_NP_CORE}.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"): (f"{_NP_CORE}.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"): (f"{_NP_CORE}.multiarray", "scalar"),
    ("numpy.core.multiarray", "scalar"): (f"{_NP_CORE}.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"): (f"{_NP_CORE}.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"): (f"{_NP_CORE}.numeric", "_frombuffer"),
    # -- pandas frames / series (3.x spelling, then 1.x/2.x module paths) ------------------------------------
    ("pandas", "DataFrame"): ("pandas", "DataFrame"),
    ("pandas.core.frame", "DataFrame"): ("pandas", "DataFrame"),
    ("pandas", "Series"): ("pandas", "Series"),
    ("pandas.core.series", "Series"): ("pandas", "Series"),
    ("pandas.core.internals.managers", "BlockManager"): ("pandas.core.internals.managers", "BlockManager"),
    ("pandas.core.internals.managers", "SingleBlockManager"): (
        "pandas.core.internals.managers",
        "SingleBlockManager",
    ),
    ("pandas._libs.internals", "_unpickle_block"): ("pandas._libs.internals", "_unpickle_block"),
    ("pandas.core.internals.blocks", "new_block"): ("pandas._libs.internals", "_unpickle_block"),
    # -- pandas indexes -----------------------------------------------------------------------------------
    ("pandas", "Index"): ("pandas", "Index"),
    ("pandas.core.indexes.base", "Index"): ("pandas", "Index"),
    ("pandas", "RangeIndex"): ("pandas", "RangeIndex"),
    ("pandas.core.indexes.range", "RangeIndex"): ("pandas", "RangeIndex"),
    ("pandas.core.indexes.numeric", "Int64Index"): ("pandas", "Index"),
    ("pandas.core.indexes.numeric", "UInt64Index"): ("pandas", "Index"),
    ("pandas.core.indexes.numeric", "Float64Index"): ("pandas", "Index"),
    ("pandas.core.indexes.base", "_new_Index"): ("pandas.core.indexes.base", "_new_Index"),
    # -- pandas 3 string columns (python storage) ---------------------------------------------------------
    ("pandas", "StringDtype"): ("pandas", "StringDtype"),
    (_PD_STR, "StringDtype"): ("pandas", "StringDtype"),
    ("pandas.arrays", "StringArray"): ("pandas.arrays", "StringArray"),
    (_PD_STR, "StringArray"): ("pandas.arrays", "StringArray"),
    ("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"): (
        "pandas._libs.arrays",
        "__pyx_unpickle_NDArrayBacked",
    ),
}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only :data:`ALLOWED_GLOBALS`.

    Any other global raises :class:`UnsafePickleError` (``check="allow-list"``, ``global_name`` =
    ``"module.name"``) at the opcode that names it, before it can be called. ``persistent_load`` is not
    supported (the base class raises ``UnpicklingError``).
    """

    def __init__(self, file: IO[bytes], *, source: str | None = None) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        target = ALLOWED_GLOBALS.get((module, name))
        if target is None:
            where = f" in {self.source}" if self.source else ""
            raise UnsafePickleError(
                f"refusing to unpickle global {module}.{name}{where}: not in the allow-list "
                "(appsim.data.safe_pickle.ALLOWED_GLOBALS)",
                path=self.source,
                check="allow-list",
                global_name=f"{module}.{name}",
            )
        mod_name, attr = target
        return getattr(importlib.import_module(mod_name), attr)


_MAGIC = ((b"\x1f\x8b", gzip.decompress), (b"BZh", bz2.decompress), (b"\xfd7zXZ\x00", lzma.decompress))


def safe_loads(data: bytes, *, source: str | None = None) -> Any:
    """Unpickle ``data`` (optionally gzip / bz2 / xz compressed) with :class:`RestrictedUnpickler`.

    raises UnsafePickleError for a non-allow-listed global; DataError (``check="unpickle"``) for a
    truncated / corrupt pickle or one that fails while rebuilding an allowed object.
    """
    for magic, decompress in _MAGIC:
        if data.startswith(magic):
            try:
                data = decompress(data)
            except (OSError, EOFError, lzma.LZMAError, ValueError) as e:
                raise DataError(
                    f"cannot decompress {source or 'pickle'}: {e}", path=source, check="unpickle"
                ) from e
            break
    try:
        return RestrictedUnpickler(io.BytesIO(data), source=source).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # corrupt stream, or an allowed constructor rejecting its arguments
        raise DataError(
            f"cannot unpickle {source or 'pickle'}: {type(e).__name__}: {e}", path=source, check="unpickle"
        ) from e


def safe_load(path: str | Path) -> Any:
    """Read and unpickle the file at ``path`` safely (see :func:`safe_loads`).

    raises DataError (``check="exists"``) when the file cannot be read, UnsafePickleError as above.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read pickle {p}: {e}", path=str(p), check="exists") from e
    return safe_loads(data, source=str(p))
