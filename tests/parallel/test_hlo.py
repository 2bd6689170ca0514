"""Reading compiled HLO: while loops that carry a state, their collectives and device groups."""
import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AxisType, PartitionSpec as P

from deqdist.parallel.hlo import device_groups, has_buffer, solver_loop_groups, solver_loops


def test_device_groups_of_explicit_and_iota_replica_groups():
    assert device_groups("all-reduce(%x), replica_groups={{0,1},{2,3}}, to_apply=%add") == [(0, 1), (2, 3)]
    assert device_groups("all-reduce(%x), replica_groups={}, to_apply=%add") == [()]
    # [2,4]<=[4,2]T(1,0): ids 0..7 laid out (4, 2), transposed, read as 2 groups of 4.
    assert device_groups("all-gather(%x), replica_groups=[2,4]<=[4,2]T(1,0), dimensions={0}") == [
        (0, 2, 4, 6), (1, 3, 5, 7)]
    assert device_groups("collective-permute(%x), source_target_pairs={{0,1},{1,0}}") == [(0, 1), (1, 0)]
    assert device_groups("add(%x, %y)") == []


def _loop_program(communicate: bool) -> str:
    mesh = jax.make_mesh((2, 4), ("a", "b"), axis_types=(AxisType.Auto,) * 2)

    def local(z):
        def body(c):
            k, z = c
            z = jnp.tanh(z)
            return k + 1, z + 1e-3 * lax.psum(jnp.sum(z), "b") if communicate else z

        return lax.while_loop(lambda c: c[0] < 5, body, (0, z))[1]

    f = jax.shard_map(local, mesh=mesh, in_specs=P("a", "b"), out_specs=P("a", "b"))
    return jax.jit(f).lower(jnp.ones((4, 32), jnp.float32)).compile().as_text()


def test_a_communicating_loop_is_found_with_its_collectives_and_groups():
    hlo = _loop_program(communicate=True)
    local = (2, 8)
    assert has_buffer(hlo, local) and not has_buffer(hlo, (4, 32))
    loops = solver_loops(hlo, local)
    assert len(loops) == 1 and loops[0]["all-reduce"] >= 1
    groups = [g for loop in solver_loop_groups(hlo, local) for g in loop]
    # psum over "b": the 4 devices of each "a" row reduce together.
    assert set(groups) == {(0, 1, 2, 3), (4, 5, 6, 7)}


def test_a_loop_without_collectives_is_not_a_solver_loop():
    hlo = _loop_program(communicate=False)
    assert solver_loops(hlo, (2, 8)) == []
    assert solver_loop_groups(hlo, (2, 8)) == [[]]
