"""``actstore steer``."""

from __future__ import annotations

import click

from ..vectors.info import k_label
from ..vectors.operators import OPERATORS
from .options import chat_options, model_options, take_record


@click.command()
@model_options
@click.option("--vector", "-v", "vectors", required=True, multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Vector file from `actstore enr`; repeat for several vectors (their layers may differ).")
@click.option("--alpha", "-a", type=float, default=4.0, show_default=True,
              help="Scale of every vector: alpha * v is added at its layer at every token.")
@click.option("--prompt", "-p", "prompts", required=True, multiple=True, help="Prompt to complete; repeatable.")
@chat_options
@click.option("--positions", default="all", show_default=True,
              help="Tokens that get the vector: all, prompt (the tokens before the response: with "
                   "--chat-template the template's turns and the opened assistant turn too), response (the "
                   "tokens the model generates; 'generated' is read the same) or from:N (token N on, counting "
                   "real tokens from 0).")
@click.option("--max-new-tokens", type=click.IntRange(1), default=40, show_default=True)
@click.option("--compare", is_flag=True, help="Print the unsteered completion above the steered one.")
@click.option("--sample", is_flag=True, help="Sample instead of greedy decoding.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Steer even if a vector was made for other model weights.")
@click.option("--operator", type=click.Choice(OPERATORS), default=None,
              help="Apply every vector by this operator instead of the one its file records: add, project "
                   "(remove alpha times the component along u = v/|v|) or clamp (move it alpha of the way to "
                   "--clamp-value).")
@click.option("--clamp-value", type=float, default=None, help="With --operator clamp: the value of the component.")
@click.option("--apply-layers", default=None, metavar="L|all|L1-L2",
              help="With --operator: where it applies (default: each vector's own layer).")
def steer(vectors, alpha, prompts, chat, positions, compare, force, **flags):
    """Generate with steering vectors added at inference (each prompt formatted as --chat-template
    and --system say)."""
    import math

    from ..errors import VectorError
    from ..evaluation.scoring import generate
    from ..models.load import ModelSpec
    from ..steering import Positions, check_vector
    from ..steering import steer as steering
    from ..vectors.vector import load_vector

    if not math.isfinite(alpha):
        raise VectorError(f"alpha must be a finite number, got {alpha}", param="alpha")
    chosen = Positions.from_text(positions)
    operator = _operator_override(flags)  # refused before the model loads
    loaded = take_record(ModelSpec, flags).load()
    loaded_vectors = [load_vector(path) for path in vectors]
    if operator is not None:
        loaded_vectors = [vector.with_info(operator=operator) for vector in loaded_vectors]
    for vector in loaded_vectors:
        check_vector(vector, loaded, force)
    texts = [chat.prompt_text(loaded.tokenizer, prompt) for prompt in prompts]  # a template is checked here
    decoding = dict(max_new_tokens=flags["max_new_tokens"], do_sample=flags["sample"],
                    temperature=flags["temperature"], seed=flags["seed"], add_special_tokens=chat.add_special_tokens)
    base = generate(loaded.model, loaded.tokenizer, texts, **decoding) if compare else None
    with steering(loaded, loaded_vectors, alpha, positions=chosen):
        steered = generate(loaded.model, loaded.tokenizer, texts, **decoding)
    described = ", ".join(f"layer {v.layer} k={k_label(v.k)}"
                          + ("" if v.info.operator.additive and not v.info.operator.layers
                             else f" ({v.info.operator.describe()})") for v in loaded_vectors)
    formatted = _format_label(chat)
    for i, prompt in enumerate(prompts):
        click.echo(f"=== prompt: {prompt!r}{formatted}")
        if base is not None:
            click.echo(f"--- unsteered:\n{base[i]}")
        where = "" if chosen.kind == "all" else f"; positions {chosen}"
        click.echo(f"--- steered (alpha={alpha:g}; {described}{where}):\n{steered[i]}")


def _format_label(chat) -> str:
    """How the prompts were formatted, for the header (nothing for a prompt read as written)."""
    said = (["chat template"] if chat.template else []) + ([f"system {chat.system!r}"] if chat.system else [])
    return f" ({', '.join(said)})" if said else ""


def _operator_override(flags):
    """The operator of ``--operator`` (with its value and layers), or None to keep each file's."""
    from ..vectors.operators import Operator

    kind, value, layers = flags.pop("operator"), flags.pop("clamp_value"), flags.pop("apply_layers")
    if kind is None:
        if value is not None or layers is not None:
            raise click.UsageError("--clamp-value and --apply-layers go with --operator")
        return None
    return Operator(kind, value, layers or "")
