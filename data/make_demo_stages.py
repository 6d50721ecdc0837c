"""Generate the bundled demo data of the pt, dpo/orpo and kto stages: a small beekeeping domain.

    python data/make_demo_stages.py            # rewrites data/demo_pt.jsonl, demo_pref.json, demo_kto.json
    python data/make_demo_stages.py --check    # exit 1 if a committed file is stale

Deterministic. demo_pt: domain paragraphs (continued pre-training text). demo_pref: the same
facts as questions with a correct reply (chosen) and a wrong or unhelpful one (rejected),
sharegpt style. demo_kto: the same replies unpaired, alpaca style, kto_tag true for correct
ones and false for the others. The first rows of each file are the ones the data tests read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent

# (question, correct reply, wrong or unhelpful reply, paragraph for pre-training)
FACTS = [
    (
        "How many queens live in a healthy honey bee colony?",
        "One queen; she lays all the eggs.",
        "About a hundred queens share the work.",
        "A honey bee colony has a single queen. She lays up to two thousand eggs a day in spring, and the workers feed and "
        "groom her. When the queen fails, the workers raise a new one from a young larva fed only royal jelly.",
    ),
    (
        "What do worker bees make wax from?",
        "From glands on their abdomen, after eating honey.",
        "They collect wax from tree bark.",
        "Worker bees make wax in eight glands under the abdomen. To make one kilogram of wax a colony eats several "
        "kilograms of honey, so beekeepers reuse drawn comb whenever they can.",
    ),
    (
        "Why do beekeepers use smoke?",
        "Smoke masks the alarm scent and calms the bees while the hive is open.",
        "Smoke makes the honey taste better.",
        "Beekeepers puff cool smoke at the hive entrance before opening it. The smoke masks the alarm pheromone that guard "
        "bees release, and the bees fill up on honey, which makes them calmer during the inspection.",
    ),
    (
        "What is a drone?",
        "A male honey bee; drones mate with queens and do not sting.",
        "A drone is a worker that guards the entrance.",
        "Drones are the male bees of the colony. They are larger than workers, have big eyes and no sting, and their only "
        "task is to mate with a young queen from another colony. In autumn the workers push them out of the hive.",
    ),
    (
        "How long does a worker bee live in summer?",
        "About five to six weeks.",
        "Around ten years.",
        "In summer a worker bee lives five or six weeks. She cleans cells, feeds larvae, builds comb and guards the hive "
        "before she becomes a forager for the last part of her life. Winter bees live for several months.",
    ),
    (
        "What is propolis?",
        "A resin bees collect from buds and use to seal gaps in the hive.",
        "Propolis is the name of the queen's cell.",
        "Propolis is a sticky resin that bees gather from tree buds. They use it to seal cracks, narrow the entrance and "
        "coat the inside of the hive, and it glues frames together, so beekeepers carry a hive tool to pry them apart.",
    ),
    (
        "Why do bees dance?",
        "To tell other foragers the direction and distance of food.",
        "Bees dance to keep warm in winter.",
        "A forager that finds rich flowers performs a waggle dance on the comb. The angle of the waggle run shows the "
        "direction of the food relative to the sun, and its length tells the distance.",
    ),
    (
        "What is varroa?",
        "A parasitic mite that feeds on bees and spreads viruses.",
        "Varroa is a type of flower.",
        "Varroa destructor is a mite that breeds in capped brood cells and feeds on developing bees. It spreads deformed "
        "wing virus. Beekeepers count mites after a sugar roll or on a sticky board and treat the colony when the count "
        "is high.",
    ),
    (
        "When should honey be harvested?",
        "When most cells are capped, so the water content is low.",
        "As soon as the first nectar arrives.",
        "Bees dry nectar until it holds less than about eighteen percent water and then cap the cell with wax. Honey "
        "taken before most cells are capped can ferment, so beekeepers harvest frames that are mostly capped.",
    ),
    (
        "What is a swarm?",
        "Part of a colony leaving with the old queen to found a new nest.",
        "A swarm is a group of wasps attacking a hive.",
        "Swarming is how colonies reproduce. The old queen leaves with about half of the workers, who cluster on a branch "
        "while scouts search for a new home. Beekeepers give colonies space in spring to reduce swarming.",
    ),
    (
        "What do bees collect pollen for?",
        "Pollen is their protein; nurse bees eat it to feed the larvae.",
        "They use pollen to build the comb.",
        "Pollen is the protein food of the colony. Foragers pack it into baskets on their hind legs, store it in cells "
        "near the brood as bee bread, and nurse bees eat it to produce the food they give to the larvae.",
    ),
    (
        "How do bees keep the hive cool?",
        "They fan their wings and spread water to evaporate.",
        "They open windows in the hive.",
        "On hot days bees bring water into the hive and spread it on the comb. Rows of workers fan their wings at the "
        "entrance, and the evaporating water cools the brood nest to about thirty-five degrees.",
    ),
    (
        "How do bees survive winter?",
        "They form a cluster and shiver their flight muscles to make heat.",
        "They sleep alone in empty cells.",
        "In winter the colony forms a tight cluster on the comb. Bees in the middle shiver their flight muscles to make "
        "heat, and the cluster moves slowly over the stored honey, which is why a colony needs enough stores in autumn.",
    ),
    (
        "What is a super?",
        "A box placed above the brood box where bees store surplus honey.",
        "A super is the strongest bee in the colony.",
        "A super is a box of frames placed above the brood chamber. A queen excluder between them keeps the queen below, "
        "so the frames in the super hold only honey that the beekeeper can harvest.",
    ),
    (
        "What is royal jelly?",
        "A secretion of nurse bees fed to young larvae and to queen larvae.",
        "Royal jelly is honey mixed with pollen.",
        "Royal jelly is produced by glands in the heads of young nurse bees. All larvae receive it for a few days, but a "
        "larva chosen to become a queen is fed it for her whole development.",
    ),
    (
        "Why does a beekeeper inspect the brood?",
        "To check that the queen is laying and the larvae are healthy.",
        "To count how many flowers are nearby.",
        "During an inspection the beekeeper looks for eggs, a compact brood pattern and healthy white larvae. Eggs show "
        "the queen was present in the last three days, and a patchy pattern can be a sign of disease or a failing queen.",
    ),
]

ARITHMETIC = [(a, b) for a in (3, 7, 12, 25) for b in (4, 9, 16, 8)]


def pretraining() -> list[dict]:
    first = [{"text": "LoRA adds low-rank matrices to frozen weights."}, {"text": "大模型微调可以只训练少量参数。"}]
    return first + [{"text": paragraph} for _, _, _, paragraph in FACTS]


def preference() -> list[dict]:
    rows = [
        {
            "conversations": [{"from": "human", "value": "Name a prime number."}],
            "chosen": {"from": "gpt", "value": "7 is prime."},
            "rejected": {"from": "gpt", "value": "8 is prime."},
        },
        {
            "conversations": [
                {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello!"},
                {"from": "human", "value": "Is the sky green?"},
            ],
            "chosen": {"from": "gpt", "value": "No, it is usually blue."},
            "rejected": {"from": "gpt", "value": "Yes."},
        },
    ]
    rows += [
        {
            "conversations": [{"from": "human", "value": q}],
            "chosen": {"from": "gpt", "value": good},
            "rejected": {"from": "gpt", "value": bad},
        }
        for q, good, bad, _ in FACTS
    ]
    rows += [
        {
            "conversations": [{"from": "human", "value": f"What is {a} + {b}?"}],
            "chosen": {"from": "gpt", "value": f"{a} + {b} = {a + b}."},
            "rejected": {"from": "gpt", "value": f"{a} + {b} = {a + b + 1}."},
        }
        for a, b in ARITHMETIC
    ]
    return rows


def kto() -> list[dict]:
    rows = [
        {"instruction": "What is 3 x 3?", "output": "9", "kto_tag": True},
        {"instruction": "What is 3 x 3?", "output": "6", "kto_tag": False},
    ]
    for index, (q, good, bad, _) in enumerate(FACTS):  # alternate so every micro batch holds both kinds
        pair = [
            {"instruction": q, "output": good, "kto_tag": True},
            {"instruction": q, "output": bad, "kto_tag": False},
        ]
        rows += pair if index % 2 == 0 else pair[::-1]
    for a, b in ARITHMETIC:
        rows += [
            {"instruction": f"What is {a} x {b}?", "output": str(a * b), "kto_tag": True},
            {"instruction": f"What is {a} x {b}?", "output": str(a * b - 2), "kto_tag": False},
        ]
    return rows


def rendered() -> dict[Path, str]:
    return {
        DATA / "demo_pt.jsonl": "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in pretraining()),
        DATA / "demo_pref.json": json.dumps(preference(), ensure_ascii=False, indent=2) + "\n",
        DATA / "demo_kto.json": json.dumps(kto(), ensure_ascii=False, indent=2) + "\n",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a committed file differs from the generated one"
    )
    files = rendered()
    if parser.parse_args().check:
        stale = [path.name for path, text in files.items() if path.read_text(encoding="utf-8") != text]
        if stale:
            print(f"stale: {', '.join(stale)} (run python data/make_demo_stages.py)", file=sys.stderr)
        return 1 if stale else 0
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
