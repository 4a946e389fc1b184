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
``[in, out, output_tokens]`` or ``{input: .., output: .., output_tokens: ..}``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from barp.data.sources.assemble import Cells, LoadOptions, assemble, is_missing, prompt_text
from barp.data.sources.files import RawFile
from barp.data.sources.tasks import user_task
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


def _price(entry: object, where: str) -> Price:
    if isinstance(entry, dict):
        unknown = set(entry) - {"input", "output", "output_tokens"}
        if unknown or not {"input", "output"} <= set(entry):
            raise DataValidationError(
                f"{where}: expected keys input, output (and optional output_tokens), got {sorted(entry)}"
            )
        values = [entry["input"], entry["output"]] + ([entry["output_tokens"]] if "output_tokens" in entry else [])
    elif isinstance(entry, (list, tuple)) and len(entry) in (2, 3):
        values = list(entry)
    else:
        raise DataValidationError(
            f"{where}: expected [usd_per_1M_input, usd_per_1M_output] or [in, out, output_tokens], got {entry!r}"
        )
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise DataValidationError(f"{where}: {v!r} is not a finite number >= 0 (in {entry!r})")
    if len(values) == 3 and float(values[2]) != int(values[2]):
        raise DataValidationError(f"{where}: output_tokens {values[2]!r} is not a whole number")
    tokens = int(values[2]) if len(values) == 3 else DEFAULT_OUTPUT_TOKENS
    return Price(float(values[0]), float(values[1]), tokens)


def load_prices(prices: str | dict) -> tuple[dict[str, Price], str]:
    """Read and check a price table; return it and its name for messages.

    Args:
        prices: A dict, or the path of a JSON or YAML file (``.yaml``/``.yml``), mapping model -> prices.

    Raises:
        DataValidationError: The file is unreadable or an entry is malformed (naming the file and model).
    """
    if isinstance(prices, dict):
        table, name = prices, "<prices dict>"
    else:
        path, name = Path(prices), str(prices)
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
    return {str(m): _price(e, f"{name}: model {str(m)!r}") for m, e in table.items()}, name


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
    source = str(raw.path)
    objects = raw.objects
    if objects is None:
        raise DataValidationError(f"{source}: the records layout needs a JSON list of {{question, scores}} objects")
    if options.prices is None:
        raise DataValidationError(
            f"{source}: records have no costs, so a price table is needed to estimate them: pass prices "
            "(--data.prices prices.json) mapping model -> [usd_per_1M_input, usd_per_1M_output]"
        )
    prices, prices_name = load_prices(options.prices)
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
    for model, r in first_row.items():
        if model not in prices:
            raise DataValidationError(
                f"{prices_name}: model {model!r} has no price (it is scored in {source}, column 'scores', row {r}); "
                "add [usd_per_1M_input, usd_per_1M_output] for it"
            )
    models = sorted(first_row)
    prompts = [obj[text_key] for obj in objects]
    texts = [prompt_text(p) or "" for p in prompts]
    scored = [{str(m): s for m, s in obj["scores"].items()} for obj in objects]
    cells = Cells(
        source=source,
        ids=[obj.get(id_key, str(r)) if not is_missing(obj.get(id_key)) else str(r) for r, obj in enumerate(objects)],
        prompts=prompts,
        tasks=[user_task(obj.get("task"), options.task_map, options.default_task) for obj in objects],
        rows=list(range(len(objects))),
        scores={m: [s.get(m) for s in scored] for m in models},
        costs={m: [estimate_cost(t, prices[m]) for t in texts] for m in models},
        score_column={m: f"scores.{m}" for m in models},
        cost_column={m: f"{prices_name}[{m}]" for m in models},
        id_column=id_key,
        prompt_column=text_key,
    )
    return assemble(cells, options.on_missing)
