"""Convert dataset rows of each format into one internal form: a list of chat messages."""

from __future__ import annotations

from launcher.data.registry import DataError, DatasetSpec

Message = dict[str, str]


def alpaca_to_messages(row: dict, columns: dict[str, str], where: str) -> list[Message]:
    """instruction (+ "\\n" + input) -> user, output -> assistant; system and history kept."""
    def col(name: str):
        return row.get(columns.get(name, ""), None)

    prompt, query, response = col("prompt"), col("query"), col("response")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: missing or empty {columns['prompt']!r}")
    if not isinstance(response, str):
        raise DataError(f"{where}: missing {columns['response']!r} (the answer to train on)")
    messages: list[Message] = []
    system = col("system")
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    for turn in col("history") or []:
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2):
            raise DataError(f"{where}: history must be a list of [user, assistant] pairs")
        messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    user = prompt if not query else f"{prompt}\n{query}"
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": response}]
    return messages


def to_messages(rows: list[dict], spec: DatasetSpec) -> list[list[Message]]:
    """Every row of a dataset as messages; errors name the dataset and row."""
    return [alpaca_to_messages(row, spec.columns, f"dataset {spec.name!r} row {index}")
            for index, row in enumerate(rows)]
