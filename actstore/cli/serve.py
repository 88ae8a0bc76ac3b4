"""``actstore serve`` and ``actstore serve check``."""

from __future__ import annotations

import click

from .options import chat_options


@click.group(invoke_without_command=True)
@click.option("--model", "-m", default=None, metavar="ID|PATH",
              help="Model to serve (default: the embedded gemma-3-270m of `actstore models demo`).")
@click.option("--vectors", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of vector files; a request names one of them (never a path). Required to serve.")
@click.option("--port", "-p", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True)
@click.option("--max-model-len", type=click.IntRange(16), default=2048, show_default=True)
@click.option("--kv-cache-gib", type=click.FloatRange(0.1), default=1.0, show_default=True,
              help="Key/value cache size (the CPU backend otherwise reserves most of the memory).")
@click.option("--python", "python", default=None, metavar="PATH",
              help="A Python with vLLM installed (default: this one).")
@click.option("--vllm-arg", "vllm_args", multiple=True, metavar="ARG",
              help="Extra argument for the vLLM server; repeat (e.g. --vllm-arg=--max-num-seqs --vllm-arg=64).")
@click.pass_context
def serve(ctx, model, vectors, port, host, dtype, max_model_len, kv_cache_gib, python, vllm_args):
    """Serve steering with vLLM: one engine, a different vector per request.

    \b
    Starts `vllm serve` (the engine's OpenAI-compatible server) with actstore's plugin:
      actstore serve --vectors vecs/ --port 8000
    then each request picks a vector with vllm_xargs (printed once the server is up):
      {"actstore_vector": "NAME", "actstore_alpha": 4, "actstore_positions": "all"}
    and `actstore serve check URL --vector NAME` verifies the engine applies it.
    """
    if ctx.invoked_subcommand is not None:
        return
    from ..serve import ServeError
    from ..serve.launch import (
        ServeOptions,
        find_vllm,
        require_plugin,
        require_vllm_imports,
        start,
        stop,
        stopping_on_signals,
        usage_examples,
        wait_until_ready,
    )
    from ..serve.settings import VectorFolder

    if vectors is None:
        raise ServeError("vectors= is required: the folder of vector files requests may name", param="vectors")
    # before the demo model is prepared and anything starts
    require_vllm_imports(find_vllm(python))
    if model is None:
        from ..models.embedded import prepare_demo_model

        model = str(prepare_demo_model())
    options = ServeOptions(model, vectors, port, host, dtype, max_model_len, kv_cache_gib, python,
                           tuple(vllm_args))
    names = VectorFolder(vectors).names()
    click.echo(f"starting vllm serve {model} on {options.url} with vectors from {vectors} "
               f"({len(names)}: {', '.join(names[:10]) or 'none yet'})", err=True)
    with stopping_on_signals():
        process = start(options)
        try:
            client = wait_until_ready(process, options.url)
            require_plugin(client)
            click.echo(f"\nserving {client.model_id()} at {options.url} (Ctrl-C stops it)\n")
            click.echo(usage_examples(options.url, client.model_id(), names[0] if names else "NAME"))
            process.wait()
        finally:
            stop(process)


@serve.command()
@click.argument("url")
@click.option("--vector", "-v", required=True, metavar="NAME|FILE",
              help="The vector's name on the server (its file in --vectors), or the vector file itself.")
@click.option("--alpha", "-a", type=float, default=4.0, show_default=True)
@click.option("--vectors", type=click.Path(exists=True, file_okay=False), default=None,
              help="The folder the server was started with (to read NAME locally).")
@click.option("--model", "-m", default=None, metavar="ID|PATH",
              help="Local copy of the served model (default: the server's model, when it is a folder here).")
@click.option("--tolerance", type=click.FloatRange(0, min_open=True), default=5e-3, show_default=True,
              help="Largest accepted difference of log-prob shifts, nats (raise it for a bfloat16 server).")
@click.option("--device", default="cpu", show_default=True, help="torch device of the local reference.")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=None, metavar="SECONDS",
              help="Seconds a probe request may go unanswered (default 600); the model listing and the "
                   "handshake wait at most 15 and 60 s, and never longer than this.")
@chat_options
def check(url, vector, alpha, vectors, model, tolerance, device, timeout, chat):
    """Check that the server at URL applies a vector as actstore's own hooks do.

    Exits 1 when it does not: plugin missing, wrong layer, sign or scale, or a stale prefix cache.
    With --chat-template (and --system) each probe prompt is formatted as steer and eval format
    theirs, and the server gets the same token ids as the local reference.
    """
    import math

    from ..serve import ServeError
    from ..serve.check import check_server

    if not math.isfinite(alpha):
        raise ServeError(f"alpha={alpha}: expected a finite number", param="alpha")
    bound = {} if timeout is None else {"timeout": timeout}  # default: the client's GENERATION_TIMEOUT_S
    report = check_server(url, vector, alpha, vectors=vectors, model=model, tolerance=tolerance, device=device,
                          chat=chat, **bound)
    click.echo(report.summary())
    if not report.passed:
        raise SystemExit(1)
