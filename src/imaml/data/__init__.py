"""Few-shot data: Omniglot, mini-ImageNet and sinusoid tasks, sampled as batched task tensors.

Data sets hold classes of equally many images as one uint8 array of shape
(num_classes, images_per_class, C, H, W); :class:`TaskSampler` draws N-way K-shot tasks from them
(or regression tasks from :class:`Sinusoid`) as float32 tensors, each task a pure function of the
seed and its global index, so that runs resume and shard across processes reproducibly.
"""

from imaml.data._io import ChecksumError, DatasetError, DatasetNotFoundError, default_cache_dir
from imaml.data.base import ImageDataset
from imaml.data.miniimagenet import MiniImageNet
from imaml.data.omniglot import Omniglot
from imaml.data.sampler import TaskBatch, TaskSampler, task_generator
from imaml.data.sinusoid import Sinusoid, SinusoidTask

__all__ = [
    "ChecksumError",
    "DatasetError",
    "DatasetNotFoundError",
    "ImageDataset",
    "MiniImageNet",
    "Omniglot",
    "Sinusoid",
    "SinusoidTask",
    "TaskBatch",
    "TaskSampler",
    "default_cache_dir",
    "task_generator",
]
