"""What a sweep is asked to do, and the rules that make a sweep of it: one record for Python and the CLI.

:class:`SweepRequest` holds every setting of a sweep, named as ``actstore eval``'s
options are (``data_test`` is ``--data-test``, ``swap_options=False`` is
``--no-swap-options``): the command fills one from its flags and calls
``run_sweep(model, request)`` (:func:`actstore.evaluation.sweep.run_sweep`), which a
Python caller makes too; both get the same folder. Its rules live here, once:

* exactly one on-target input: held-out items (``data_test``: A/B items, scored by the
  matching letter in both answer orders, or free-text positive/negative pairs, scored
  by the per-token log-likelihood preference), prompts whose steered continuations
  are scored (``prompts``), or a protocol already built (``on_target``);
* what an alpha is (:attr:`SweepRequest.alpha_mode`): explicit scales (``alphas``),
  added norms (``alphas`` with ``normalize``), by default each of ``fractions``
  (:data:`~actstore.evaluation.grid.DEFAULT_FRACTIONS`) of the layer's residual norm;
* ``layers="all"``: every layer the store captured (:meth:`SweepRequest.grid`);
* the behavior's name in the tables: by default the folder of the held-out file;
* the held-out separation (each vector's AUROC and Cohen's d in separation.csv): the
  texts of ``heldout_store``, by default those of ``data_test`` captured in memory at
  the training store's position; ``separation=False`` skips it;
* a served engine (``server``) continues the ``prompts``, nothing else;
* off-target damage (``damage``): perplexity inflation (``ppl``, always: the frontier, the
  contrasts and the report read a vector's damage on it), and with ``kl`` the KL divergence
  from the unsteered model on its own continuations of ``kl_prompts`` (by default the first
  100 harmless instructions of the shared data, :func:`~actstore.evaluation.damage.read_kl_prompts`),
  ``kl_tokens`` tokens each.
* ``judge`` ("axbench" or a Judge) rates each continuation of the ``prompts`` for ``concept``
  (primary score: the harmonic mean of its three ratings); ``judge_validation``'s summary (or
  the words that the judge was not validated) heads results.md; the prompting baseline
  (``methods`` with ``prompt``, ``prompt_template``: :data:`DEFAULT_PROMPT_TEMPLATE`) and
  ``select_split``: :mod:`actstore.evaluation.selection`, where their rules live;
  ``chat_template`` and ``system`` format the prompts (:class:`~actstore.inputs.chat.ChatFormat`).

What needs no file is checked when the request is made (``__post_init__``); what needs
the store and the input files by :meth:`SweepRequest.check`, which ``run_sweep`` calls
before it loads a model: a large model loads only for a sweep that can run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import ActstoreError
from ..inputs.chat import ChatFormat
from ..models.blocks import parse_layers
from ..models.load import LoadedModel
from ..steering import Positions
from ..stores.group import StoreGroup
from ..vectors.info import parse_k
from .damage import DEFAULT_KL_TOKENS
from .frontier import Contrast
from .grid import DEFAULT_BUDGETS, DEFAULT_FRACTIONS, DEFAULT_PPL_TOKENS, Grid
from .intervals import N_RESAMPLES, Analysis
from .overlap import Overlap, checked_overlap, protocol_without
from .perplexity import DEFAULT_PPL_DOCUMENTS, DEFAULT_PPL_WINDOW
from .protocols import OnTarget, Scorer
from .request_rules import check_analysis, check_counts, check_damage, check_inputs, check_served
from .resampling import check_train_resample
from .scoring import PerplexityWindows
from .selection import JUDGES, PromptSplit, check_judged, judge_note, sweep_judge

ALL_LAYERS = "all"
DEFAULT_BEHAVIOR = "behavior"  # the name in the tables of a sweep whose protocol came built
# The prompting baseline's instruction (AxBench's prompt steering asks the model to bring the concept in):
# with a chat template a system prompt, else a paragraph before each prompt.
DEFAULT_PROMPT_TEMPLATE = ("In your response, include content about {concept}; "
                           "bring it in even where the request does not call for it.")


class Engine(Protocol):
    """Continues a sweep's prompts elsewhere than in the local model, e.g. a vLLM server
    (:class:`actstore.serve.generation.EvalServer`, connected and checked)."""

    def generation(self, loaded: LoadedModel, prompts: list[str], scorer: Scorer | str, max_new_tokens: int,
                   batch_size: int) -> OnTarget:
        """The on-target protocol whose continuations the engine generates, once it accepts ``loaded``."""


@dataclass(frozen=True)
class CheckedSweep:
    """What :meth:`SweepRequest.check` found, before any model: the training store's group (opened
    once), the grid with its layers resolved, the prompts read, the perplexity corpus, the KL
    prompts read (None without ``damage`` kl), the prompts' split (None without prompts), the
    judge's note (its validation summary read, or that it was not validated)."""

    store: StoreGroup
    grid: Grid
    prompts: list[str] | None
    text: Path | None
    kl_prompts: list[str] | None = None
    split: PromptSplit | None = None  # the prompts' ids and select/report halves (generation sweeps)
    judge_note: str | None = None  # what the report says of the judge (its validation), None without one
    overlap: Overlap | None = None  # the held-out questions found in the training data (data_test), or None
    analysis: Analysis = Analysis()  # how the report reads the folder: write_report(..., checked.analysis)


@dataclass(frozen=True, kw_only=True)
class SweepRequest:
    """Every setting of a sweep (layer x method x k x alpha), validated when made.

    Where: ``store`` (training activations: a path, or a :class:`~actstore.stores.StoreGroup`
    opened once; group ``model_group``), ``out`` (the folder; a rerun with the same settings
    resumes it). On target, exactly one of ``data_test``, ``prompts`` (with ``scorer``,
    ``max_new_tokens`` and optionally a served ``server``) and ``on_target``; ``max_items``
    keeps the first N questions or prompts, ``swap_options=False`` scores A/B questions only
    as written. The grid: ``layers`` ("all", "2,4" or integers), ``ks`` (None: dense),
    ``alphas`` (scales, or added norms with ``normalize``; None: ``fractions`` of the layer's
    residual norm), ``methods`` (and controls, ``control_seeds``, ``letter_data``), ``budgets``
    and the pre-specified ``contrasts``. Off target: ``ppl_tokens`` tokens of ``text`` (None:
    the default corpus) in ``ppl_window``-token windows from ``ppl_documents`` documents, or
    ``perplexity`` already built; ``damage`` "ppl" (default) or "ppl,kl": also the KL on
    ``kl_tokens``-token continuations of ``kl_prompts`` (None: the default set). The run:
    ``positions`` steered, ``batch_size``, ``replay`` (False: the whole model per configuration;
    also for a layer whose cached outputs exceed ``cache_budget_mb``), ``scheduler``, ``force``
    (a store of other weights), ``progress``. Generation: ``chat_template`` and ``system`` format
    the prompts; ``judge`` ("axbench", or a Judge; its ``judge_model``, ``judge_url``) rates each
    continuation for ``concept``, ``judge_validation`` its validation summary for the report;
    ``prompt_template`` the prompting baseline's instruction (``methods`` with "prompt");
    ``select_split`` the share of prompts each vector's alpha is chosen on. The report
    (:attr:`analysis`): ``margin``, stated before use, makes every contrast also carry its
    non-inferiority and equivalence verdicts; ``resamples``, the bootstrap's draws. The test
    set: ``exclude_train_overlap`` drops the held-out items whose question text is in the
    training data the store was captured from (:mod:`actstore.evaluation.overlap`; without it,
    such items are counted in a warning).

    >>> request = SweepRequest(store="acts.zarr", data_test="refusal/test.json", layers="all", ks=(4, None),
    ...                        out="sweep")
    >>> request.alpha_mode, request.grid(StoreGroup.open("acts.zarr")).alphas, request.behavior_name
    ('fraction', (0.005, 0.01, 0.02, 0.04, 0.08), 'refusal')
    >>> request.grid(StoreGroup.open("acts.zarr")).layers  # 'all': every layer the store captured
    (1, 2)
    >>> SweepRequest(store="acts.zarr", data_test="test.json", prompts="prompts.txt", layers="2", out="sweep")
    Traceback (most recent call last):
    actstore.errors.ActstoreError: give exactly one of data_test (held-out items) and prompts (generation); ...
    """

    store: str | Path | StoreGroup
    out: str | Path
    layers: str | Sequence[int]
    model_group: str | None = None
    data_test: str | Path | None = None
    prompts: str | Path | None = None
    on_target: OnTarget | None = None
    scorer: Scorer | str = "vader"
    max_new_tokens: int = 40
    server: Engine | None = None
    ks: Sequence[int | str | None] = (16, 64, None)
    alphas: Sequence[float] | None = None
    fractions: Sequence[float] = DEFAULT_FRACTIONS
    normalize: bool = False
    methods: str | Sequence[str] = ("enr",)
    control_seeds: Sequence[int] = (0,)
    letter_data: str | Path | None = None
    contrasts: Sequence[str] = ()
    budgets: Sequence[float] = DEFAULT_BUDGETS
    text: str | Path | None = None
    text_column: str | None = None
    ppl_tokens: int = DEFAULT_PPL_TOKENS
    ppl_documents: int = DEFAULT_PPL_DOCUMENTS
    ppl_window: int = DEFAULT_PPL_WINDOW
    perplexity: PerplexityWindows | None = None
    damage: str | Sequence[str] = ("ppl",)
    kl_prompts: str | Path | None = None
    kl_tokens: int = DEFAULT_KL_TOKENS
    max_items: int | None = None
    swap_options: bool = True
    behavior: str | None = None
    batch_size: int = 8
    positions: str = "all"
    replay: bool = True
    cache_budget_mb: float = 4096
    pack: int | None = None  # configurations per batch (.packing; None: up to 8 within cache_budget_mb)
    scheduler: str | None = None
    heldout_store: str | Path | None = None
    separation: bool = True
    chat_template: bool = False
    system: str | None = None
    judge: str | object | None = None
    concept: str | None = None
    judge_model: str | None = None
    judge_url: str | None = None
    judge_validation: str | Path | None = None
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    select_split: float | None = None
    train_resample: str | None = None  # vectors from a resample of the training rows: .resampling
    margin: float | None = None  # contrasts' non-inferiority and equivalence margin (Analysis)
    resamples: int = N_RESAMPLES  # the report's bootstrap draws (Analysis)
    exclude_train_overlap: bool = False  # drop test items whose question is in the training data (.overlap)
    force: bool = False
    progress: bool = True

    def __post_init__(self):
        self._normalize()
        check_inputs(self)
        check_counts(self)
        if self.pack is not None and (isinstance(self.pack, bool) or not isinstance(self.pack, int) or self.pack < 1):
            raise ActstoreError(f"pack={self.pack!r}: expected an integer >= 1 (configurations measured in one "
                                "batch; 1: one at a time) or None (the default)", param="pack")
        check_damage(self)
        check_judged(self)
        check_analysis(self)
        object.__setattr__(self, "train_resample", check_train_resample(self.train_resample, self.methods))
        if self.alphas is None and self.normalize:
            raise ActstoreError("normalize needs alphas: it makes each alpha the added norm (without alphas the "
                                "fractions already set added norms)", param=("normalize", "alphas", "fractions"))
        # Every rule of the grid but its layers, which 'all' leaves to the store.
        self._grid(self.layers if self.layers != ALL_LAYERS else (0,))
        for spec in self.contrasts:
            Contrast.parse(spec)
        if Positions.parse(self.positions).kind == "mask":
            raise ActstoreError("positions: a per-example mask does not fit a sweep over test batches; "
                                "use all, prompt, generated or from:N", param="positions")

    def _normalize(self) -> None:
        """Sequences as tuples; ``layers`` "all" or sorted integers; ``methods`` "a,b" split."""
        def put(name, value):
            object.__setattr__(self, name, value)

        layers = self.layers
        is_all = isinstance(layers, str) and layers.strip().lower() == ALL_LAYERS
        put("layers", ALL_LAYERS if is_all else tuple(parse_layers(layers, 1 << 30)))
        if isinstance(self.methods, str):
            put("methods", tuple(m.strip() for m in self.methods.split(",") if m.strip()))
        try:
            put("ks", tuple(parse_k(k) for k in self.ks))
        except ValueError:
            raise ActstoreError(f"ks={list(self.ks)!r}: expected positive integers and 'dense' (None)",
                                param="ks") from None
        if isinstance(self.damage, str):
            put("damage", tuple(d.strip() for d in self.damage.split(",") if d.strip()))
        for name in ("methods", "control_seeds", "contrasts", "budgets", "fractions", "damage"):
            put(name, tuple(getattr(self, name)))
        if self.alphas is not None:
            put("alphas", tuple(self.alphas))
        put("out", Path(self.out))

    @property
    def chat(self) -> ChatFormat:
        """How the generation prompts are formatted (:class:`~actstore.inputs.chat.ChatFormat`)."""
        return ChatFormat(self.chat_template, self.system)

    @property
    def steering_instruction(self) -> str | None:
        """The prompting baseline's instruction (``prompt_template`` with the concept), or None."""
        return self.prompt_template.replace("{concept}", self.concept) if self.concept else None

    @property
    def judge_name(self) -> str | None:
        """The judge's name in the folder's settings and report ("axbench", a Judge's ``name``), or None."""
        if self.judge is None:
            return None
        return self.judge if isinstance(self.judge, str) else str(getattr(self.judge, "name", "judge"))

    def judge_note(self) -> str | None:
        """What results.md says of the judge (:func:`actstore.evaluation.selection.judge_note`)."""
        return judge_note(self)

    @property
    def analysis(self) -> Analysis:
        """How the report reads the folder: ``margin`` and ``resamples``
        (:class:`~actstore.evaluation.intervals.Analysis`)."""
        return Analysis(self.margin, self.resamples)

    @property
    def measures_kl(self) -> bool:
        """Whether the sweep measures the KL damage (``damage`` has kl)."""
        return "kl" in self.damage

    @classmethod
    def from_flags(cls, flags: dict, connect: Callable[[str | None, str | None, str], Engine] | None = None
                   ) -> SweepRequest:
        """The request of ``actstore eval``'s options: click's values, named after the fields, but
        ``quiet`` (``not progress``) and ``server``/``server_vectors``, the URL and vectors folder of
        a served engine, which ``connect(server, server_vectors, positions)`` connects
        (:meth:`actstore.serve.generation.EvalServer.connect`) once every rule holds: a sweep that
        cannot run is refused before anything is reached."""
        values = dict(flags)
        url, folder = values.pop("server", None), values.pop("server_vectors", None)
        values["progress"] = not values.pop("quiet", False)
        request = cls(**values)
        if url is None and folder is None:
            return request
        check_served(request.prompts, url, folder)
        if connect is None:
            raise TypeError("from_flags: a server URL needs connect= (actstore.serve.generation.EvalServer.connect)")
        return dataclasses.replace(request, server=connect(url, folder, request.positions))

    @property
    def alpha_mode(self) -> str:
        """What an alpha is: "scale", "norm" (``normalize``) or, without ``alphas``, "fraction"."""
        return "fraction" if self.alphas is None else ("norm" if self.normalize else "scale")

    @property
    def behavior_name(self) -> str:
        """``behavior``, by default the folder of ``data_test`` (or ``prompts``): test sets live in
        one folder per behavior (``refusal/test.json``)."""
        if self.behavior:
            return self.behavior
        source = self.data_test if self.data_test is not None else self.prompts
        return Path(source).resolve().parent.name if source is not None else DEFAULT_BEHAVIOR

    def grid(self, store: StoreGroup) -> Grid:
        """The grid over ``store``'s group: layers "all" resolved to every layer it captured, the
        layers and ks checked against what it captured (its attributes only)."""
        grid = self._grid(tuple(store.spec.layers) if self.layers == ALL_LAYERS else self.layers)
        grid.check_store(store)
        return grid

    def _grid(self, layers: Sequence[int]) -> Grid:
        alphas = self.alphas if self.alphas is not None else self.fractions
        return Grid(tuple(layers), self.ks, tuple(alphas), self.alpha_mode, self.methods, self.budgets,
                    self.control_seeds)

    def check(self) -> CheckedSweep:
        """Everything that needs files but no model: the store's group opened (its attributes only:
        the whole store would load every per-sample coordinate) and the grid checked against it,
        the prompts read, a malformed held-out file reported, the perplexity corpus found, the KL
        prompts read (a file that does not read named)."""
        from .damage import read_kl_prompts
        from .perplexity import check_text
        from .protocols import read_prompts

        source = StoreGroup.open(self.store, self.model_group)
        grid = self.grid(source)
        prompts = read_prompts(self.prompts)[:self.max_items] if self.prompts is not None else None
        overlap = None
        if self.data_test is not None:
            from ..inputs.datasets import read_contrast_set

            read_contrast_set(self.data_test)
            overlap = checked_overlap(source, self.data_test, self.exclude_train_overlap)
        text = check_text(self.text) if self.perplexity is None else None
        kl_prompts = read_kl_prompts(self.kl_prompts) if self.measures_kl else None
        split = None
        if prompts is not None or getattr(self.on_target, "prompts", None) is not None:
            split = PromptSplit.of(prompts if prompts is not None else self.on_target.prompts, self.select_split)
        note = None if overlap is None else overlap.note(self.exclude_train_overlap)
        return CheckedSweep(source, grid, prompts, text, kl_prompts, split, self.judge_note(), overlap,
                            dataclasses.replace(self.analysis, test_note=note))

    def build_on_target(self, loaded: LoadedModel, checked: CheckedSweep) -> OnTarget:
        """The on-target protocol: the one given, the prompts' continuations (generated by the
        served engine when there is one), or the protocol the held-out file calls for."""
        from .protocols import GeneratedText, protocol_for_file

        if self.on_target is not None:
            return self.on_target
        if checked.prompts is not None:
            self.chat.check(loaded.tokenizer)
            if self.server is not None:
                return self.server.generation(loaded, checked.prompts, self.scorer, self.max_new_tokens,
                                              self.batch_size, chat=self.chat)
            return GeneratedText(checked.prompts, self.scorer, self.max_new_tokens, self.batch_size, chat=self.chat,
                                 judge=sweep_judge(self, loaded), concept=self.concept)
        if self.exclude_train_overlap and checked.overlap is not None and checked.overlap.questions:
            return protocol_without(loaded.tokenizer, self.data_test, set(checked.overlap.questions),
                                    self.batch_size, self.max_items, both_orders=self.swap_options)
        return protocol_for_file(loaded.tokenizer, self.data_test, self.batch_size, self.max_items,
                                 both_orders=self.swap_options)

    def build_perplexity(self, loaded: LoadedModel, checked: CheckedSweep) -> PerplexityWindows:
        """The perplexity windows: those given, or ``ppl_tokens`` tokens of the corpus."""
        from .perplexity import perplexity_windows

        if self.perplexity is not None:
            return self.perplexity
        return perplexity_windows(loaded.tokenizer, checked.text, self.ppl_tokens, window=self.ppl_window,
                                  documents=self.ppl_documents, text_column=self.text_column)

    def heldout_source(self, loaded: LoadedModel, checked: CheckedSweep) -> str | Path | None:
        """The store of held-out pos/neg texts whose separation each vector gets: ``heldout_store``,
        by default the ``data_test`` texts captured in memory at the sweep's layers and the training
        store's position; None without separation (or without either)."""
        if not self.separation:
            return None
        if self.heldout_store is not None or self.data_test is None:
            return self.heldout_store
        from .monitor import capture_heldout

        return capture_heldout(loaded, self.data_test, checked.grid.layers, checked.store.spec.position)


__all__ = ["ALL_LAYERS", "DEFAULT_PROMPT_TEMPLATE", "JUDGES", "CheckedSweep", "Engine", "SweepRequest"]
