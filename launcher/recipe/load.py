"""Recipe: load a YAML file, apply dotted overrides, validate against the schema, fill defaults.

Every refusal is a RecipeError whose message names where the value came from (file:line or
the override), the dotted key, the value and the fix. No torch import here.
"""

from __future__ import annotations

import copy
import difflib
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import yaml

from launcher.data.templates import TEMPLATES
from launcher.errors import RecipeError, listing, shown
from launcher.recipe import optimizers, schedule
from launcher.recipe.schema import SCHEMA, Key, all_keys
from launcher.recipe.sequence_parallel import check as check_sequence_parallel
from launcher.recipe.yaml_text import YamlRefusal, load_yaml_text
from launcher.registry import engine_spec, method_spec, methods_with, stage_spec, stages_with
from launcher.util.config_file import read_config_text

if TYPE_CHECKING:
    from launcher.recipe.types import Recipe

# Parts of the contract that later issues deliver; refusing them at load is better than
# failing inside a worker after the processes have started.
NOT_YET: dict[str, set] = {}

FLAT = all_keys()


def _where(origins: dict[str, str], key: str) -> str:
    """file:line (or 'override k=v') of a key, falling back to its closest parent's origin."""
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        origin = origins.get(".".join(parts[:end]))
        if origin:
            return origin
    return origins.get("", "recipe")


def read_yaml(path: str | Path) -> tuple[dict, dict[str, str]]:
    """The raw mapping of a recipe file and the file:line of each key."""
    path = Path(path)
    fix = "pass the path of a .yaml recipe, e.g. recipes/sft_tiny.yaml"
    if not path.exists() or path.is_dir():
        hint = " (it is a directory)" if path.is_dir() else ""
        raise RecipeError(f"recipe file not found: {path}{hint}. Fix: {fix}")
    text = read_config_text(path, RecipeError, fix)  # a device, a FIFO or a huge file: refused unread
    return parse_recipe_text(text, str(path))


def parse_recipe_text(text: str, path: str) -> tuple[dict, dict[str, str]]:
    """The raw mapping of a recipe's YAML text and the path:line of each key (`launch ui` reads a form's text)."""
    try:
        raw, origins = load_yaml_text(text, path)
    except YamlRefusal as err:
        raise RecipeError(str(err)) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err)
        raise RecipeError(
            f"{where}: unreadable YAML: {problem}. Fix: check indentation and quoting around that line"
        ) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(
            f"{path}: the recipe must be a YAML mapping of sections (model:, stage:, method:, ...), got a {type(raw).__name__}"
        )
    return raw, origins


def apply_overrides(raw: dict, overrides: list[str], origins: dict[str, str]) -> dict:
    """Return a copy of raw with dotted `key=value` overrides applied; values parse as YAML."""
    merged = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise RecipeError(
                f"override {item!r}: expected key=value. Fix: write it as a dotted key and a value, e.g. train.lr=2e-5"
            )
        key, _, text = item.partition("=")
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise RecipeError(f"override {item!r}: empty key part. Fix: write e.g. data.cutoff_len=1024")
        try:
            value = load_yaml_text(text, f"override {item}", key + ".")[0] if text.strip() else None
        except YamlRefusal as err:
            raise RecipeError(str(err).replace(":1:", ":", 1)) from None
        except yaml.YAMLError:
            value = text  # plain string, e.g. a path with a colon
        node = merged
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                if part in node and node[part] is not None:
                    prefix = ".".join(parts[: depth + 1])
                    raise RecipeError(f"override {item!r}: {prefix} is a value ({node[part]!r}), not a section")
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
        for end in range(1, len(parts)):  # a new section created by the override points here too
            origins.setdefault(".".join(parts[:end]), f"override {item}")
        origins[key] = f"override {item}"
    return merged


def _suggest(key: str) -> str:
    """A 'did you mean' hint for an unknown dotted key."""
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in FLAT if k.rsplit(".", 1)[-1] == leaf]
    if same_leaf:
        return f" Did you mean {same_leaf[0]}? ({leaf} belongs in {same_leaf[0].rsplit('.', 1)[0]})"
    from launcher.recipe.import_lf import lf_hint

    if lf_hint(leaf):  # a LLaMA-Factory argument name
        return (
            f" Did you mean {lf_hint(leaf)}? ({leaf} is LLaMA-Factory's name for it; "
            "`launch import-lf LF.yaml` converts a whole LF config)"
        )
    close = difflib.get_close_matches(key, list(FLAT), n=1, cutoff=0.6)
    if not close:
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        siblings = [k.rsplit(".", 1)[-1] for k in FLAT if k.rsplit(".", 1)[0] == parent and k != parent]
        close_leaf = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.5)
        close = [f"{parent}.{close_leaf[0]}"] if close_leaf and parent else []
    if close:
        return f" Did you mean {close[0]}?"
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    valid = [
        k.removeprefix(parent + ".") if parent else k
        for k in FLAT
        if (k.rsplit(".", 1)[0] == parent if parent else "." not in k)
    ]
    return f" Fix: use one of {listing(valid)} (see `launch schema`)."


def check_value(key: str, value: Any, where: str) -> Any:
    """One value of the dotted recipe key, checked as the recipe's own would be (import-lf's)."""
    return _coerce(key, FLAT[key], value, where)


def _coerce(key: str, spec: Key, value: Any, where: str) -> Any:
    """Check one value against its Key; return it in canonical form (e.g. '2e-5' -> 2e-05)."""

    def fail(problem: str, fix: str) -> RecipeError:
        return RecipeError(f"{where}: {key} = {shown(value)}: {problem}. Fix: {fix}")

    if value is None:
        if spec.nullable:
            return None
        raise RecipeError(f"{where}: {key} is required and not set. Fix: set {key} ({spec.doc})")
    if isinstance(value, str) and value in spec.literals:
        return value
    kind = spec.kind
    if kind == "bool":
        if not isinstance(value, bool):
            raise fail("expected true or false", f"write {key}: true or {key}: false")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            allowed = " or " + " / ".join(repr(x) for x in spec.literals) if spec.literals else ""
            raise fail(
                "expected a whole number" + allowed,
                f"write e.g. {key}: {spec.default if isinstance(spec.default, int) else 1}",
            )
        out: Any = value
    elif kind == "float":
        if isinstance(value, bool):
            raise fail("expected a number", f"write e.g. {key}: {spec.default}")
        if isinstance(value, str):
            try:
                value_num = float(value)
            except ValueError:
                raise fail("expected a number", f"write e.g. {key}: {spec.default}") from None
        elif isinstance(value, (int, float)):
            value_num = float(value)
        else:
            raise fail("expected a number", f"write e.g. {key}: {spec.default}")
        if value_num != value_num or value_num in (float("inf"), float("-inf")):
            raise fail("must be a finite number", f"write e.g. {key}: {spec.default}")
        out = value_num
    elif kind == "str":
        if not isinstance(value, str) or not value.strip():
            raise fail("expected a non-empty string", f"write e.g. {key}: {spec.default or 'value'}")
        out = value
    elif kind == "str_list":
        items = (
            ([part.strip() for part in value.split(",")] if spec.commas else [value])
            if isinstance(value, str)
            else value
        )
        if not isinstance(items, list) or not all(isinstance(x, str) and x.strip() for x in items):
            raise fail("expected a list of non-empty strings", f"write e.g. {key}: [a, b]")
        if spec.choices:
            for item in items:
                if item not in spec.choices:
                    raise fail(f"{item!r} is not one of {list(spec.choices)}", f"use one of {list(spec.choices)}")
        return list(items)
    elif kind == "float_list":
        if not isinstance(value, list) or not value:
            raise fail("expected a list of numbers", f"write e.g. {key}: [1.0, 0.5]")
        item = replace(spec, kind="float", nullable=False, literals=())
        return [_coerce(f"{key}[{index}]", item, number, where) for index, number in enumerate(value)]
    else:
        raise AssertionError(kind)
    if spec.choices and out not in spec.choices:
        close = difflib.get_close_matches(str(out), [str(c) for c in spec.choices], n=1) if spec.guess else []
        hint = f"did you mean {close[0]}?" if close else f"use one of {list(spec.choices)}"
        if key == "model.template":  # an unregistered format: the model's own template is the usual answer
            hint += "; model.template: auto uses the model's own chat template"
        raise fail(f"not one of {list(spec.choices)}", hint)
    if spec.low is not None and (out < spec.low or (out == spec.low and not spec.low_inclusive)):
        op = ">=" if spec.low_inclusive else ">"
        raise fail(f"out of range, must be {op} {spec.low}", f"set {key} {op} {spec.low}")
    if spec.high is not None and (out > spec.high or (out == spec.high and not spec.high_inclusive)):
        op = "<=" if spec.high_inclusive else "<"
        raise fail(f"out of range, must be {op} {spec.high}", f"set {key} {op} {spec.high}")
    return out


def _selector(raw: dict, selector: str) -> Any:
    section, _, name = selector.rpartition(".")  # section "": a top-level key, e.g. stage
    value = (raw.get(section) or {}).get(name) if section else raw.get(name)
    if value is not None:
        return value
    spec = SCHEMA[section or name]
    return (spec[name] if isinstance(spec, dict) else spec).default


def _validate_section(
    raw: Any,
    schema: dict[str, Key],
    prefix: str,
    origins: dict[str, str],
    full_raw: dict,
    dropped: dict[str, list[str]],
) -> dict:
    """Resolve one mapping: refuse unknown keys and keys of another method, fill defaults."""
    section_key = prefix.rstrip(".")
    if not isinstance(raw, dict):
        where = _where(origins, section_key)
        raise RecipeError(f"{where}: {section_key} must be a mapping of keys, got {raw!r}. Fix: see `launch schema`")
    for name in raw:
        if name not in schema:
            dotted = f"{prefix}{name}"
            raise RecipeError(f"{_where(origins, dotted)}: unknown key {dotted}.{_suggest(dotted)}")
    resolved: dict[str, Any] = {}
    for name, spec in schema.items():
        dotted = f"{prefix}{name}"
        if spec.only_for is not None:
            selector, allowed = spec.only_for
            active = _selector(full_raw, selector)
            if active not in allowed:
                if name in raw and _switched_by_override(origins, selector, dotted):
                    dropped.setdefault(f"{selector}={active}", []).append(dotted)
                    continue
                if name in raw:
                    need = " or ".join(f"{selector}: {a}" for a in allowed)
                    raise RecipeError(
                        f"{_where(origins, dotted)}: {dotted} is only valid with {need} (got {selector}: {active}). "
                        f"Fix: remove {dotted} or change {selector}"
                    )
                continue
        value = raw.get(name, spec.default)
        where = _where(origins, dotted)
        if spec.kind == "section":
            if value is None:
                if not spec.nullable:
                    raise RecipeError(f"{where}: {dotted} is required")
                resolved[name] = None
            else:
                resolved[name] = _validate_section(value, spec.fields, dotted + ".", origins, full_raw, dropped)
        else:
            resolved[name] = _coerce(dotted, spec, copy.deepcopy(value), where)
    return resolved


def _check_combinations(r: dict, origins: dict[str, str]) -> None:
    """Refuse combinations of individually valid values that cannot run together."""

    def refuse(key: str, message: str) -> None:
        raise RecipeError(f"{_where(origins, key)}: {message}")

    for dotted, unavailable in NOT_YET.items():
        section, _, name = dotted.partition(".")
        value = r[section].get(name) if name else r[section]
        if value in unavailable:
            refuse(
                dotted,
                f"{dotted}: {value} is part of the recipe contract but not available in this version yet. "
                f"Fix: use one of {sorted(set(FLAT[dotted].choices) - unavailable)}",
            )
    method, dist = r["method"]["name"], r["distributed"]
    method_spec(method).check(r, origins, refuse)
    if r["model"]["adapter"] is not None and not method_spec(method).continues_adapter:
        able = " or ".join(methods_with("continues_adapter"))
        refuse(
            "model.adapter",
            f"model.adapter continues a LoRA adapter, so it needs method.name: {able} (got "
            f"{method}). Fix: set method.name: {able}, or `launch merge` the adapter and "
            "set model.path to the merged dir",
        )
    stage_spec(r["stage"]).check(r, origins, refuse)
    if r["data"]["packing"] != "none" and not stage_spec(r["stage"]).packs:
        able = " or ".join(stages_with("packs"))
        refuse(
            "data.packing",
            f"data.packing: {r['data']['packing']} has no effect in stage: {r['stage']} (only stage: {able} packs "
            "its rows; the others train one sequence per row, pt its cutoff_len blocks). Fix: set data.packing: none",
        )
    if r["data"]["mask_history"] and r["data"]["train_on_prompt"]:
        refuse(
            "data.mask_history",
            "data.mask_history (train on the last reply only) contradicts data.train_on_prompt (train on every "
            "token, prompts included): together every token would be trained. Fix: remove one of them",
        )
    template = r["model"]["template"]
    if r["data"]["train_on_prompt"] and template in TEMPLATES and TEMPLATES[template].efficient_eos:
        refuse(
            "data.train_on_prompt",
            f"data.train_on_prompt with model.template: {template}: LF's {template} labels the end-of-sequence in "
            "place of the role token that ends each reply (efficient eos), training every token as itself would "
            "not; LF refuses the pair too. Fix: remove data.train_on_prompt, or choose another model.template",
        )
    if r["model"]["quantization"] is not None and not method_spec(method).kbit_base:
        able = " or ".join(methods_with("kbit_base"))
        refuse(
            "model.quantization",
            f"model.quantization (QLoRA) needs method.name: {able}, got method.name: {method}. "
            f"Fix: set method.name: {able} or remove model.quantization",
        )
    engine_spec(dist["engine"]).check(r, origins, refuse)
    schedule.check(r, origins, refuse)
    optimizers.check(r, origins, refuse)
    check_sequence_parallel(r, refuse)
    # nnodes > 1 without master_addr is refused by the planner: in a SLURM job (launch sbatch) the
    # allocation names the master
    if r["train"]["eval_steps"] is not None and not r["data"]["eval_datasets"] and r["data"]["val_size"] == 0:
        refuse(
            "train.eval_steps",
            "train.eval_steps is set but there is no evaluation data. "
            "Fix: set data.eval_datasets or data.val_size > 0, or remove train.eval_steps",
        )
    if r["train"]["eval_generate"] and (r["stage"] != "sft" or not r["data"]["eval_datasets"]):
        refuse(
            "train.eval_generate",
            f"train.eval_generate generates replies for data.eval_datasets in stage sft (got stage "
            f"{r['stage']}, eval_datasets {r['data']['eval_datasets']}). Fix: set data.eval_datasets "
            "(e.g. [demo_dev]) with stage: sft, or remove train.eval_generate",
        )
    if not r["data"]["datasets"]:
        refuse(
            "data.datasets", "data.datasets is empty. Fix: name at least one dataset, e.g. data.datasets: [demo_sft]"
        )
    if "none" in r["output"]["report_to"] and len(r["output"]["report_to"]) > 1:
        refuse("output.report_to", "output.report_to mixes none with loggers. Fix: use [none] alone or drop it")


def combination_error(recipe: dict) -> str | None:
    """Why a resolved recipe's combination of values cannot run, or None (the planner asks
    this of each ZeRO stage / offload alternative it lists)."""
    try:
        _check_combinations(recipe, {})
    except RecipeError as err:
        return str(err).removeprefix("recipe: ")
    return None


def _note(line: str) -> None:
    """One line about a value the loader changed for the user (stderr: stdout may be a plan or schema)."""
    print(f"[launch] {line}", file=sys.stderr, flush=True)


def _switched_by_override(origins: dict[str, str], selector: str, dotted: str) -> bool:
    """The method (or stage) was changed on the command line and the key belongs to the recipe file's
    own choice: switching `method.name=freeze` on a LoRA recipe drops its LoRA keys instead of refusing."""
    return origins.get(selector, "").startswith("override") and not origins.get(dotted, "").startswith("override")


def _expand_shorthands(raw: dict, origins: dict[str, str]) -> None:
    """method.name: qlora is LoRA over a 4-bit base (model.quantization's defaults unless the recipe sets it)."""
    method = raw.get("method")
    if isinstance(method, dict) and method.get("name") == "qlora":
        method["name"] = "lora"
        model = raw.setdefault("model", {}) if isinstance(raw.get("model", {}), dict) else None
        if model is not None and model.get("quantization") is None:
            model["quantization"] = {}
            origins.setdefault("model.quantization", _where(origins, "method.name"))


def _implied_defaults(resolved: dict, origins: dict[str, str]) -> None:
    """Defaults that follow from another key the user set: DDP or FSDP means ZeRO off; one node without a hostfile."""
    from launcher.recipe.ds_user_config import (
        adopt_zero,  # a user's DeepSpeed JSON decides ZeRO where the recipe does not
    )

    for line in adopt_zero(resolved, origins, lambda key: _where(origins, key)):
        _note(line)
    dist = resolved["distributed"]
    implied = engine_spec(dist["engine"]).implied_zero  # ddp, fsdp: no ZeRO stage
    if (
        implied is not None
        and dist["zero"] != implied
        and (
            "distributed.zero" not in origins
            or _switched_by_override(origins, "distributed.engine", "distributed.zero")
        )
    ):
        if "distributed.zero" in origins:
            _note(
                f"distributed.engine={dist['engine']} (override): distributed.zero {dist['zero']} of the recipe "
                f"-> {implied} (no DeepSpeed stage)"
            )
        dist["zero"] = implied
    if dist["nnodes"] is None and dist["hostfile"] is None:  # with a hostfile the planner counts its hosts
        dist["nnodes"] = 1


def resolve(raw: dict, origins: dict[str, str], default_output: str = "outputs/run") -> Recipe:
    """Validate a raw recipe mapping and return it fully resolved (every key present)."""
    _expand_shorthands(raw, origins)
    resolved: dict[str, Any] = {}
    dropped: dict[str, list[str]] = {}
    for name in raw:
        if name not in SCHEMA:
            raise RecipeError(f"{_where(origins, name)}: unknown section {name}.{_suggest(name)}")
    for name, spec in SCHEMA.items():
        value = raw.get(name)
        if isinstance(spec, dict):
            resolved[name] = _validate_section({} if value is None else value, spec, name + ".", origins, raw, dropped)
        elif spec.kind == "section":
            resolved[name] = (
                None if value is None else _validate_section(value, spec.fields, name + ".", origins, raw, dropped)
            )
        else:
            resolved[name] = _coerce(name, spec, spec.default if value is None else value, _where(origins, name))
    if resolved["output"]["dir"] is None:
        resolved["output"]["dir"] = default_output
    for switch, keys in dropped.items():  # one line per switch, e.g. method.name=freeze on a LoRA recipe
        _note(f"{switch} (override): dropped the recipe's {', '.join(keys)}, which only apply to another choice")
    _implied_defaults(resolved, origins)
    _check_combinations(resolved, origins)
    return cast("Recipe", resolved)  # every key of the schema, each checked against its Key above


def output_folder(recipe: Recipe) -> str:
    """output.dir as resolve left it: null in the recipe is outputs/<recipe name>."""
    folder = recipe["output"]["dir"]
    assert folder is not None, "resolve fills output.dir"
    return folder


def load_recipe(path: str | Path, overrides: list[str] | None = None, text: str | None = None) -> Recipe:
    """Read, override, validate and resolve a recipe file (or `text`, the YAML of a recipe to be saved
    at `path`). Raises RecipeError."""
    raw, origins = read_yaml(path) if text is None else parse_recipe_text(text, str(path))
    raw = apply_overrides(raw, list(overrides or []), origins)
    return resolve(raw, origins, default_output=f"outputs/{Path(path).stem}")
