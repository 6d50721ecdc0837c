"""GRPO's rewards (train.rewards), torch-free: what each entry names, the checks `launch plan` makes before
launch, and the built-in rule rewards, which are plain Python over the decoded completions.

An entry is one of
- a built-in: `accuracy` (the completion's final answer equals the row's answer), `format` (the completion
  matches train.format_pattern), `length` (shorter completions score higher);
- `reward_model`: the score of train.reward_model, a stage: rm run's output.dir;
- `path/to/file.py:function`: a function in the user's own file. Loading it runs that file's code in every
  rank (as any Python import does): it is read only from the path the recipe names, never searched for.

Every reward is called as TRL calls reward functions: f(prompts=[...], completions=[...], completion_ids=[...],
answer=[...], **more) -> one float (or None: no opinion) per completion.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from launcher.errors import RecipeError

BUILTIN = ("accuracy", "format", "length")
MODEL = "reward_model"
# DeepSeek-R1's reply shape: the reasoning in <think>, then the answer in <answer>
FORMAT_PATTERN = r"<think>.*?</think>\s*<answer>.*?</answer>"
# keywords TRL passes every reward function besides the dataset's columns (prompt, answer)
TRL_KEYWORDS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")
ROW_COLUMNS = ("answer",)


@dataclass(frozen=True)
class RewardSource:
    """One train.rewards entry: kind builtin | model | file; path and function for a user's file."""

    entry: str
    kind: str
    path: str = ""
    function: str = ""


def parse(entry: str) -> RewardSource | None:
    """The entry's source, or None when it is none of the three forms."""
    if entry in BUILTIN:
        return RewardSource(entry, "builtin")
    if entry == MODEL:
        return RewardSource(entry, "model")
    path, colon, function = entry.rpartition(":")
    if colon and path.endswith(".py") and function.isidentifier():
        return RewardSource(entry, "file", path, function)
    return None


def parsed(entry: str) -> RewardSource:
    """The source of an entry the recipe's check has accepted."""
    source = parse(entry)
    if source is None:
        raise ValueError(f"train.rewards entry {entry!r} passed no check")
    return source


def user_function_problem(path: Path, function: str) -> str | None:
    """Why `function` in the file at `path` cannot be a reward, read from its source without running it (None: fine).

    The checks a file's text allows: it exists and parses, defines `function` at its top level, and that function
    takes **kwargs (TRL passes more keywords than a reward reads) and requires no parameter a call does not give."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except FileNotFoundError:
        return "no such file"
    except (OSError, UnicodeDecodeError) as err:
        return f"cannot be read ({err})"
    except SyntaxError as err:
        return f"is not valid Python (line {err.lineno}: {err.msg})"
    found = [
        node
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == function
    ]
    if not found:
        defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        return f"defines no top-level function {function!r} (it defines {defined or 'none'})"
    arguments = found[-1].args
    if arguments.kwarg is None:
        return (
            f"{function}({', '.join(a.arg for a in arguments.args)}) takes no **kwargs: TRL calls it with "
            f"{', '.join(TRL_KEYWORDS + ROW_COLUMNS)} and the row's other columns as keywords"
        )
    if arguments.posonlyargs:
        return f"{function} has positional-only parameters; TRL passes everything by keyword"
    unknown = sorted(_required(arguments) - set(TRL_KEYWORDS + ROW_COLUMNS))
    if unknown:
        return f"{function} requires {unknown}, which no call passes (it gets {list(TRL_KEYWORDS + ROW_COLUMNS)})"
    return None


def _required(arguments: ast.arguments) -> set[str]:
    """The parameters without a default value."""
    positional = arguments.posonlyargs + arguments.args
    without = positional[: len(positional) - len(arguments.defaults)]
    keyword_only = [a for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults) if d is None]
    return {a.arg for a in without + keyword_only}


def load_user_function(path: str, function: str) -> Callable:
    """The user's reward function: imports the file at `path` (runs its code), returns its `function`."""
    spec = importlib.util.spec_from_file_location(f"launcher_user_reward_{Path(path).stem}", path)
    if spec is None or spec.loader is None:  # the plan checked the file: it is gone or no longer Python
        raise RecipeError(
            f"train.rewards: {path} cannot be imported. Fix: name a Python file (path/to/file.py:function)"
        )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, function)


# ---- the built-in rule rewards ---------------------------------------------------------------------------

ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
FRACTION = re.compile(r"\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}")
LATEX_NOISE = re.compile(r"\\text\{([^{}]*)\}|\\left|\\right|\\!|\\,|\\;|\$")


def final_answer(text: str) -> str:
    """The answer a text ends on: its last <answer>…</answer>, else its last \\boxed{…}, else what follows
    GSM8K's `####`, else its last number, else the whole text."""
    for pattern in (ANSWER_TAG, BOXED):
        found = pattern.findall(text)
        if found:
            return found[-1].strip()
    final = GSM8K_FINAL.search(text)
    if final:
        return final.group(1).strip()
    numbers = NUMBER.findall(text)
    return numbers[-1] if numbers else text.strip()


def normalize(answer: str) -> str:
    """Simple LaTeX and number forms made comparable: $, \\text{}, \\left/\\right and spacing dropped, \\frac{a}{b}
    as a/b, thousands separators and a trailing period removed, case folded."""
    text = LATEX_NOISE.sub(lambda m: m.group(1) or "", answer)
    text = FRACTION.sub(r"(\1)/(\2)", text)
    text = re.sub(r"\s+", "", text).rstrip(".").casefold()
    return re.sub(r"(?<=\d),(?=\d{3})", "", text)


def _number(text: str) -> Fraction | None:
    """The text's value when it is a plain number or a fraction a/b, (a)/(b); None otherwise."""
    match = re.fullmatch(r"\(?(-?[\d.]+)\)?(?:/\(?(-?[\d.]+)\)?)?%?", text)
    if not match:
        return None
    try:
        value = Fraction(match.group(1))
        return value / Fraction(match.group(2)) if match.group(2) else value
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(given: str, expected: str) -> bool:
    """Equal after normalize(), or equal as numbers (3 = 3.0 = 6/2 = \\frac{6}{2})."""
    a, b = normalize(given), normalize(expected)
    if a == b:
        return True
    x, y = _number(a), _number(b)
    return x is not None and x == y


class Reward:
    """A reward function with the name TRL logs it under (rewards/<name>/mean)."""

    def __init__(self, name: str, score: Callable[..., list[float]]):
        self.__name__ = name
        self.score = score

    def __call__(self, **kwargs) -> list[float]:
        return self.score(**kwargs)


def accuracy(completions: list[str], answer: list[str], **_) -> list[float]:
    """1 where the completion's final answer equals the row's (the reference's own final answer), else 0."""
    return [float(answers_match(final_answer(c), final_answer(a))) for c, a in zip(completions, answer)]


def format_reward(pattern: str) -> Reward:
    """1 where the whole completion (stripped) matches `pattern` (newlines matched by `.`), else 0."""
    compiled = re.compile(pattern, re.DOTALL)
    return Reward("format", lambda completions, **_: [float(bool(compiled.fullmatch(c.strip()))) for c in completions])


def length_reward(max_new_tokens: int) -> Reward:
    """1 - completion tokens / max_new_tokens: a pressure towards short completions (an empty one scores 1)."""
    return Reward(
        "length",
        lambda completion_ids, **_: [1.0 - min(len(ids), max_new_tokens) / max_new_tokens for ids in completion_ids],
    )


def builtin_reward(name: str, train: Mapping[str, Any]) -> Reward:
    """The built-in reward `name` with the recipe's settings."""
    if name == "accuracy":
        return Reward("accuracy", accuracy)
    if name == "format":
        return format_reward(train["format_pattern"])
    return length_reward(train["max_new_tokens"])
