"""Host batches -> global jax.Arrays on 8 simulated CPU devices."""
import jax
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from deqdist.data.config import DataConfig
from deqdist.data.corpus import Corpus
from deqdist.data.device_put import to_global
from deqdist.data.errors import DataError
from deqdist.data.pipeline import train_iterator


@pytest.fixture(scope="module")
def batch():
    ids = np.arange(20_000, dtype=np.uint32)
    corpus = Corpus(ids, ids[:100], ids[:100], vocab_size=20_000, name="arange", kind="tokens")
    return next(train_iterator(corpus, DataConfig(seq_len=16, global_batch_size=16)))


def mesh(shape, names):
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape))


@pytest.mark.parametrize(
    "shape,names,spec",
    [
        ((8,), ("data",), P("data")),
        ((2, 4), ("data", "fsdp"), P(("data", "fsdp"), None)),
        ((2, 2, 2), ("data", "fsdp", "tensor"), P(("data", "fsdp"), "tensor")),
    ],
)
def test_global_array_matches_host_batch(batch, shape, names, spec):
    assert len(jax.devices()) == 8
    sharding = NamedSharding(mesh(shape, names), spec)
    out = to_global(batch, sharding)
    for name in ("inputs", "targets"):
        arr = out[name]
        assert arr.shape == (16, 16) and arr.dtype == np.int32 and arr.sharding == sharding
        np.testing.assert_array_equal(np.asarray(arr), batch[name])
        for shard in arr.addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data), batch[name][shard.index])
        expected_rows = 16 // np.prod([dict(zip(names, shape))[a] for a in ("data", "fsdp") if a in names])
        assert arr.addressable_shards[0].data.shape[0] == expected_rows


def test_per_key_shardings(batch):
    m = mesh((2, 2, 2), ("data", "fsdp", "tensor"))
    shardings = {"inputs": NamedSharding(m, P(("data", "fsdp"), "tensor")), "targets": NamedSharding(m, P("data"))}
    out = to_global(batch, shardings)
    assert out["inputs"].sharding == shardings["inputs"] and out["targets"].sharding == shardings["targets"]


def test_indivisible_batch_is_a_data_error(batch):
    sharding = NamedSharding(mesh((8,), ("data",)), P("data"))
    small = {k: v[:6] for k, v in batch.items()}
    with pytest.raises(DataError, match=r"size 6, not divisible by the 8 devices"):
        to_global(small, sharding)
