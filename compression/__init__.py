"""Deep Compression for any PyTorch model: prune, share weights, entropy-code, save.

Pure PyTorch + numpy; never imports ray or mlflow.

    >>> prune_(model, MagnitudePrune(sparsity=0.9))           # then retrain
    >>> share_weights_(model, KMeansShare(k_conv=256, k_fc=32))  # then fine-tune the codebooks
    >>> save_compressed(model, "model.dcz", coder="huffman")
    >>> model = load_compressed("model.dcz", model=fresh_model)
"""

from .architectures import Architecture, build_architecture, list_architectures, register_architecture
from .coding import CODERS
from .errors import CompressedFileError
from .fileformat import FORMAT_VERSION
from .huffman import huffman_decode, huffman_encode
from .kmeans import INITS, kmeans_1d
from .layers import Masked, SharedWeight, sparsity, structural_mask
from .pruning import MagnitudePrune, iterative_prune_, prune_, prune_schedule
from .report import LayerSize, SizeReport, size_report, tensor_bytes
from .serialization import load_compressed, read_compressed, read_header, save_compressed
from .sharing import MAX_K, MIN_K, KMeansShare, share_weights_
from .sparse import MAX_INDEX_BITS, MIN_INDEX_BITS

__all__ = [
    "CODERS",
    "FORMAT_VERSION",
    "INITS",
    "MAX_INDEX_BITS",
    "MAX_K",
    "MIN_INDEX_BITS",
    "MIN_K",
    "Architecture",
    "CompressedFileError",
    "KMeansShare",
    "LayerSize",
    "MagnitudePrune",
    "Masked",
    "SharedWeight",
    "SizeReport",
    "build_architecture",
    "huffman_decode",
    "huffman_encode",
    "iterative_prune_",
    "kmeans_1d",
    "list_architectures",
    "load_compressed",
    "prune_",
    "prune_schedule",
    "read_compressed",
    "read_header",
    "register_architecture",
    "save_compressed",
    "share_weights_",
    "size_report",
    "sparsity",
    "structural_mask",
    "tensor_bytes",
]
