"""Converted-model directories: save once, restore straight into (sharded) device arrays.

Layout of a converted directory::

    OUT/config.json   {"model": kind, "config": cfg.to_dict(), "source": {...},
                       "format_version": 1, "extra_files": [...]}
    OUT/params/       orbax PyTree checkpoint (uncompressed) of the model's nnx.Param values,
                      nested dicts keyed by the parameter path (list indices as strings)
    OUT/<extra>       optional files copied beside (e.g. tokenizer/)

``params/`` is the layout orbax's PyTree checkpointer writes for one process (one OCDBT
database of uncompressed zarr v2 arrays named by their dotted path, and orbax's ``_METADATA``,
``_sharding``, ``array_metadatas/`` and ``_CHECKPOINT_METADATA`` files). In a single process
:class:`ParamWriter` writes it one array at a time (a converter streams its tensors into it:
only the array being written and a bounded batch are held); several processes save collectively
with orbax. ``config.json`` is written last, so a directory without it is an interrupted
conversion.
:func:`load_converted` builds the model abstractly (``nnx.eval_shape``, no weights allocated;
the structure is cached on disk while the compilation cache is on, see
:func:`videomv_jax.compile_cache.abstract_model_cache`), asks orbax to restore each parameter
directly with its target sharding (each device reads only its shard), and merges the result
into the model with ``nnx.merge``. On a single device (no mesh) the arrays are read straight
from the OCDBT/zarr store with tensorstore instead (the same bytes; orbax's per-array overhead
dominated the small packaged model's loading), falling back to orbax for any other layout.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path as FsPath
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from videomv_jax.models.registry import (
    ModelKind,
    Path,
    abstract_params,
    get_kind,
    kind_ref,
    path_str,
)

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
PARAMS_DIR = "params"

PathLike = str | os.PathLike


class ConvertedCheckpointError(ValueError):
    """A converted directory is incomplete or does not fit the model it claims to hold."""


# ---- helpers -----------------------------------------------------------------------------------


def _flat_params(params: Any) -> dict[Path, Any]:
    """{path: array} from a flat dict, an nnx.State or a Module (its nnx.Param variables)."""
    if isinstance(params, nnx.Module):
        params = nnx.state(params, nnx.Param)
    if isinstance(params, nnx.State):
        out = {}
        for path, var in nnx.to_flat_state(params):
            out[tuple(path)] = var.get_value() if isinstance(var, nnx.Variable) else var
        return out
    if isinstance(params, Mapping):
        bad = [k for k in params if not isinstance(k, tuple)]
        if bad:
            raise TypeError(f"params must be keyed by path tuples (as convert_state_dict "
                            f"returns), got keys like {bad[0]!r}")
        return dict(params)
    raise TypeError(f"params must be a flat {{path: array}} dict, an nnx.State or a Module, "
                    f"got {type(params).__name__}")


def _nest(flat: Mapping[Path, Any]) -> dict[str, Any]:
    """Nested dict keyed by ``str`` path elements (orbax wants string keys)."""
    root: dict[str, Any] = {}
    for path, value in flat.items():
        node = root
        for p in path[:-1]:
            node = node.setdefault(str(p), {})
            if not isinstance(node, dict):
                raise ValueError(f"parameter path {path_str(path)} collides with a leaf")
        node[str(path[-1])] = value
    return root


def _get(tree: Mapping[str, Any], path: Path) -> Any:
    for p in path:
        tree = tree[str(p)]
    return tree


def _flatten_str_tree(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(tree, Mapping):
        out: dict[tuple[str, ...], Any] = {}
        for k, v in tree.items():
            out.update(_flatten_str_tree(v, prefix + (str(k),)))
        return out
    return {prefix: tree}


def _compare_layout(have: Mapping[Path, Any], want: Mapping[Path, Any], what: str,
                    model: str) -> None:
    """Raise listing missing / unexpected / mis-shaped parameters (shapes only)."""
    have_s = {tuple(str(p) for p in k): tuple(np.shape(v)) for k, v in have.items()}
    want_s = {tuple(str(p) for p in k): tuple(v.shape) for k, v in want.items()}
    missing = sorted("/".join(k) for k in want_s if k not in have_s)
    unexpected = sorted("/".join(k) for k in have_s if k not in want_s)
    mism = sorted(f"{'/'.join(k)}: {what} {have_s[k]}, model {want_s[k]}"
                  for k in want_s if k in have_s and have_s[k] != want_s[k])
    if missing or unexpected or mism:
        lines = [f"{what} does not fit {model}:"]
        for title, items in (("missing", missing), ("unexpected", unexpected),
                             ("shape mismatches", mism)):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines.extend(f"    {x}" for x in items[:50])
                if len(items) > 50:
                    lines.append(f"    ... and {len(items) - 50} more")
        raise ConvertedCheckpointError("\n".join(lines))


def _checkpointer():
    """Synchronous orbax PyTree checkpointer without compression: float weights hardly
    compress, and orbax's zstd path holds compressed buffers about as large as the whole tree
    (measured: +1x host memory), while the uncompressed path stages only bounded batches."""
    import orbax.checkpoint as ocp

    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_compression=False))


def _saved_tree_metadata(ckptr, params_dir: FsPath) -> Any:
    md = ckptr.metadata(params_dir)
    md = getattr(md, "item_metadata", md)
    return getattr(md, "tree", md)


# ---- incremental writer --------------------------------------------------------------------------

#: OCDBT settings orbax uses for its checkpoints (small values such as the zarr metadata inline,
#: one root node, the single-file manifest)
_OCDBT_CONFIG = {"max_inline_value_bytes": 1024, "max_decoded_node_bytes": 100_000_000,
                 "manifest_kind": "single"}
#: bytes of arrays staged before a commit (larger arrays are committed alone)
WRITE_BATCH_BYTES = 64 * 2**20


class ParamWriter:
    """Write the ``params/`` of a converted directory one array at a time.

    The layout is the one orbax's ``PyTreeCheckpointHandler(use_compression=False)`` writes in a
    single process (so orbax's restore and :func:`load_converted`'s tensorstore reader both read
    it): every array is a zarr v2 array (one uncompressed chunk) named by its dotted path in one
    OCDBT database at the directory's root, next to the tree metadata (``_METADATA``), the
    sharding (``_sharding``), the per-array metadata (``array_metadatas/process_0``) and
    ``_CHECKPOINT_METADATA`` that :meth:`close` writes. Arrays are staged in a tensorstore
    transaction that is committed every :data:`WRITE_BATCH_BYTES`: at any moment this holds at
    most that batch (one copy) plus the array being added, never the whole tree. Use as a
    context manager; leaving it with an exception writes no metadata (the directory is then
    not a checkpoint).
    """

    def __init__(self, params_dir: PathLike, batch_bytes: int = WRITE_BATCH_BYTES):
        import tensorstore as ts

        self.dir = FsPath(params_dir).absolute()
        self.dir.mkdir(parents=True, exist_ok=False)
        self.batch_bytes = int(batch_bytes)
        self.shapes: dict[Path, tuple[int, ...]] = {}
        self._ts = ts
        self._ctx = ts.Context()
        self._kv = {"driver": "ocdbt", "base": f"file://{self.dir}", "config": _OCDBT_CONFIG}
        self._txn = ts.Transaction()
        self._pending: list[Any] = []
        self._staged = 0
        self._t0 = time.time_ns()
        self._closed = False

    def add(self, path: Path, value: Any) -> None:
        """Stage ``value`` (a numpy or jax array) as the parameter at ``path``."""
        if self._closed:
            raise RuntimeError("ParamWriter is closed")
        path = tuple(path)
        parts = [str(p) for p in path]
        if not parts or any(not p or "." in p or "/" in p for p in parts):
            raise ValueError(f"parameter path {path!r} cannot be stored (empty, or an element "
                             f"with '.' or '/')")
        if path in self.shapes:
            raise ValueError(f"parameter {path_str(path)} is written twice")
        arr = np.asarray(value)
        if not arr.flags["C_CONTIGUOUS"]:
            arr = arr.copy(order="C")  # (np.ascontiguousarray would make a scalar 1-d)
        if arr.size == 0:
            raise ValueError(f"parameter {path_str(path)} is empty (shape {arr.shape})")
        spec = {"driver": "zarr", "kvstore": {**self._kv, "path": ".".join(parts)},
                "dtype": jnp.dtype(arr.dtype).name,
                "metadata": {"shape": list(arr.shape), "chunks": list(arr.shape),
                             "compressor": None},
                "create": True, "store_data_equal_to_fill_value": True,
                "recheck_cached_data": False, "recheck_cached_metadata": False}
        store = self._ts.open(spec, context=self._ctx, transaction=self._txn).result()
        future = store.write(arr)
        future.copy.result()  # staged in the transaction: ``value`` may be freed now
        self._pending.append(future)
        self.shapes[path] = tuple(int(d) for d in arr.shape)
        self._staged += arr.nbytes
        del arr, store
        if self._staged >= self.batch_bytes:
            self._commit()

    def _commit(self) -> None:
        for f in self._pending:
            f.result()
        self._txn.commit_async().result()
        self._txn, self._pending, self._staged = self._ts.Transaction(), [], 0

    def close(self) -> dict[Path, tuple[int, ...]]:
        """Commit what is staged and write orbax's metadata files; returns ``{path: shape}``."""
        if self._closed:
            return self.shapes
        self._commit()
        self._closed = True
        if not self.shapes:
            raise ValueError("no parameters were written")
        _nest({p: None for p in self.shapes})  # a path that is also a prefix of another fails
        _write_orbax_metadata(self.dir, self.shapes, self._t0)
        return self.shapes

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            self._txn.abort()

    def __enter__(self) -> ParamWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _write_orbax_metadata(params_dir: FsPath, shapes: Mapping[Path, tuple[int, ...]],
                          t0_ns: int) -> None:
    """orbax's side files of a single-process PyTree checkpoint of jax arrays on the CPU."""
    import base64

    import orbax.checkpoint as ocp

    tree = {}
    sharding = ocp.metadata.SingleDeviceShardingMetadata.from_jax_sharding(
        jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])).to_serialized_string()
    shard_file, arrays = {}, []
    # in the order of orbax's tree flattening (keys sorted level by level)
    for keys, shape in sorted((tuple(str(p) for p in path), shape)
                              for path, shape in shapes.items()):
        name = ".".join(keys)
        tree[str(keys)] = {"key_metadata": [{"key": k, "key_type": 2} for k in keys],
                           "value_metadata": {"value_type": "jax.Array",
                                              "skip_deserialize": False,
                                              "write_shape": list(shape)}}
        shard_file[base64.urlsafe_b64encode(name.encode()).decode()] = sharding
        arrays.append({"array_metadata": {"param_name": name, "write_shape": list(shape),
                                          "chunk_shape": list(shape), "ext_metadata": None}})
    meta = {"tree_metadata": tree, "use_ocdbt": True, "use_zarr3": False,
            "store_array_data_equal_to_fill_value": True, "custom_metadata": None}
    (params_dir / "_METADATA").write_text(json.dumps(meta))
    (params_dir / "_sharding").write_text(json.dumps(shard_file))
    (params_dir / "array_metadatas").mkdir(exist_ok=True)
    (params_dir / "array_metadatas" / "process_0").write_text(
        json.dumps({"array_metadatas": arrays}))
    handler = ocp.PyTreeCheckpointHandler
    (params_dir / "_CHECKPOINT_METADATA").write_text(json.dumps({
        "item_handlers": f"{handler.__module__}.{handler.__qualname__}", "metrics": {},
        "performance_metrics": {}, "init_timestamp_nsecs": t0_ns,
        "commit_timestamp_nsecs": time.time_ns(), "custom_metadata": {}}))


# ---- save --------------------------------------------------------------------------------------


def save_converted(
    directory: PathLike,
    kind: str | ModelKind,
    config: Any,
    params: Any,
    source_info: Mapping[str, Any] | None = None,
    extra_files: Iterable[PathLike | tuple[PathLike, str]] = (),
    *,
    overwrite: bool = False,
    check: bool = True,
    storage_dtype: str | None = None,
) -> FsPath:
    """Write a converted-model directory (layout in the module docstring); returns its path.

    ``params``: ``{path: array}`` (as ``convert_state_dict`` returns), an ``nnx.State``, a
    Module (its ``nnx.Param`` values), or an iterable of ``(path, array)`` pairs (e.g.
    :func:`videomv_jax.convert.registry.iter_converted`), which is consumed one array at a
    time: each is written (:class:`ParamWriter`) before the next is asked for, so a converter
    never holds the whole model.
    ``storage_dtype`` (e.g. ``"float16"``) stores the floating-point parameters in that dtype
    (half the bytes; the packaged videomv-tiny uses it); :func:`load_converted` casts them back
    to the dtype of the model the config builds.
    ``extra_files``: paths (copied under their base name; directories recursively) or
    ``(path, name)`` pairs. ``check`` compares the parameter layout with the model that
    ``config`` builds (abstractly), so that a saved directory always loads: before writing
    for a mapping / State / Module, after writing (before ``config.json``) for an iterable.
    Refuses a non-empty existing directory unless ``overwrite``. Several processes (parameters
    spanning them) save collectively with orbax; an iterable needs a single process.
    """
    k = get_kind(kind)
    ref = kind_ref(kind)
    cfg_cls = k.config_cls()
    if not isinstance(config, cfg_cls):
        raise ConvertedCheckpointError(f"config is a {type(config).__name__}, but a {k.name!r} "
                                       f"model needs a {cfg_cls.__name__}")
    dt = None
    if storage_dtype is not None:
        dt = jnp.dtype(storage_dtype)
        if not jnp.issubdtype(dt, jnp.floating):
            raise ValueError(f"storage_dtype must be a floating dtype, got {storage_dtype!r}")
    stream = not isinstance(params, (Mapping, nnx.State, nnx.Module))
    multi = jax.process_count() > 1
    if stream and multi:
        raise ValueError("saving an iterable of (path, array) pairs needs a single process; "
                         "pass a dict, State or Module")
    abstract = None
    if check:
        abstract = abstract_params(k.abstract(config))
    flat: dict[Path, Any] = {}
    if not stream:
        flat = _flat_params(params)
        if abstract is not None:
            _compare_layout(flat, abstract, "params", k.name)
    extras: list[tuple[FsPath, str]] = []
    for item in extra_files:
        src, name = (item if isinstance(item, tuple) else (item, os.path.basename(
            os.path.normpath(os.fspath(item)))))
        src = FsPath(src)
        if not src.exists():
            raise FileNotFoundError(f"extra file {str(src)!r} does not exist")
        if name in (CONFIG_FILE, PARAMS_DIR) or not name or "/" in name:
            raise ValueError(f"extra file name {name!r} is not allowed")
        extras.append((src, name))

    # Several processes (a multi-host run: parameters spanning all of them) all call this:
    # process 0 alone touches the directory and its side files, orbax saves collectively.
    from videomv_jax.parallel.multihost import barrier, is_main

    out = FsPath(directory)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{str(out)!r} exists and is not empty (pass overwrite=True / "
                              f"--overwrite to replace it)")
    barrier(f"save_converted:check:{out}")  # everyone looked before process 0 removes it
    if is_main():
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
        out.mkdir(parents=True, exist_ok=True)
    barrier(f"save_converted:mkdir:{out}")

    def stored(value: Any) -> Any:
        if dt is not None and jnp.issubdtype(value.dtype, jnp.floating) and value.dtype != dt:
            return (jnp.asarray(value) if multi else np.asarray(value)).astype(dt)
        return value

    if multi:
        import orbax.checkpoint as ocp

        with _checkpointer() as ckptr:
            ckptr.save(out.absolute() / PARAMS_DIR, args=ocp.args.PyTreeSave(_nest(
                {p: stored(v) for p, v in flat.items()})))
        shapes = {p: tuple(np.shape(v)) for p, v in flat.items()}
    else:
        items = params if stream else flat.items()
        with ParamWriter(out / PARAMS_DIR) as writer:
            for path, value in items:
                writer.add(path, stored(value))
                del value
        shapes = writer.shapes
        if stream and abstract is not None:
            _compare_layout({p: np.broadcast_to(np.zeros((), np.int8), s)
                             for p, s in shapes.items()}, abstract, "params", k.name)
    if not is_main():
        barrier(f"save_converted:done:{out}")
        return out
    for src, name in extras:
        if src.is_dir():
            shutil.copytree(src, out / name)
        else:
            shutil.copy2(src, out / name)
    meta = {
        "model": ref,
        "config": config.to_dict(),
        "source": dict(source_info or {}),
        "format_version": FORMAT_VERSION,
        "extra_files": [name for _, name in extras],
        "num_params": int(sum(int(np.prod(shape)) for shape in shapes.values())),
    }
    if storage_dtype is not None:
        meta["storage_dtype"] = jnp.dtype(storage_dtype).name
    tmp = out / (CONFIG_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    os.replace(tmp, out / CONFIG_FILE)
    barrier(f"save_converted:done:{out}")
    return out


# ---- load --------------------------------------------------------------------------------------


def read_converted_config(directory: PathLike) -> dict[str, Any]:
    """The parsed ``config.json`` of a converted directory, checked for completeness."""
    d = FsPath(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"converted model directory {str(d)!r} does not exist")
    cfg_path = d / CONFIG_FILE
    if not cfg_path.is_file():
        raise ConvertedCheckpointError(
            f"{str(d)!r} is not a complete converted model: {CONFIG_FILE} is missing (written "
            f"last, so the conversion was probably interrupted; run "
            f"tools/convert_torch_weights.py again)")
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ConvertedCheckpointError(f"{str(cfg_path)!r} is not valid JSON: {err}") from err
    missing = [key for key in ("model", "config", "format_version") if key not in meta]
    if missing:
        raise ConvertedCheckpointError(f"{str(cfg_path)!r} lacks {missing}")
    if meta["format_version"] != FORMAT_VERSION:
        raise ConvertedCheckpointError(
            f"{str(d)!r} has format_version {meta['format_version']}, this code reads "
            f"{FORMAT_VERSION}; convert the weights again")
    if not (d / PARAMS_DIR).is_dir():
        raise ConvertedCheckpointError(f"{str(d)!r} is incomplete: the {PARAMS_DIR}/ "
                                       f"directory is missing")
    return meta


def load_converted(
    directory: PathLike,
    mesh: jax.sharding.Mesh | None = None,
    rules: Mapping[str, Any] | None = None,
    *,
    kind: str | ModelKind | None = None,
) -> tuple[nnx.Module, Any]:
    """Load a converted directory as ``(model, config)``.

    The model is built abstractly (one trace of its constructor); parameters are restored by
    orbax directly into arrays with their final sharding: ``NamedSharding`` from ``rules`` (default
    :data:`videomv_jax.parallel.DEFAULT_RULES`) on ``mesh``, or the first local device without a
    mesh. Non-parameter state (e.g. dropout RNG keys) is created fresh, as a new model would.
    ``kind``, when given, must match the stored kind. Raises :class:`ConvertedCheckpointError`
    for an incomplete directory or when the stored parameters do not fit the model its
    ``config.json`` describes.
    """
    d = FsPath(directory).absolute()
    meta = read_converted_config(d)
    stored_kind = meta["model"]
    if kind is not None and kind_ref(kind) != stored_kind:
        raise ConvertedCheckpointError(f"{str(d)!r} holds a {stored_kind!r} model, not "
                                       f"{kind_ref(kind)!r}")
    k = get_kind(stored_kind)
    config = k.config_from_dict(meta["config"])
    if mesh is not None:
        rest_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    else:
        rest_sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    from videomv_jax.compile_cache import abstract_model_cache

    graphdef, params_abs, rest = abstract_model_cache(
        k.name, meta["config"], lambda: _abstract_params_and_rest(k, config, None))
    rest = jax.device_put(rest, rest_sharding)

    if mesh is not None:
        from videomv_jax.parallel.mesh import param_shardings

        shard_state = param_shardings(params_abs, mesh, rules)
        shardings = {tuple(p): v.get_value() for p, v in nnx.to_flat_state(shard_state)}
    else:
        single = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = None
    flat_abs = {tuple(p): v for p, v in nnx.to_flat_state(params_abs)}
    target_flat = {}
    for p, var in flat_abs.items():
        sds = var.get_value()
        sh = shardings[p] if shardings is not None else single
        target_flat[p] = jax.ShapeDtypeStruct(sds.shape, sds.dtype, sharding=sh)

    layout_args = (f"the parameters stored in {str(d)!r}",
                   f"the {stored_kind!r} model its config.json describes")
    restored = None
    saved = _stored_shapes(d / PARAMS_DIR)
    if saved is not None:
        try:
            _compare_layout(saved, target_flat, *layout_args)
        except ConvertedCheckpointError:
            # ``write_shape`` is the shape of one shard for an array saved sharded (an export of
            # a multi-device / multi-process run): orbax's own metadata has the global shapes
            saved = None
    if saved is not None and mesh is None:
        restored = _read_single_device(d / PARAMS_DIR, target_flat)
    if restored is None:
        import orbax.checkpoint as ocp

        from videomv_jax.parallel.multihost import barrier

        # arrive together: orbax's own process sync uses CPU collectives with a short timeout
        barrier("load_converted")
        with _checkpointer() as ckptr:
            if saved is None:
                saved = _flatten_str_tree(_saved_tree_metadata(ckptr, d / PARAMS_DIR))
                _compare_layout(saved, target_flat, *layout_args)
            target = _nest(target_flat)
            restored = ckptr.restore(d / PARAMS_DIR, args=ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)))

    params = nnx.from_flat_state([(p, var.replace(_get(restored, p)))
                                  for p, var in flat_abs.items()])
    del restored
    model = nnx.merge(graphdef, params, rest)
    return model, config


def _stored_shapes(params_dir: FsPath) -> dict[tuple[str, ...], Any] | None:
    """``{path: ShapeDtypeStruct}`` (shapes only) from the checkpoint's ``_METADATA`` JSON
    (orbax's tree metadata: key paths and written shapes, which are the global shapes only for
    arrays saved unsharded, as converted checkpoints are), read directly: orbax's
    ``metadata()`` opens every array (~0.5 s for the tiny UNet's 712 arrays on 2 cores).
    ``None`` when the file is not in the layout this reads (then orbax is asked)."""
    try:
        meta = json.loads((params_dir / "_METADATA").read_text())
        out = {}
        for entry in meta["tree_metadata"].values():
            path = tuple(str(k["key"]) for k in entry["key_metadata"])
            shape = tuple(int(n) for n in entry["value_metadata"]["write_shape"])
            out[path] = jax.ShapeDtypeStruct(shape, np.bool_)
        return out if out else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _read_single_device(params_dir: FsPath, target_flat: Mapping[Path, jax.ShapeDtypeStruct]
                        ) -> dict[str, Any] | None:
    """Every parameter read straight from the OCDBT/zarr store with tensorstore (one shared
    context, all arrays opened and read concurrently), cast to the target dtype and put on its
    device in one transfer: ~0.3 s for the tiny UNet where orbax's restore takes ~1 s (per-array
    asyncio and metadata work). Returns the nested dict orbax's restore would, or ``None``
    (then orbax restores) when the directory is not the single-process OCDBT + zarr2 layout
    ``save_converted`` writes or any array cannot be read that way."""
    try:
        meta = json.loads((params_dir / "_METADATA").read_text())
        if not meta.get("use_ocdbt") or meta.get("use_zarr3"):
            return None
        import tensorstore as ts

        paths = list(target_flat)
        names = []
        for p in paths:
            parts = [str(x) for x in p]
            if any("." in x for x in parts):
                return None
            names.append(".".join(parts))
        ctx = ts.Context()
        base = {"driver": "ocdbt", "base": f"file://{params_dir.absolute()}"}
        opened = [ts.open({"driver": "zarr", "kvstore": {**base, "path": n}}, open=True,
                          read=True, context=ctx) for n in names]
        stores = [f.result() for f in opened]
        reads = [s.read() for s in stores]
        host = []
        for p, r in zip(paths, reads, strict=True):
            want = target_flat[p]
            arr = np.asarray(r.result())
            if arr.shape != tuple(want.shape):
                return None
            host.append(arr.astype(want.dtype, copy=False))
        shardings = {target_flat[p].sharding for p in paths}
        if len(shardings) != 1:
            return None
        arrays = jax.device_put(host, shardings.pop())  # one sharding: no per-leaf prefix match
    except Exception:  # noqa: BLE001 - any other layout or reader problem: orbax reads it
        return None
    return _nest(dict(zip(paths, arrays, strict=True)))


def _abstract_params_and_rest(k: ModelKind, config: Any,
                              rest_sharding: jax.sharding.Sharding | None
                              ) -> tuple[Any, nnx.State, nnx.State]:
    """(graphdef, abstract nnx.Param state, concrete non-parameter state) from one trace.

    The constructor is traced once under ``jax.jit`` (what ``nnx.eval_shape`` costs); the
    parameter shapes and the graph definition are read off the trace, and only the
    non-parameter state (dropout RNG keys and counters, buffers) is returned, with the values a
    fresh model has. XLA drops the unused parameter initialisers, so no weights are
    materialised.
    """
    box: dict[str, Any] = {}

    def make():
        # A NumPy RNG counter avoids JAX's quadratic tracer checks on every rngs() call
        # (see videomv_jax.models.abstract_model).
        rngs = nnx.Rngs(0)
        rngs.default.count.set_value(np.zeros((), np.uint32))
        graphdef, params, rest = nnx.split(k.build(config, rngs), nnx.Param, ...)
        box["graphdef"] = graphdef
        box["params"] = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
        return rest

    kwargs = {} if rest_sharding is None else {"out_shardings": rest_sharding}
    rest = jax.jit(make, **kwargs)()
    return box["graphdef"], box["params"], rest
