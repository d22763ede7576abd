"""The in-memory form every image data set takes: classes of equally many uint8 images."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class ImageDataset:
    """Images grouped by class, as one uint8 array that task samplers index directly.

    Args:
        images: uint8 array of shape (num_classes, images_per_class, C, H, W); it may be
            memory-mapped. Pixel values are read as intensities in [0, 255].
        class_names: one name per class (default: the class indices as strings).

    Raises:
        ValueError: ``images`` is not a 5-d uint8 array, or ``class_names`` has the wrong length.
    """

    def __init__(self, images: np.ndarray, class_names: Sequence[str] | None = None) -> None:
        if images.dtype != np.uint8 or images.ndim != 5:
            raise ValueError(
                "images must be a uint8 array of shape (num_classes, images_per_class, C, H, W), "
                f"got dtype {images.dtype} and shape {images.shape}"
            )
        names = (
            tuple(class_names) if class_names is not None else tuple(map(str, range(len(images))))
        )
        if len(names) != len(images):
            raise ValueError(f"{len(names)} class names given for {len(images)} classes")
        self.images = images
        self.class_names = names

    @property
    def num_classes(self) -> int:
        """Number of classes (the first dimension of :attr:`images`)."""
        return self.images.shape[0]

    @property
    def images_per_class(self) -> int:
        """Number of images of each class (the second dimension of :attr:`images`)."""
        return self.images.shape[1]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape (C, H, W) of one image."""
        channels, height, width = self.images.shape[2:]
        return channels, height, width

    def __len__(self) -> int:
        return self.num_classes

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_classes={self.num_classes}, "
            f"images_per_class={self.images_per_class}, image_shape={self.image_shape})"
        )
