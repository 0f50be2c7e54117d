"""The Tractogram: ragged streamlines in RAS+ mm, with per-streamline seed id and stop reasons.

Layout as TRX and nibabel's ``ArraySequence``: ``positions`` ``(n_points, 3)`` float32,
``offsets`` ``(n_streamlines + 1,)`` int64, plus the reference grid (``affine`` voxel-to-RAS
and ``dimensions``) the streamlines were tracked in. ``.trk`` and ``.trx`` keep the
per-streamline data; ``.tck`` has no room for it (loading gives seed ids ``-1`` and reason
``none``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mriflow.errors import MissingFileError, TractogramFormatError
from mriflow.track.kernels import STOP_REASONS

__all__ = ["FORMATS", "Tractogram", "load", "output_paths"]

#: File extensions :meth:`Tractogram.save` and :func:`load` handle.
FORMATS = (".trk", ".tck", ".trx")


def output_paths(path: str | os.PathLike[str]) -> tuple[Path, str, Path]:
    """``(path, format suffix, temporary name)`` of a streamline file to write; an unknown
    format is a :class:`TractogramFormatError` naming ``path``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise TractogramFormatError(
            f"{path}: unknown streamline format {suffix!r}; use one of {FORMATS}"
        )
    return path, suffix, path.with_name(path.name + ".partial" + suffix)


def trk_header(affine: np.ndarray, dimensions: tuple[int, int, int]) -> dict[Any, Any]:
    """The .trk header fields of streamlines in RAS mm on the grid ``affine``/``dimensions``."""
    import nibabel as nib
    from nibabel.orientations import aff2axcodes

    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    return {
        nib.streamlines.Field.VOXEL_TO_RASMM: np.asarray(affine),
        nib.streamlines.Field.DIMENSIONS: np.asarray(dimensions, np.int16),
        nib.streamlines.Field.VOXEL_SIZES: zooms.astype(np.float32),
        nib.streamlines.Field.VOXEL_ORDER: "".join(aff2axcodes(affine)),
    }


@dataclass(frozen=True, eq=False)
class Tractogram:
    """Streamlines in RAS+ mm with their reference grid.

    ``seed_ids`` ``(n,)`` int64: the global id of the seed each streamline grew from;
    ``stop_reasons`` ``(n, 2)`` uint8: why its backward and forward ends stopped (codes of
    :data:`STOP_REASONS`).
    """

    positions: np.ndarray
    offsets: np.ndarray
    seed_ids: np.ndarray
    stop_reasons: np.ndarray
    affine: np.ndarray
    dimensions: tuple[int, int, int]

    def __post_init__(self) -> None:
        n = len(self.offsets) - 1
        if (
            self.positions.ndim != 2
            or self.positions.shape[1] != 3
            or n < 0
            or self.offsets[-1] != len(self.positions)
            or self.seed_ids.shape != (n,)
            or self.stop_reasons.shape != (n, 2)
        ):
            raise TractogramFormatError(
                f"tractogram: inconsistent arrays: positions {self.positions.shape}, "
                f"offsets {self.offsets.shape} ending at {self.offsets[-1] if n >= 0 else None}, "
                f"seed_ids {self.seed_ids.shape}, stop_reasons {self.stop_reasons.shape}"
            )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> np.ndarray:
        """Points ``(n, 3)`` of streamline ``index``."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"streamline {index} of {len(self)}")
        index %= len(self)
        return self.positions[self.offsets[index] : self.offsets[index + 1]]

    def __repr__(self) -> str:
        return (
            f"<Tractogram: {len(self)} streamlines, {len(self.positions)} points, "
            f"grid {self.dimensions}, mean length {self.mean_length():.1f} mm>"
        )

    @property
    def n_points(self) -> np.ndarray:
        """Points per streamline."""
        return np.diff(self.offsets)

    def lengths(self) -> np.ndarray:
        """Arc length of each streamline in mm."""
        steps = np.linalg.norm(np.diff(self.positions.astype(np.float64), axis=0), axis=1)
        cumulative = np.concatenate([[0.0], np.cumsum(steps)])
        ends = self.offsets[1:] - 1
        starts = self.offsets[:-1]
        return np.where(self.n_points > 0, cumulative[ends] - cumulative[starts], 0.0)

    def mean_length(self) -> float:
        """Mean arc length in mm (0 when empty)."""
        return float(self.lengths().mean()) if len(self) else 0.0

    def stop_reason_names(self) -> np.ndarray:
        """``(n, 2)`` names of the stop reasons (``"endpoint"``, ``"outside"``, ...)."""
        return np.asarray(STOP_REASONS, dtype=object)[self.stop_reasons]

    @property
    def valid(self) -> np.ndarray:
        """True where both ends stopped at the stopping map or the image edge (dipy's
        VALIDSTREAMLINE), not by angle, length or invalid data."""
        good = np.isin(self.stop_reasons, [1, 2])
        return np.asarray(good.all(axis=1))

    def select(self, keep: np.ndarray) -> Tractogram:
        """The streamlines where boolean ``keep`` is True (or the given indices)."""
        index = np.arange(len(self))[keep]
        counts = self.n_points[index]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        shift = np.repeat(self.offsets[index] - offsets[:-1], counts)
        point_index = np.arange(offsets[-1], dtype=np.int64) + shift
        return Tractogram(
            self.positions[point_index],
            offsets,
            self.seed_ids[index],
            self.stop_reasons[index],
            self.affine,
            self.dimensions,
        )

    def voxel_positions(self) -> np.ndarray:
        """Positions as fractional voxel indices of the reference grid."""
        inverse = np.linalg.inv(self.affine)
        return self.positions.astype(np.float64) @ inverse[:3, :3].T + inverse[:3, 3]

    def density_map(self) -> np.ndarray:
        """Number of streamlines visiting each voxel of the reference grid."""
        counts = np.zeros(self.dimensions, np.int64)
        voxels = np.rint(self.voxel_positions()).astype(np.int64)
        inside = ((voxels >= 0) & (voxels < np.asarray(self.dimensions))).all(axis=1)
        owner = np.repeat(np.arange(len(self)), self.n_points)
        flat = np.ravel_multi_index(tuple(voxels[inside].T), self.dimensions)
        pairs = np.unique(np.stack([owner[inside], flat], axis=1), axis=0)
        np.add.at(counts.reshape(-1), pairs[:, 1], 1)
        return counts

    # --- files --------------------------------------------------------------------------

    def _nibabel_tractogram(self, with_data: bool):  # type: ignore[no-untyped-def]
        import nibabel as nib

        sequence = nib.streamlines.ArraySequence()
        sequence._data = np.asarray(self.positions, dtype=np.float32)
        sequence._offsets = np.asarray(self.offsets[:-1], dtype=np.int64)
        sequence._lengths = np.asarray(self.n_points, dtype=np.int64)
        data = {}
        if with_data:
            data = {
                "seed_id": self.seed_ids.astype(np.float32)[:, None],
                "stop_reason": self.stop_reasons.astype(np.float32),
            }
        return nib.streamlines.Tractogram(
            sequence, data_per_streamline=data, affine_to_rasmm=np.eye(4)
        )

    def _reference_header(self):  # type: ignore[no-untyped-def]
        import nibabel as nib

        header = nib.Nifti1Header()
        header.set_data_shape(self.dimensions)
        header.set_sform(self.affine, code=1)
        header.set_qform(self.affine, code=1)
        zooms = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        header.set_zooms(tuple(float(z) for z in zooms))
        return header

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``.trk`` / ``.tck`` (nibabel.streamlines) or ``.trx`` (trx-python), in the
        reference image's space. Written to a temporary name, then renamed."""
        path, suffix, partial = output_paths(path)
        if suffix == ".trx":
            self._save_trx(partial)
        else:
            self._save_nibabel(partial, suffix)
        os.replace(partial, path)
        return path

    def _save_nibabel(self, path: Path, suffix: str) -> None:
        import nibabel as nib

        tractogram = self._nibabel_tractogram(with_data=(suffix == ".trk"))
        if suffix == ".trk":
            header = trk_header(self.affine, self.dimensions)
            nib.streamlines.TrkFile(tractogram, header=header).save(str(path))
        else:
            nib.streamlines.TckFile(tractogram).save(str(path))

    def _save_trx(self, path: Path) -> None:
        from trx import trx_file_memmap

        trx = trx_file_memmap.TrxFile.from_tractogram(
            self._nibabel_tractogram(with_data=False),
            self._reference_header(),
            dtype_dict={"positions": np.float32, "offsets": np.uint64, "dpv": {}, "dps": {}},
        )
        try:
            trx.data_per_streamline["seed_id"] = self.seed_ids.astype(np.int64)[:, None]
            trx.data_per_streamline["stop_reason"] = self.stop_reasons.astype(np.uint8)
            trx_file_memmap.save(trx, str(path))
        finally:
            trx.close()


def load(path: str | os.PathLike[str], reference: Tractogram | None = None) -> Tractogram:
    """Read a ``.trk``, ``.tck`` or ``.trx`` file back into a :class:`Tractogram`.

    ``.tck`` stores no grid: pass ``reference`` (a Tractogram in the same space) to get its
    affine and dimensions; otherwise the identity and the bounding box are used.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path}: no such streamline file")
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise TractogramFormatError(
            f"{path}: unknown streamline format {suffix!r}; use one of {FORMATS}"
        )
    from nibabel.streamlines.tractogram_file import DataError, HeaderError

    try:
        if suffix == ".trx":
            return _load_trx(path)
        return _load_nibabel(path, suffix, reference)
    except (OSError, ValueError, KeyError, HeaderError, DataError) as error:
        if isinstance(error, MissingFileError | TractogramFormatError):
            raise
        raise TractogramFormatError(f"{path}: cannot read streamlines: {error}") from error


def _ragged(data: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return np.ascontiguousarray(data, dtype=np.float32).reshape(-1, 3), offsets


def _load_nibabel(path: Path, suffix: str, reference: Tractogram | None) -> Tractogram:
    import nibabel as nib

    loaded = nib.streamlines.load(str(path))
    streamlines = loaded.tractogram.streamlines
    positions, offsets = _ragged(streamlines.get_data(), np.asarray(streamlines._lengths))
    n = len(offsets) - 1
    data = loaded.tractogram.data_per_streamline
    seed_ids = (
        np.rint(np.asarray(data["seed_id"])[:, 0]).astype(np.int64)
        if "seed_id" in data
        else np.full(n, -1, np.int64)
    )
    reasons = (
        np.rint(np.asarray(data["stop_reason"])).astype(np.uint8)
        if "stop_reason" in data
        else np.zeros((n, 2), np.uint8)
    )
    if suffix == ".trk":
        header = loaded.header
        affine = np.asarray(header[nib.streamlines.Field.VOXEL_TO_RASMM], dtype=np.float64)
        dimensions = tuple(int(d) for d in header[nib.streamlines.Field.DIMENSIONS])
    elif reference is not None:
        affine, dimensions = reference.affine, reference.dimensions
    else:
        affine = np.eye(4)
        top = np.ceil(positions.max(axis=0)) + 1 if len(positions) else np.ones(3)
        dimensions = tuple(int(max(d, 1)) for d in top)
    return Tractogram(positions, offsets, seed_ids, reasons, affine, dimensions)  # type: ignore[arg-type]


def _load_trx(path: Path) -> Tractogram:
    from trx import trx_file_memmap

    trx = trx_file_memmap.load(str(path))
    try:
        streamlines = trx.streamlines
        # Copy out of the memory map before it is closed.
        positions, offsets = _ragged(
            np.array(streamlines._data, copy=True), np.array(streamlines._lengths, copy=True)
        )
        n = len(offsets) - 1
        dps = trx.data_per_streamline
        seed_ids = (
            np.array(dps["seed_id"], copy=True).reshape(n).astype(np.int64)
            if "seed_id" in dps
            else np.full(n, -1, np.int64)
        )
        reasons = (
            np.array(dps["stop_reason"], copy=True).reshape(n, 2).astype(np.uint8)
            if "stop_reason" in dps
            else np.zeros((n, 2), np.uint8)
        )
        affine = np.array(trx.header["VOXEL_TO_RASMM"], dtype=np.float64)
        dimensions = tuple(int(d) for d in trx.header["DIMENSIONS"])
    finally:
        trx.close()
    return Tractogram(positions, offsets, seed_ids, reasons, affine, dimensions)  # type: ignore[arg-type]
