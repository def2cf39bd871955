"""A long-document QA task with checkable answers: town chronicles in English prose about invented people.

    rows = make_prompts(64, seed=0, split="heldout")          # [{"id", "context", "query", "answer", ...}]
    write_task("runs/data/prose_qa", seed=0, train=32, heldout=64)   # prompts.jsonl + prompts_eval.jsonl
    is_correct("It was 1874.", rows[0])                       # the answer checker (exact-answer accuracy)

Where the text comes from: nothing is downloaded or copied. Each document is generated from the sentence
templates in this file with a seeded `random.Random`: an invented town (syllable-built names), eight to
fourteen invented residents, each with a trade, a year of arrival, a street and a count of something
(boats, looms, hives ...), written as paragraphs of chronicle prose and interleaved with descriptive
paragraphs about the town (market, river, weather, festivals) that carry no asked-about fact. The names,
years and counts are drawn at random, so no answer can come from a model's pretraining: only from reading.
A document is `context_words` words long (default 900, about 1.2k SmolLM2 tokens; the tokenizer-free
generator counts words, `tests/test_prose_qa.py` measures tokens).

Question types (one per prompt, cycled so each split has all three in equal shares):
- ``single``: one fact about one resident ("In which year did Ilsa Marrow arrive in Corvel?" -> "1874").
- ``combined``: two facts combined ("Who arrived in Corvel earlier, Ilsa Marrow or Tobin Reyes?" -> a name).
- ``unanswerable``: the attribute of a person the chronicle never mentions -> "not stated".

The checker (`is_correct`) reads the response's first sentence, normalised (lower case, no punctuation):
it is right iff it contains the reference answer as a whole-word phrase and none of the question's
distractors (the same attribute of the other residents, the other name of a comparison, or any
year/name/number when the answer is "not stated"), so hedging between candidates never counts.
Train and held-out prompts come from disjoint seeds (`split` is part of the RNG seed).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from lr_jax.eval.reference import ABSTAIN, answer_match

QUESTION_TYPES = ("single", "combined", "unanswerable")
NOT_STATED = ABSTAIN
INSTRUCTION = ("Answer with only the answer: a year, a name, a number or a street. If the chronicle does not "
               "say, answer: not stated.")
TASK_VERSION = 1  # bump when the text or the questions change: it names the data directory

_ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "st", "t", "th", "v",
           "w"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou"]
_CODAS = ["", "l", "n", "r", "s", "th", "m", "nd", "rk", "ll", "st"]
_SHE = ["Ilsa", "Maren", "Petra", "Brenna", "Dalia", "Fenna", "Hesper", "Jessamy", "Linnea", "Nerys", "Orla",
        "Quilla", "Selka", "Ulla", "Vesna", "Ysolde"]
_HE = ["Tobin", "Osric", "Alvar", "Corin", "Edric", "Gideon", "Ivo", "Kasimir", "Matthias", "Piet", "Rasmus",
       "Teodor", "Wendel", "Zeno"]
_FIRST = _SHE + _HE
_TRADES = [("baker", "loaves", "ovens"), ("weaver", "bolts of cloth", "looms"), ("fisher", "nets", "boats"),
           ("beekeeper", "jars of honey", "hives"), ("potter", "bowls", "kilns"),
           ("brewer", "barrels", "vats"), ("smith", "horseshoes", "anvils"),
           ("carpenter", "chairs", "workbenches"), ("dyer", "skeins", "dye tubs"),
           ("cooper", "casks", "lathes"), ("miller", "sacks of flour", "millstones"),
           ("glassblower", "lamps", "furnaces")]
_STREETS = ["Lantern", "Willow", "Tanner", "Harbour", "Chapel", "Mill", "Rope", "Salt", "Orchard", "Bell",
            "Heron", "Quarry", "Ferry", "Thistle", "Copper", "Garden"]
_STREET_KINDS = ["Street", "Lane", "Row", "Way", "Walk"]

_FILLER = [
    'On market days the square filled before dawn with carts from the farms upstream, and the smell of '
    '{food} hung over the stalls until the bells rang for noon. Traders argued about prices in loud, '
    'cheerful voices, and children ran between the awnings chasing the {animals} that had wandered in '
    'from the fields.',
    'The river that runs through {town} was never deep, but in the wet months it rose over the lower '
    'meadows and left a fine grey silt behind. The older residents said the silt made the best gardens in'
    ' the valley, and every spring they planted {food} and beans along the banks as their parents had '
    'done.',
    'Winters in {town} were long and quiet. Snow closed the northern road for weeks at a time, and the '
    'town lived on what it had stored in its cellars: {food}, dried fish and the dark bread that kept for'
    ' a month. In the evenings neighbours gathered around the largest hearths to tell stories and mend '
    'their tools.',
    'Each autumn the town held a festival to mark the end of the harvest. Lanterns were hung from every '
    'window along the main road, musicians played on a wooden stage by the well, and the council handed '
    'out {food} to anyone who had helped bring in the crops. The celebrations often lasted until sunrise.',
    'The town hall stood at the top of the hill, a plain building of pale stone with a slate roof and a '
    'clock that was rarely right. Visitors often remarked that the view from its steps, over the roofs '
    'and the river to the distant hills, was the finest in the whole district, especially on a clear '
    '{season} morning.',
    'Travellers who passed through {town} usually stopped at the inn by the bridge, where the owner '
    'served a thick stew of {food} and told anyone who would listen about the great flood of his '
    "grandfather's time. Few of them stayed longer than a night, but many promised to return, and some of"
    ' them did.',
    'The school occupied two rooms above the old granary. Its single teacher taught reading, sums and the'
    ' names of the stars, and on fine {season} afternoons she took the pupils down to the river to draw '
    'the herons and the {animals} that lived among the reeds.',
    'Disputes in {town} were settled by the council of elders, who met on the first evening of each '
    'month. Most quarrels concerned fences, wandering {animals} or the right to draw water from the '
    'shared wells, and the elders prided themselves on never sending anyone away without an answer.',
]
_FOODS = ["apples", "turnips", "smoked herring", "barley", "plums", "onions", "cabbages", "pears"]
_ANIMALS = ["goats", "geese", "sheep", "dogs", "hens", "pigs"]
_SEASONS = ["spring", "summer", "autumn", "winter"]

_PERSON = [
    '{name} came to {town} in {year} and set up as a {trade} in a narrow house on {street}. {pron_c} '
    'worked from first light, and by the end of the first year {pron} kept {count} {tools}, more than '
    'anyone else in the trade had managed before. Neighbours remembered {obj} as patient, stubborn and '
    'generous with advice.',
    'Among the newcomers of {year} was {name}, a {trade} who rented rooms on {street}. It was said that '
    '{pron} owned exactly {count} {tools}, and {pron} would name each one to any customer who asked. The '
    '{product} that came out of that workshop were sold as far away as the coast.',
    'The chronicle records that {name} arrived in {year}. {pron_c} was a {trade} by training and lived on'
    ' {street} for the rest of {poss} life, where {pron} kept {count} {tools} in a long shed behind the '
    'house. {pron_c} rarely spoke of the town {pron} had left behind.',
    'In {year} a {trade} named {name} settled in {town}. {pron_c} bought a plot on {street}, built a '
    'workshop with {poss} own hands and soon had {count} {tools} in use. Within a few seasons the '
    '{product} from that workshop were known in every village along the river.',
]


def _word(rng: random.Random, parts: int = 2) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(parts))


def _surname(rng: random.Random) -> str:
    return _word(rng, 2).capitalize()


def _town(rng: random.Random) -> str:
    return (_word(rng, 2) + rng.choice(["ford", "mere", "wick", "holm", "by", "stead", "ton"])).capitalize()


def _pronouns(first_name: str) -> dict[str, str]:
    she = first_name in _SHE
    return {"pron": "she" if she else "he", "pron_c": "She" if she else "He", "obj": "her" if she else "him",
            "poss": "her" if she else "his"}


def make_document(rng: random.Random, context_words: int) -> dict[str, Any]:
    """One chronicle: {"town", "people": [{name, trade, year, street, count, tools}], "text"}.

    Residents are added until the text reaches `context_words` words, filler paragraphs between them.
    """
    town = _town(rng)
    people: list[dict[str, Any]] = []
    used_names, used_years, used_streets = set(), set(), set()
    paras: list[str] = [f"This is the chronicle of {town}, a small town on a river, and of the people who "
                        "made their homes there."]
    fillers = list(range(len(_FILLER)))
    rng.shuffle(fillers)
    words = lambda: sum(len(p.split()) for p in paras)
    while words() < context_words or len(people) < 4:
        while True:
            name = f"{rng.choice(_FIRST)} {_surname(rng)}"
            year = rng.randrange(1820, 1900)
            street = f"{rng.choice(_STREETS)} {rng.choice(_STREET_KINDS)}"
            if name.split()[0] not in {n.split()[0] for n in used_names} and year not in used_years \
                    and street not in used_streets:
                break
        used_names.add(name)
        used_years.add(year)
        used_streets.add(street)
        trade, product, tools = rng.choice(_TRADES)
        person = {"name": name, "trade": trade, "year": year, "street": street, "count": rng.randrange(2, 20),
                  "tools": tools}
        people.append(person)
        paras.append(rng.choice(_PERSON).format(town=town, product=product, **person,
                                              **_pronouns(name.split()[0])))
        if fillers and rng.random() < 0.7:
            paras.append(_FILLER[fillers.pop()].format(
                town=town, food=rng.choice(_FOODS), animals=rng.choice(_ANIMALS),
                season=rng.choice(_SEASONS)))
    return {"town": town, "people": people, "text": "\n\n".join(paras)}


def _question(rng: random.Random, kind: str, doc: dict[str, Any]) -> tuple[str, str, list[str]]:
    """(query, reference answer, distractors) of type `kind` about `doc`."""
    town, people = doc["town"], doc["people"]
    p = rng.choice(people)
    others = [q for q in people if q is not p]
    if kind == "single":
        attr = rng.choice(["year", "street", "count"])
        query = {"year": f"In which year did {p['name']} arrive in {town}?",
                 "street": f"On which street did {p['name']} live?",
                 "count": f"How many {p['tools']} did {p['name']} have?"}[attr]
        return query, str(p[attr]), sorted({str(q[attr]) for q in others} - {str(p[attr])})
    if kind == "combined":
        q = rng.choice(others)
        first = p if p["year"] < q["year"] else q
        a, b = (p, q) if rng.random() < 0.5 else (q, p)
        query = f"Who arrived in {town} earlier, {a['name']} or {b['name']}?"
        loser = q if first is p else p
        return query, first["name"], [loser["name"]]
    stranger = f"{rng.choice([f for f in _FIRST if f not in {n['name'].split()[0] for n in people}])} " \
               f"{_surname(rng)}"
    attr = rng.choice(["year", "street"])
    query = {"year": f"In which year did {stranger} arrive in {town}?",
             "street": f"On which street did {stranger} live?"}[attr]
    return query, NOT_STATED, sorted({str(q[attr]) for q in people})


def make_prompts(n: int, seed: int = 0, split: str = "train",
                 context_words: int = 900) -> list[dict[str, Any]]:
    """`n` prompt records `{id, context, query, answer, type, distractors}`; deterministic in all arguments.

    `query` ends with `INSTRUCTION`; one document per prompt; types cycle through `QUESTION_TYPES`.
    """
    rng = random.Random(f"prose_qa:{TASK_VERSION}:{split}:{seed}")
    rows = []
    for i in range(n):
        kind = QUESTION_TYPES[i % len(QUESTION_TYPES)]
        doc = make_document(rng, context_words)
        query, answer, distractors = _question(rng, kind, doc)
        rows.append({"id": f"{split}-{seed}-{i:04d}", "context": doc["text"],
                     "query": f"{query} {INSTRUCTION}", "answer": answer, "type": kind,
                     "distractors": distractors})
    return rows


def is_correct(response: str, row: dict[str, Any]) -> bool:
    """The checker: `lr_jax.eval.reference.answer_match` (first sentence, whole words, no distractor)."""
    return answer_match(response, [row["answer"]], row.get("distractors", []))


def accuracy(responses: dict[str, list[str]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Exact-answer accuracy over `rows` (responses: prompt id -> its responses), overall and per type."""
    by_type: dict[str, list[float]] = {t: [] for t in QUESTION_TYPES}
    for row in rows:
        for r in responses.get(row["id"], []):
            by_type[row["type"]].append(float(is_correct(r, row)))
    every = [x for xs in by_type.values() for x in xs]
    mean = lambda xs: round(sum(xs) / len(xs), 4) if xs else None
    per_type = {f"accuracy_{t}": mean(x) for t, x in by_type.items()}
    return {"accuracy": mean(every), "responses": len(every), **per_type}


def write_task(out_dir: str | Path, *, seed: int = 0, train: int = 32, heldout: int = 64,
               context_words: int = 900) -> tuple[Path, Path]:
    """Write `prompts.jsonl` (train) and `prompts_eval.jsonl` (held out) into `out_dir` unless present."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "prompts.jsonl", out / "prompts_eval.jsonl"
    for path, split, n in ((paths[0], "train", train), (paths[1], "heldout", heldout)):
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in make_prompts(n, seed, split, context_words)))
            tmp.rename(path)
    return paths
