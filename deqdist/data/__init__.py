"""Corpora, grain pipelines and host->device batches. Knows nothing of models.

    corpus = load_corpus(cfg.corpus, vocab_size=..., token_dtype=..., cache_dir=...)
    it = train_iterator(corpus, cfg)              # this host's batches, checkpointable
    batch = to_global(next(it), data_sharding)    # global jax.Arrays

Names that need jax/grain are imported on first use so that loading the
config layer (which composes DataConfig) stays cheap.
"""
from deqdist.data.config import DataConfig
from deqdist.data.corpus import Corpus, decode
from deqdist.data.errors import DataError
from deqdist.data.prepared import corpus_codec
from deqdist.data.sources import load_corpus

_LAZY = {
    "train_iterator": "deqdist.data.pipeline",
    "eval_iterator": "deqdist.data.pipeline",
    "train_dataset": "deqdist.data.pipeline",
    "eval_dataset": "deqdist.data.pipeline",
    "batch_spec": "deqdist.data.pipeline",
    "to_global": "deqdist.data.device_put",
}

__all__ = ["Corpus", "DataConfig", "DataError", "corpus_codec", "decode", "load_corpus", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'deqdist.data' has no attribute {name!r}")
