"""Jitted, sharded, donated train and eval steps: the one place a train step is built.

The trainer, `deqdist compile`, the benchmarks and the parallel test harness all
take their steps from `Steps` (the harness compares meshes on its gradient half,
`Steps.gradients`), so what they measure is what trains.

Variants are compiled on first use and cached by (mode, jac_reg):
  ("explicit", _)  the explicit twin (train.n_unroll applications of f, ordinary
                   backprop) for the first train.warmup_explicit_steps steps;
  ("deq", False)   the equilibrium model (forward solve, implicit backward);
  ("deq", True)    the same plus the Hutchinson Jacobian term, every
                   train.jac_reg_every steps (of the DEQ phase only: the warm-up
                   step never computes it, see `jac_at`).
All variants take and return the same state layout, so switching costs one compile.

The backward solve's stats arrive as the gradient of a zero "sink"
(deqdist.deq.backward_sink) differentiated alongside the parameters.

The finite-step guard: a step whose loss, gradients or update are not finite,
or whose forward solve diverged for more than train.max_diverged_frac of the
samples, keeps the old parameters and optimizer state. The choice is a select
inside the compiled step (no host round-trip); the step counter still advances
(the batch is skipped) and the metric "bad" says which steps were rejected.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from deqdist.config import Config
from deqdist.deq import backward_sink
from deqdist.model import SolveHooks, lm_loss
from deqdist.regularize import jacobian_penalty
from deqdist.train.mesh import batch_sharding, build_mesh, hooks as solver_hooks
from deqdist.train.state import StateSpec, merge, state_spec


def _solver_metrics(prefix: str, nstep, rel, max_iter: int, converged=None) -> dict[str, jax.Array]:
    nstep = nstep.astype(jnp.float32)
    out = {
        f"{prefix}_iters": jnp.mean(nstep),
        f"{prefix}_iters_max": jnp.max(nstep),
        f"{prefix}_rel_res": jnp.mean(rel.astype(jnp.float32)),
        f"{prefix}_rel_res_max": jnp.max(rel.astype(jnp.float32)),
        f"{prefix}_hit_max": jnp.mean((nstep >= max_iter).astype(jnp.float32)),
    }
    if converged is not None:
        out[f"{prefix}_converged"] = jnp.mean(converged.astype(jnp.float32))
    return out


def _feval_metrics(grad: str, fwd_nstep, bwd_nstep) -> dict[str, jax.Array]:
    """Mean evaluations of f per sample in the forward, and of f's VJP in the backward."""
    fwd, bwd = fwd_nstep.astype(jnp.float32), bwd_nstep.astype(jnp.float32)
    if grad == "reversible":  # two f per coupled step; undone with two f and two VJPs per step
        f, g = 2 * fwd, 2 * bwd
    else:  # the solver's first evaluation, then one per iteration; implicit: adjoint map + pull-back
        f, g = fwd + 1, bwd + 2 if grad == "implicit" else bwd
    return {"fwd_fevals": jnp.mean(f), "bwd_fevals": jnp.mean(g)}


def _max_steps(cfg: Config) -> tuple[int, int]:
    """(forward, backward) step limits: the solvers' max_iter, or the reversible mode's steps."""
    if cfg.solver.grad == "reversible":
        return cfg.solver.reversible.steps, cfg.solver.reversible.steps
    return cfg.solver.fwd.max_iter, cfg.solver.bwd.max_iter


def _replica_metrics(prefix: str, loop_iters) -> dict[str, jax.Array]:
    # loop_iters repeats each replica's loop count on its rows (equal rows per replica), so
    # the row mean is the mean over replicas; their max is what global lockstep would run.
    loop_iters = loop_iters.astype(jnp.float32)
    return {f"{prefix}_replica_iters": jnp.mean(loop_iters), f"{prefix}_replica_iters_max": jnp.max(loop_iters)}


class Steps:
    """Builds and caches the compiled steps for one mesh / config."""

    def __init__(self, cfg: Config, spec: StateSpec, batch_sharding, solve: Callable, unroll: Callable, *,
                 guard: bool = True):
        self.cfg, self.spec = cfg, spec
        self.guard = guard  # off only to measure what the guard costs (deqdist bench integrity)
        self.batch_sharding = batch_sharding
        self.solve, self.unroll = solve, unroll
        self._train: dict[tuple[str, bool], Callable] = {}
        self._eval: dict[str, Callable] = {}
        self._grads: dict[str, Callable] = {}
        self._spectral: Callable | None = None

    @classmethod
    def for_config(cls, cfg: Config, devices=None) -> "Steps":
        """Mesh, abstract state layout and steps for `cfg` over `devices` (real, or a TPU topology's
        abstract devices for ahead-of-time compilation); nothing is allocated."""
        mesh = build_mesh(cfg, devices)
        spec = state_spec(cfg, mesh)
        return cls(cfg, spec, batch_sharding(mesh, cfg), *solver_hooks(mesh, cfg))

    def mode_at(self, step: int) -> str:
        """Mode of the update that takes the state from `step` to step + 1."""
        return "explicit" if step < self.cfg.train.warmup_explicit_steps else "deq"

    def jac_at(self, step: int) -> bool:
        """Whether the update at `step` adds the Jacobian term: every train.jac_reg_every steps of the
        DEQ phase, never in the explicit warm-up (it regularises f at the equilibrium the solve finds)."""
        t = self.cfg.train
        return (self.mode_at(step) == "deq" and t.jac_reg_every > 0 and t.jac_reg_weight > 0
                and step % t.jac_reg_every == 0)

    def _forward(self, params, tokens, *, mode: str, key, deterministic: bool, jac: bool, sink=None):
        """(logits, aux) with the features z in aux["z"] (unused outputs cost nothing once compiled)."""
        cfg = self.cfg
        model = merge(self.spec, params)
        hooks = SolveHooks(mode=mode, deq_cfg=cfg.solver, n_unroll=cfg.train.n_unroll, solve=self.solve,
                           unroll=self.unroll, bwd_sink=sink, jac_samples=int(jac))
        z, aux = model.features(tokens, hooks, deterministic=deterministic, key=key)
        return model.head(z), {**aux, "z": z}

    def _loss_and_grads(self, params, batch, *, mode: str, jac: bool, key, deterministic: bool):
        """(loss, gradients, the model's aux, the backward solve's stats or None): the gradient half of
        every train step; the loss differentiated includes the Jacobian penalty on `jac` steps."""
        jac_weight, jac_target = self.cfg.train.jac_reg_weight, self.cfg.train.jac_reg_target

        def loss_fn(params, sink):
            logits, aux = self._forward(params, batch["inputs"], mode=mode, key=key, deterministic=deterministic,
                                        jac=jac, sink=sink)
            loss = lm_loss(logits, batch["targets"])
            total = loss + jacobian_penalty(aux["jac_loss"], jac_weight, jac_target) if jac else loss
            return total, (loss, aux)

        if mode == "deq":
            sink = backward_sink(batch["inputs"].shape[0])
            (grads, backward), (loss, aux) = jax.grad(loss_fn, argnums=(0, 1), has_aux=True)(params, sink)
            return loss, grads, aux, backward
        grads, (loss, aux) = jax.grad(loss_fn, has_aux=True)(params, None)
        return loss, grads, aux, None

    def train_step(self, step: int) -> Callable:
        """The compiled (state, batch) -> (state, metrics) for the update at `step`."""
        return self.variant(self.mode_at(step), self.jac_at(step))

    def variant(self, mode: str, jac: bool) -> Callable:
        """The jitted train step of one variant ("explicit" or "deq", with or without the Jacobian term;
        the trainer asks for the term only in deq mode, `jac_at`)."""
        if (mode, jac) not in self._train:
            self._train[(mode, jac)] = self._build_train(mode, jac)
        return self._train[(mode, jac)]

    def gradients(self, mode: str = "deq") -> Callable:
        """Compiled (params, batch) -> (loss, gradients, aux): the train step's gradient half with no
        update and no dropout; aux is the model's (z, solver stats) plus "bwd_stats" in deq mode."""
        if mode not in self._grads:
            def fn(params, batch):
                loss, grads, aux, backward = self._loss_and_grads(params, batch, mode=mode, jac=False, key=None,
                                                                  deterministic=True)
                return loss, grads, aux if backward is None else {**aux, "bwd_stats": backward}

            batch_sh = {"inputs": self.batch_sharding, "targets": self.batch_sharding}
            self._grads[mode] = jax.jit(fn, in_shardings=(self.spec.shardings["params"], batch_sh))
        return self._grads[mode]

    def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
        """The global token batch as sharded ShapeDtypeStructs (what the data pipeline delivers)."""
        shape = (self.cfg.data.global_batch_size, self.cfg.model.seq_len)
        return {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=self.batch_sharding) for k in ("inputs", "targets")}

    def _build_train(self, mode: str, jac: bool) -> Callable:
        cfg, spec = self.cfg, self.spec
        tx, schedule = spec.tx, spec.schedule
        fwd_max, bwd_max = _max_steps(cfg)
        max_div = cfg.train.max_diverged_frac
        deterministic = cfg.model.dropout == 0 and cfg.model.emb_dropout == 0

        def step_fn(state, batch):
            key = jax.random.fold_in(state["rng"], state["step"])
            loss, grads, aux, backward = self._loss_and_grads(state["params"], batch, mode=mode, jac=jac, key=key,
                                                              deterministic=deterministic)
            updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
            params = optax.apply_updates(state["params"], updates)
            grad_norm = optax.global_norm(grads)
            metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state["step"])}
            if self.guard:
                ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.global_norm(updates))
                if mode == "deq":
                    ok &= jnp.mean(aux["fwd_stats"].diverged.astype(jnp.float32)) <= max_div
                params, opt_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old),
                                                 (params, opt_state), (state["params"], state["opt_state"]))
                metrics["bad"] = (~ok).astype(jnp.float32)
            if mode == "deq":
                st = aux["fwd_stats"]
                metrics.update(_solver_metrics("fwd", st.nstep, st.rel_residual, fwd_max, st.converged))
                metrics.update(_solver_metrics("bwd", backward["nstep"], backward["rel_residual"], bwd_max,
                                               backward["converged"] if cfg.solver.grad == "implicit" else None))
                metrics.update(_replica_metrics("fwd", st.loop_iters))
                metrics.update(_replica_metrics("bwd", backward["loop_iters"]))
                metrics.update(_feval_metrics(cfg.solver.grad, st.nstep, backward["nstep"]))
                if cfg.solver.grad == "reversible":
                    metrics["bwd_recon_err"] = jnp.mean(backward["recon_error"])
                    metrics["bwd_recon_err_max"] = jnp.max(backward["recon_error"])
            else:
                metrics["explicit_rel_res"] = jnp.mean(aux["rel_residual"])
                metrics["fwd_fevals"] = metrics["bwd_fevals"] = jnp.float32(cfg.train.n_unroll)
            if jac:
                metrics["jac_loss"] = aux["jac_loss"]
            new = {"step": state["step"] + 1, "rng": state["rng"], "params": params, "opt_state": opt_state}
            return new, metrics

        rep = jax.sharding.NamedSharding(spec.mesh, jax.sharding.PartitionSpec())
        batch_sh = {"inputs": self.batch_sharding, "targets": self.batch_sharding}
        return jax.jit(step_fn, in_shardings=(spec.shardings, batch_sh), out_shardings=(spec.shardings, rep),
                       donate_argnums=0)

    def eval_step(self, mode: str) -> Callable:
        """Compiled (params, batch) -> sums over the batch: nll (nats), tokens, solver iterations."""
        if mode not in self._eval:
            self._eval[mode] = self._build_eval(mode)
        return self._eval[mode]

    def _build_eval(self, mode: str) -> Callable:
        spec = self.spec
        fwd_max = _max_steps(self.cfg)[0]

        def eval_fn(params, batch):
            logits, aux = self._forward(params, batch["inputs"], mode=mode, key=None, deterministic=True, jac=False)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
            out = {"nll": jnp.sum(ce), "tokens": jnp.asarray(ce.size, jnp.float32),
                   "samples": jnp.asarray(ce.shape[0], jnp.float32)}
            if mode == "deq":
                st = aux["fwd_stats"]
                out["fwd_iters"] = jnp.sum(st.nstep.astype(jnp.float32))
                out["fwd_hit_max"] = jnp.sum((st.nstep >= fwd_max).astype(jnp.float32))
                out["fwd_rel_res"] = jnp.sum(st.rel_residual.astype(jnp.float32))
            return out

        rep = jax.sharding.NamedSharding(spec.mesh, jax.sharding.PartitionSpec())
        batch_sh = {"inputs": self.batch_sharding, "targets": self.batch_sharding}
        return jax.jit(eval_fn, in_shardings=(spec.shardings["params"], batch_sh), out_shardings=rep)

    def spectral_step(self) -> Callable:
        """Compiled (params, batch) -> mean and max over the batch of the spectral radius
        of J_f at the equilibrium z* (forward solve, then the power method; no gradient).
        The power method starts from a fixed random vector so that estimates at
        different steps differ only through the parameters and the batch."""
        if self._spectral is None:
            spec = self.spec

            def fn(params, batch):
                model = merge(spec, params)
                z, _ = model.features(batch["inputs"], SolveHooks(deq_cfg=self.cfg.solver, solve=self.solve))
                rho = model.jacobian_spectral_radius(batch["inputs"], z, jax.random.key(0)).astype(jnp.float32)
                return {"spectral_radius": jnp.mean(rho), "spectral_radius_max": jnp.max(rho)}

            rep = jax.sharding.NamedSharding(spec.mesh, jax.sharding.PartitionSpec())
            batch_sh = {"inputs": self.batch_sharding, "targets": self.batch_sharding}
            self._spectral = jax.jit(fn, in_shardings=(spec.shardings["params"], batch_sh), out_shardings=rep)
        return self._spectral
