"""`deqdist generate`: sample text (or token ids) from a run's newest checkpoint."""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Sequence

from deqdist.main.args import OVERRIDES_HELP, UsageError, add_distributed, add_overrides, check_utf8, init_distributed


def add_parser(commands) -> None:
    p = commands.add_parser("generate", help="sample text from a run's latest checkpoint",
                            description="Sample from a run's latest checkpoint (DEQ mode).")
    p.add_argument("run_dir", metavar="RUN_DIR")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prompt", help="text prompt (byte corpora; default: logging.sample_prompt)")
    g.add_argument("--prompt-ids", metavar="1,2,3", help="prompt as comma-separated token ids")
    p.add_argument("--tokens", type=int, default=200, metavar="N", help="tokens to generate (default 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true",
                   help="re-solve the whole window for every token instead of decoding with the KV cache")
    add_overrides(p, OVERRIDES_HELP + " (not model shapes)")
    add_distributed(p)
    p.set_defaults(run=run)


def run(args) -> int:
    init_distributed(args)
    ids = _prompt_ids(args.prompt_ids)
    if not 0 <= args.tokens < 2**31:
        raise UsageError(f"--tokens must be an integer >= 0, got {args.tokens}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise UsageError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if not 0 <= args.seed < 2**32:
        raise UsageError(f"--seed must be an integer in [0, 2**32), got {args.seed}")
    if args.prompt is not None:
        check_utf8("--prompt", args.prompt)
    return run_generate(args.run_dir, args.overrides, prompt=args.prompt, prompt_ids=ids, tokens=args.tokens,
                        temperature=args.temperature, seed=args.seed, cache=not args.no_cache)


def _prompt_ids(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        ids = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--prompt-ids must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise UsageError("--prompt-ids is empty")
    return ids


def run_generate(run_dir: Path, overrides: Sequence[str], *, prompt: str | None, prompt_ids: Sequence[int] | None,
                 tokens: int, temperature: float, seed: int, cache: bool = True) -> int:
    from deqdist.data import corpus_codec
    from deqdist.store import rundir
    from deqdist.train import resume
    from deqdist.train.loop import open_run, primary
    from deqdist.train.sample import decoding_path, generate_batch

    run_dir = Path(run_dir)
    cfg = resume.resolve_for_run(run_dir, overrides)
    info = rundir.read_json(run_dir / rundir.CORPUS, {})
    kind = info.get("kind", "bytes") if isinstance(info, dict) else "bytes"
    codec = corpus_codec(cfg.data.corpus)  # a prepared corpus's tokenizer: text in, text out
    text = ""
    if prompt_ids is None:
        if kind != "bytes" and codec is None:
            raise rundir.RunDirError(f"{run_dir} was trained on tokenizer ids, not bytes; pass --prompt-ids 1,2,3")
        text = cfg.logging.sample_prompt if prompt is None else prompt
        prompt_ids = codec.document(text) if codec is not None else list(text.encode("utf-8"))
        if not prompt_ids:
            raise rundir.RunDirError("--prompt is empty; give at least one character")
    bad = [i for i in prompt_ids if not 0 <= i < cfg.model.vocab_size]
    if bad:
        raise rundir.RunDirError(f"prompt ids {bad[:5]} are outside [0, model.vocab_size={cfg.model.vocab_size})")
    session, state, step = open_run(run_dir, overrides)
    try:
        gen = generate_batch(session.spec, cfg, state["params"], [prompt_ids], tokens, temperature=temperature,
                             seed=seed, cache=cache)
        ids = gen.tokens[0]
    finally:
        session.close()
    if primary():
        if codec is not None:
            print((text or codec.decode(prompt_ids)) + codec.decode(ids), flush=True)
        elif kind == "bytes":
            from deqdist.data import decode

            print(decode(prompt_ids) + decode(ids), flush=True)
        else:
            print(" ".join(str(i) for i in list(prompt_ids) + ids), flush=True)
        path = decoding_path(cfg, cache)
        print(f"generate ({path}, {len(ids)} tokens): {gen.summary()}", file=sys.stderr, flush=True)
    return 0
