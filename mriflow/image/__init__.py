"""The image model: affine math, the ``.mri`` accessor, and image construction."""

from mriflow.image import accessor as _accessor  # noqa: F401  (registers ``.mri``)
from mriflow.image.accessor import MriAccessor
from mriflow.image.model import default_dims, from_array, make_image

__all__ = ["MriAccessor", "default_dims", "from_array", "make_image"]
