from .naive import naive_chunk_gdn2, naive_recurrent_gdn2
from .torch_impl import chunk_gdn2_torch, recurrent_gdn2_torch

__all__ = ["chunk_gdn2_torch", "naive_chunk_gdn2", "naive_recurrent_gdn2", "recurrent_gdn2_torch"]
