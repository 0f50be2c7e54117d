"""NIfTI-Zarr stores: archival, chunked, compressed images that other tools can open.

``to_zarr`` writes an image (or a Dataset of maps) chunk by chunk and resumably,
``open_zarr`` opens a store lazily, ``convert`` turns NIfTI files into stores and back.
The layout is NIfTI-Zarr 1.0 (an OME-Zarr multiscale image plus the binary NIfTI header),
see :mod:`mriflow.io.zarr._layout`.
"""

from mriflow.io.zarr._convert import convert, is_zarr_location
from mriflow.io.zarr._read import open_zarr
from mriflow.io.zarr._write import to_zarr

__all__ = ["convert", "is_zarr_location", "open_zarr", "to_zarr"]
