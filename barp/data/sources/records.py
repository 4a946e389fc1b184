"""Records: a JSON list (or JSON lines) of ``{question, scores: {model: score}}`` objects, plus a price table.

Several routing repositories publish their logs this way: a score per model but no cost. barp ESTIMATES the cost
of each (prompt, model) from a price table (USD per 1M input and output tokens per model):

    cost = (input_tokens * usd_per_1M_input + output_tokens * usd_per_1M_output) / 1e6
    input_tokens = ceil(1.3 * number of whitespace-separated words of the question)
    output_tokens = the model's entry in the price table, else 256

This is an estimate, not what the calls cost. Optional per-record keys: ``task`` (else ``default_task``) and
``id`` (else the record's position); ``prompt`` and ``prompt_id`` are accepted as aliases of ``question`` and
``id``. A model missing from a record's ``scores`` is a missing score cell.

The price table is a dict or a JSON/YAML file mapping model -> ``[usd_per_1M_input, usd_per_1M_output]``,
``[in, out, output_tokens]``, ``{input: .., output: .., output_tokens: ..}``, an LLMRouter ``llm_candidates``
entry ``{input_price, output_price, size, feature, ...}`` (USD per 1M tokens), or a LiteLLM price-map entry
``{input_cost_per_token, output_cost_per_token, ...}`` (USD per token). Only the entries of models the records
score are read and checked: the entries of other models (LiteLLM's map prices embedding and image models with
other keys) are ignored, whatever they hold. A price table is only for records: a table that has costs of its own
(wide, long, RouterBench, parquet) refuses one (see :func:`barp.data.sources.load_table`).

Records without an id are named ``<file stem>:<position>`` (``train:0``), so two record files (a training and a
test file) never share an id. ``task_key`` names the key that holds the task family (default ``task``; for
example ``cluster_id`` in LLMRouter's files); its values are turned into text (``0`` -> ``"0"``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from barp.data.sources.assemble import (
    Cells,
    LoadOptions,
    assemble,
    is_missing,
    prompt_text,
)
from barp.data.sources.files import RawFile
from barp.data.sources.tasks import task_values
from barp.data.table import OutcomeTable
from barp.errors import DataValidationError

DEFAULT_OUTPUT_TOKENS = 256


@dataclass(frozen=True)
class Price:
    """List prices of one model and its assumed answer length.

    Args:
        usd_per_1m_input: USD per 1M prompt tokens.
        usd_per_1m_output: USD per 1M answer tokens.
        output_tokens: Assumed answer length in tokens.
    """

    usd_per_1m_input: float
    usd_per_1m_output: float
    output_tokens: int = DEFAULT_OUTPUT_TOKENS


def estimate_tokens(text: str) -> int:
    """Estimated token count of ``text``: ceil(1.3 x whitespace-separated words), in exact integer arithmetic."""
    words = len(text.split())
    return (13 * words + 9) // 10


def estimate_cost(text: str, price: Price) -> float:
    """Estimated USD cost of answering ``text`` with a model of price ``price``."""
    return (estimate_tokens(text) * price.usd_per_1m_input + price.output_tokens * price.usd_per_1m_output) / 1e6


#: Dict layouts of a price entry: (input key, output key, USD per how many tokens, whether other keys are allowed).
#: barp's own ``{input, output, output_tokens}`` is strict; LLMRouter's ``llm_candidates`` entries
#: (``{input_price, output_price, size, feature, model, service}``, USD per 1M tokens) and LiteLLM's price map
#: (``{input_cost_per_token, output_cost_per_token, ...}``, USD per token) carry metadata, which is ignored.
PRICE_LAYOUTS = (
    ("input", "output", 1e6, False),
    ("input_price", "output_price", 1e6, True),
    ("input_cost_per_token", "output_cost_per_token", 1.0, True),
)


def _number(value: object, key: str, entry: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise DataValidationError(f"{where}: {key} {value!r} is not a finite number >= 0 (in {_short(entry)})")
    return float(value)


def _short(entry: object) -> str:
    text = repr(entry)
    return text if len(text) <= 120 else text[:117] + "..."


def _price(entry: object, where: str) -> Price:
    """One model's price entry in any accepted layout (see the module docstring)."""
    if isinstance(entry, dict):
        for in_key, out_key, per, metadata_ok in PRICE_LAYOUTS:
            if {in_key, out_key} <= set(entry):
                unknown = set(entry) - {in_key, out_key, "output_tokens"}
                if unknown and not metadata_ok:
                    break
                scale = 1e6 / per  # to USD per 1M tokens
                usd_in = _number(entry[in_key], in_key, entry, where) * scale
                usd_out = _number(entry[out_key], out_key, entry, where) * scale
                tokens = entry.get("output_tokens", DEFAULT_OUTPUT_TOKENS)
                return Price(usd_in, usd_out, _tokens(tokens, entry, where))
        raise DataValidationError(
            f"{where}: expected {{input, output}} (USD per 1M tokens; optional output_tokens), LLMRouter's "
            f"{{input_price, output_price, ...}} (USD per 1M tokens) or LiteLLM's {{input_cost_per_token, "
            f"output_cost_per_token, ...}} (USD per token); got keys {sorted(map(str, entry))}"
        )
    if isinstance(entry, (list, tuple)) and len(entry) in (2, 3):
        usd_in, usd_out = (_number(v, k, entry, where) for v, k in zip(entry, ("input", "output")))
        tokens = entry[2] if len(entry) == 3 else DEFAULT_OUTPUT_TOKENS
        return Price(usd_in, usd_out, _tokens(tokens, entry, where))
    raise DataValidationError(
        f"{where}: expected [usd_per_1M_input, usd_per_1M_output], [in, out, output_tokens] or a dict "
        f"({{input, output}}, {{input_price, output_price}}, {{input_cost_per_token, output_cost_per_token}}), "
        f"got {_short(entry)}"
    )


def _tokens(value: object, entry: object, where: str) -> int:
    number = _number(value, "output_tokens", entry, where)
    if number != int(number):
        raise DataValidationError(f"{where}: output_tokens {value!r} is not a whole number")
    return int(number)


def prices_name(prices: str | dict) -> str:
    """How messages name a price table: its file, or ``<prices dict>``."""
    return "<prices dict>" if isinstance(prices, dict) else str(prices)


def load_prices(prices: str | dict, models: Iterable[str] | None = None) -> tuple[dict[str, Price], str]:
    """Read and check a price table; return it and its name for messages.

    Args:
        prices: A dict, or the path of a JSON or YAML file (``.yaml``/``.yml``), mapping model -> prices.
        models: Read and check only the entries of these models (the scored ones; others are ignored, whatever
            they hold); None: every entry.

    Raises:
        DataValidationError: The file is unreadable or an entry to read is malformed (naming the file and model).
    """
    name = prices_name(prices)
    if isinstance(prices, dict):
        table = prices
    else:
        path = Path(prices)
        try:
            text = path.read_text(encoding="utf-8")
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                table = yaml.safe_load(text)
            else:
                table = json.loads(text)
        except OSError as exc:
            raise DataValidationError(f"{name}: the price table cannot be read ({exc.strerror or exc})") from exc
        except Exception as exc:  # JSON/YAML syntax errors
            raise DataValidationError(f"{name}: the price table is not valid JSON/YAML ({exc})") from exc
    if not isinstance(table, dict) or not table:
        raise DataValidationError(f"{name}: the price table must map model -> [usd_per_1M_input, usd_per_1M_output]")
    wanted = None if models is None else {str(m) for m in models}
    return {str(m): _price(e, f"{name}: model {str(m)!r}") for m, e in table.items()
            if wanted is None or str(m) in wanted}, name


def is_records(objects: list[dict]) -> bool:
    """Whether JSON objects look like score records (a ``scores`` dict and a question)."""
    first = objects[0]
    return isinstance(first.get("scores"), dict) and ("question" in first or "prompt" in first)


def read_records(raw: RawFile, options: LoadOptions) -> OutcomeTable:
    """Load score records, estimating costs from ``options.prices``.

    Args:
        raw: The file's content (JSON objects).
        options: Loading options; ``prices`` is required.
    """
    source = raw.source
    objects = raw.objects
    if objects is None:
        raise DataValidationError(f"{source}: the records layout needs a JSON list of {{question, scores}} objects")
    if options.prices is None:
        raise DataValidationError(
            f"{source}: records have no costs, so a price table is needed to estimate them: pass prices "
            "(--data.source.prices prices.json) mapping model -> [usd_per_1M_input, usd_per_1M_output]"
        )
    text_key = "question" if "question" in objects[0] else "prompt"
    id_key = "id" if "id" in objects[0] else "prompt_id"
    first_row: dict[str, int] = {}
    for r, obj in enumerate(objects):
        if not isinstance(obj.get("scores"), dict):
            raise DataValidationError(
                f"{source}: column 'scores', row {r}: expected an object {{model: score}}, got {obj.get('scores')!r}"
            )
        if text_key not in obj:
            raise DataValidationError(f"{source}: column {text_key!r}, row {r}: the key is missing")
        for model in obj["scores"]:
            first_row.setdefault(str(model), r)
    prices, table_name = load_prices(options.prices, models=first_row)
    for model, r in first_row.items():
        if model not in prices:
            raise DataValidationError(
                f"{table_name}: model {model!r} has no price (it is scored in {source}, column 'scores', row {r}); "
                "add [usd_per_1M_input, usd_per_1M_output] for it"
            )
    models = sorted(first_row)
    prompts = [obj[text_key] for obj in objects]
    texts = [prompt_text(p) or "" for p in prompts]
    scored = [{str(m): s for m, s in obj["scores"].items()} for obj in objects]
    cells = Cells(
        source=source,
        ids=[f"{raw.path.stem}:{r}" if is_missing(obj.get(id_key)) else obj[id_key] for r, obj in enumerate(objects)],
        prompts=prompts,
        tasks=task_values([obj.get(options.task_column) for obj in objects], source, options),
        rows=list(range(len(objects))),
        scores={m: [s.get(m) for s in scored] for m in models},
        costs={m: [estimate_cost(t, prices[m]) for t in texts] for m in models},
        score_column={m: f"scores.{m}" for m in models},
        cost_column={m: f"{table_name}[{m}]" for m in models},
        id_column=id_key,
        prompt_column=text_key,
    )
    return assemble(cells, options.on_missing)
