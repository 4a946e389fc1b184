"""Prompt text of the SYNTHETIC routing benchmark: vocabulary, templates and one builder per task family.

Nothing here is real benchmark data. Each builder maps a difficulty in [0, 1] to a :class:`Prompt` whose wording
shows that difficulty to a sentence encoder: harder prompts draw from more advanced vocabulary tiers (graduate-level
subjects, algorithmic keywords, technical news), have more steps, constraints or sentences, and are longer. Each
prompt also names its subject domain (one of :data:`DOMAINS`, e.g. an MMLU law question is "humanities", an MT-Bench
coding request is "code"), which the outcome model uses for model specialisations. Every random choice comes from the
generator passed in, so the text is a deterministic function of the caller's seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeVar

import numpy as np

T = TypeVar("T")

#: Subject domains a prompt can belong to; models have domain-specific strengths (see ``barp.data.synthetic``).
DOMAINS: list[str] = ["stem", "humanities", "writing", "code", "everyday"]


class Prompt(NamedTuple):
    """A generated prompt and its subject domain (one of :data:`DOMAINS`)."""

    text: str
    domain: str


PERSONS = [("Ava", "she"), ("Liam", "he"), ("Sofia", "she"), ("Noah", "he"), ("Maya", "she"), ("Ethan", "he"),
           ("Chloe", "she"), ("Mateo", "he"), ("Priya", "she"), ("Kenji", "he"), ("Fatima", "she"), ("Omar", "he"),
           ("Grace", "she"), ("Lucas", "he"), ("Zoe", "she"), ("Diego", "he"), ("Hannah", "she"), ("Arjun", "he"),
           ("Elena", "she"), ("Samuel", "he"), ("Nadia", "she"), ("Tomas", "he"), ("Leila", "she"), ("Felix", "he")]
TOWNS = ["Maplewood", "Riverton", "Cedar Falls", "Brookhaven", "Lakeside", "Fairview", "Oak Ridge", "Pine Hollow"]
SURNAMES = ["Okafor", "Lindqvist", "Tanaka", "Moreau", "Castillo", "Novak", "Haddad", "Brennan", "Iyer", "Kowalski"]
ORGS = ["Northwind Labs", "Helix Therapeutics", "Bluepeak Capital", "Orion Analytics", "Verdant Energy", "Atlas Mutual"]


def _pick(rng: np.random.Generator, items: Sequence[T]) -> T:
    return items[int(rng.integers(len(items)))]


def _sample(rng: np.random.Generator, items: Sequence[T], k: int) -> list[T]:
    return [items[int(i)] for i in rng.choice(len(items), size=min(k, len(items)), replace=False)]


def _tier(rng: np.random.Generator, difficulty: float, tiers: int = 3) -> int:
    """Vocabulary tier for a difficulty, jittered so that neighbouring tiers overlap a little."""
    return min(max(int(np.floor(difficulty * tiers + rng.normal(0.0, 0.3))), 0), tiers - 1)


def _count(rng: np.random.Generator, difficulty: float, low: int, high: int) -> int:
    """A count (steps, sentences, constraints) that grows with difficulty from ``low`` to ``high``."""
    return min(max(round(low + difficulty * (high - low) + rng.normal(0.0, 0.6)), low), high)


def _lettered(options: Sequence[str]) -> str:
    return "\n".join(f"{letter}. {text}" for letter, text in zip("ABCD", options))


# ---------------------------------------------------------------------------------------------- mmlu
# Per difficulty tier: subject -> (domain, terms).
MMLU_SUBJECTS: list[dict[str, tuple[str, list[str]]]] = [
    {"elementary mathematics": ("stem", ["fractions", "place value", "the perimeter of a rectangle", "even numbers",
                                         "long division", "rounding to the nearest ten"]),
     "high school biology": ("stem", ["photosynthesis", "the cell membrane", "food chains", "the digestive system",
                                      "pollination", "heredity"]),
     "high school geography": ("humanities", ["river deltas", "population density", "latitude", "urbanization",
                                              "monsoon climates", "trade winds"]),
     "high school us history": ("humanities", ["the Boston Tea Party", "the Louisiana Purchase", "the Bill of Rights",
                                               "the transcontinental railroad", "the New Deal", "the Dust Bowl"]),
     "nutrition": ("everyday", ["dietary fiber", "vitamin C", "whole grains", "saturated fat",
                                "daily calorie intake", "hydration"]),
     "marketing": ("everyday", ["brand loyalty", "a target audience", "market research", "product packaging",
                                "word-of-mouth advertising", "customer surveys"])},
    {"college biology": ("stem", ["meiosis", "allosteric regulation", "the Krebs cycle", "genetic drift", "operons",
                                  "membrane potential"]),
     "high school chemistry": ("stem", ["Le Chatelier's principle", "molar mass", "covalent bonding",
                                        "oxidation states", "buffer solutions", "reaction rates"]),
     "computer security": ("stem", ["buffer overflows", "public-key encryption", "phishing", "hash collisions",
                                    "SQL injection", "two-factor authentication"]),
     "microeconomics": ("humanities", ["price elasticity of demand", "marginal cost", "monopolistic competition",
                                       "deadweight loss", "consumer surplus", "opportunity cost"]),
     "philosophy": ("humanities", ["utilitarianism", "the categorical imperative", "Cartesian dualism",
                                   "social contract theory", "moral relativism", "the problem of induction"]),
     "world religions": ("humanities", ["the Eightfold Path", "the Five Pillars of Islam", "the Protestant "
                                        "Reformation", "Vedic scripture", "the Talmud", "Shinto shrines"])},
    {"abstract algebra": ("stem", ["a cyclic subgroup of prime order", "the quotient ring Z[x]/(x^2 + 1)",
                                   "a normal subgroup of index 2", "the Sylow p-subgroups",
                                   "a field extension of degree 3", "the kernel of a ring homomorphism"]),
     "college physics": ("stem", ["the Lagrangian of a damped oscillator", "Bose-Einstein statistics",
                                  "the Lorentz transformation", "a bound state of the finite square well",
                                  "Maxwell's displacement current", "the adiabatic expansion of an ideal gas"]),
     "machine learning": ("stem", ["the bias-variance decomposition", "the kernel trick", "variational inference",
                                   "vanishing gradients", "the VC dimension", "expectation maximization"]),
     "professional law": ("humanities", ["the rule against perpetuities", "promissory estoppel",
                                         "the excited-utterance exception to hearsay", "adverse possession",
                                         "the parol evidence rule", "strict products liability"]),
     "jurisprudence": ("humanities", ["legal positivism", "Dworkin's theory of law as integrity", "natural law "
                                      "theory", "Hart's rule of recognition", "legal realism", "Rawls's original "
                                      "position"]),
     "professional accounting": ("humanities", ["deferred tax liabilities", "goodwill impairment",
                                                "lease capitalization", "the equity method of investment",
                                                "multi-element revenue recognition", "LIFO inventory valuation"])},
]
MMLU_STEMS = [
    ["Which of the following topics is most closely related to {t1}?",
     "A lesson on {subject} covers several topics. Which of these should a teacher introduce together with {t1}?",
     "{name} is making flashcards about {subject}. Which of the following belongs on the same card as {t1}?"],
    ["Which of the following concepts is most directly needed to explain {t1}?",
     "A student argues that {t1} can be understood without reference to any of the concepts below. Which of them "
     "provides the strongest objection to this claim?", "Which of the following is NOT usually analysed together "
     "with {t1} in an introductory {subject} course?"],
    ["Consider {t1} as treated in a graduate course on {subject}. Which of the following must hold?\n"
     "I. It is consistent with {t2}.\nII. It implies {t3} under the standard assumptions.\n"
     "III. It fails whenever {t4} is present.",
     "Suppose that {t1} applies and that, in addition, {t2} is assumed. A researcher then introduces a further "
     "constraint. Which of the following would follow most directly?",
     "{name}, a specialist in {subject}, claims that {t1} is logically independent of {t2}. Which of the following, "
     "if established, would most seriously undermine this claim?"],
]
ROMAN_OPTIONS = ["I only", "II only", "III only", "I and II only", "I and III only", "II and III only",
                 "I, II, and III"]


def _mmlu_question(rng: np.random.Generator, tier: int, subject: str, with_answer: bool) -> str:
    terms = _sample(rng, MMLU_SUBJECTS[tier][subject][1], 5)
    stem = _pick(rng, MMLU_STEMS[tier])
    text = stem.format(subject=subject, name=_pick(rng, PERSONS)[0],
                       **{f"t{i + 1}": term for i, term in enumerate(terms)})
    options = _sample(rng, ROMAN_OPTIONS, 4) if "\nI. " in text else _sample(rng, terms[1:], 4)
    answer = f" {_pick(rng, 'ABCD')}" if with_answer else ""
    return f"{text}\n{_lettered(options)}\nAnswer:{answer}"


def mmlu_prompt(rng: np.random.Generator, difficulty: float) -> Prompt:
    """Multiple-choice knowledge question (A-D); harder means more advanced subjects; some prompts are few-shot."""
    tier = _tier(rng, difficulty)
    subject = _pick(rng, list(MMLU_SUBJECTS[tier]))
    shots = int(rng.integers(1, 3)) if rng.random() < 0.3 else 0
    parts = [f"The following are multiple choice questions (with answers) about {subject}."]
    parts += [_mmlu_question(rng, tier, subject, with_answer=True) for _ in range(shots)]
    parts.append(_mmlu_question(rng, tier, subject, with_answer=False))
    return Prompt("\n\n".join(parts), MMLU_SUBJECTS[tier][subject][0])


# ---------------------------------------------------------------------------------------------- gsm8k
GSM_ITEMS = [["apples", "cookies", "marbles", "stickers", "pencils", "toy cars", "seashells", "cupcakes"],
             ["concert tickets", "notebooks", "bags of flour", "potted plants", "comic books", "jars of honey"],
             ["shares of stock", "liters of fuel", "square meters of tile", "kilowatt-hours of electricity",
              "units of inventory", "kilograms of coffee beans"]]
# Per difficulty tier: (step sentence, the question that step leads to); the last step sets the question.
GSM_STEPS: list[list[tuple[str, str]]] = [
    [("{Pron} gets {n} more {item} from {friend}.", "How many {item} does {name} have now?"),
     ("{Pron} gives {n} {item} to {friend}.", "How many {item} does {name} have left?"),
     ("{Pron} buys {n} more {item} at the store.", "How many {item} does {name} have now?"),
     ("{Pron} loses {n} of the {item} on the way home.", "How many {item} are left?")],
    [("{Pron} packs the {item} into boxes of {m} each.", "How many full boxes can {name} pack?"),
     ("{Pron} sells {n} of them for ${price} each.", "How much money does {name} make in total?"),
     ("{Pron} buys {m} packs, and each pack has {n} {item}.", "How many {item} does {name} have in total?"),
     ("{Pron} shares the {item} equally among {m} friends.", "How many {item} does each friend get?"),
     ("The next day {pron} buys twice as many {item} as the day before.", "How many {item} does {name} buy in all?")],
    [("{pct}% of the {item} are damaged and must be discarded.", "How many usable {item} remain?"),
     ("The price of the {item} rises by {pct}% at the start of each quarter.",
      "How much more does {name} pay per unit in the fourth quarter than in the first, to the nearest cent?"),
     ("{Pron} pays a {pct}% sales tax on the purchase and then applies a ${price} discount coupon.",
      "What is the final amount {name} pays, in dollars?"),
     ("The ratio of {item} used in the first project to the second project is {m}:{k}.",
      "How many {item} are used in the second project?"),
     ("{Pron} processes {n} {item} per hour for {k} hours and then works at two thirds of that rate for {m} hours.",
      "What is the average number of {item} processed per hour over the whole shift?"),
     ("A supplier charges ${price} per unit for the first {n} units and {pct}% less for each additional unit.",
      "What is the total cost of the order, rounded to the nearest cent?"),
     ("{Pron} also invests ${price} at {pct}% annual interest, compounded monthly, for {k} years.",
      "How much is {name}'s investment worth at the end, rounded to the nearest dollar?")],
]
GSM_OPENINGS = ["{name} has {n} {item}.", "{name} collects {item} and starts the week with {n} of them.",
                "{name} runs a small business that trades {item} and currently holds {n} of them."]


def gsm8k_prompt(rng: np.random.Generator, difficulty: float) -> Prompt:
    """Grade-school math word problem; harder means more steps, bigger numbers, percentages and rates."""
    name, pron = _pick(rng, PERSONS)
    tier = _tier(rng, difficulty)
    item = _pick(rng, GSM_ITEMS[tier])
    high = int(10 ** (1.2 + 2.5 * difficulty))
    sentences = [_pick(rng, GSM_OPENINGS[: tier + 1]).format(name=name, n=int(rng.integers(3, high + 3)), item=item)]
    steps = _count(rng, difficulty, 1, 6)
    tiers = sorted(_tier(rng, difficulty) for _ in range(steps))  # the hardest steps come last
    used: set[str] = set()
    for step_tier in tiers:
        step, question = _pick(rng, [pair for pair in GSM_STEPS[step_tier] if pair[0] not in used] or GSM_STEPS[-1])
        used.add(step)
        sentences.append(step.format(
            Pron=pron.capitalize(), pron=pron, item=item, friend=_pick(rng, PERSONS)[0],
            n=int(rng.integers(2, high + 2)), m=int(rng.integers(2, 13)), k=int(rng.integers(2, 9)),
            price=f"{rng.uniform(0.5, 2 + high / 10):.2f}", pct=int(rng.choice([5, 10, 12, 15, 20, 25, 30, 40]))))
    sentences.append(question.format(name=name, item=item))
    lead = _pick(rng, ["", "Solve the following math problem. ", "Answer the question and show your work. "])
    return Prompt(lead + " ".join(sentences), "stem")


# ---------------------------------------------------------------------------------------------- mbpp
def _longest_increasing(xs: list[int]) -> int:
    best = [1] * len(xs)
    for i in range(len(xs)):
        best[i] = 1 + max([best[j] for j in range(i) if xs[j] < xs[i]], default=0)
    return max(best, default=0)


def _coin_change_ways(coins: list[int], amount: int) -> int:
    ways = [1] + [0] * amount
    for coin in coins:
        for value in range(coin, amount + 1):
            ways[value] += ways[value - coin]
    return ways[amount]


def _edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def _max_subarray(xs: list[int]) -> int:
    best = current = xs[0]
    for x in xs[1:]:
        current = max(x, current + x)
        best = max(best, current)
    return best


# (task description, function name, argument kind, reference solution used to write the asserts)
MBPP_TASKS: list[list[tuple[str, str, str, Callable]]] = [
    [("find the sum of all elements in a list", "sum_list", "list", sum),
     ("check whether a given number is even", "is_even", "int", lambda x: x % 2 == 0),
     ("reverse a given string", "reverse_string", "str", lambda s: s[::-1]),
     ("count the number of vowels in a string", "count_vowels", "str", lambda s: sum(c in "aeiouAEIOU" for c in s)),
     ("convert a number of minutes to seconds", "minutes_to_seconds", "int", lambda x: 60 * x),
     ("check whether a string starts with a capital letter", "starts_with_capital", "str", lambda s: s[:1].isupper())],
    [("remove duplicates from a list while preserving the original order", "remove_duplicates", "list",
      lambda xs: list(dict.fromkeys(xs))),
     ("merge two sorted lists into a single sorted list", "merge_sorted", "lists", lambda a, b: sorted(a + b)),
     ("check whether two strings are anagrams of each other, ignoring case", "are_anagrams", "pair",
      lambda a, b: sorted(a.lower()) == sorted(b.lower())),
     ("rotate a list to the right by a given number of positions", "rotate_right", "list_k",
      lambda xs, k: xs[-(k % len(xs)):] + xs[: -(k % len(xs))] if k % len(xs) else xs),
     ("find the second largest distinct number in a list", "second_largest", "list", lambda xs: sorted(set(xs))[-2])],
    [("find the length of the longest strictly increasing subsequence using dynamic programming",
      "longest_increasing_subsequence", "list", _longest_increasing),
     ("count the number of ways to make change for an amount with unlimited coins of the given denominations, "
      "using a bottom-up dynamic programming table", "coin_change_ways", "coins", _coin_change_ways),
     ("compute the minimum edit (Levenshtein) distance between two strings with dynamic programming",
      "edit_distance", "pair", _edit_distance),
     ("find the maximum sum of a contiguous subarray in linear time (Kadane's algorithm)", "max_subarray_sum",
      "list", _max_subarray),
     ("count the inversions of a list with a divide-and-conquer merge sort in O(n log n) time", "count_inversions",
      "list", lambda xs: sum(a > b for i, a in enumerate(xs) for b in xs[i + 1:]))],
]
MBPP_WORDS = ["python", "banana", "Listen", "silent", "Router", "kitten", "sitting", "level", "Graph", "apple",
              "Dormitory", "dirtyroom", "algorithm", "logarithm"]
MBPP_CONSTRAINTS = ["The solution must run in O(n log n) time or better.", "Do not use any external libraries.",
                    "Handle empty inputs and negative numbers correctly.",
                    "Avoid recomputing overlapping subproblems.", "Include type hints and a docstring."]


def _mbpp_args(rng: np.random.Generator, kind: str, size: int) -> tuple:
    numbers = [int(v) for v in rng.choice(np.arange(-9 if size > 6 else 0, 12 * size), size=size, replace=False)]
    if kind == "list":
        return (numbers,)
    if kind == "list_k":
        return numbers, int(rng.integers(1, 2 * size))
    if kind == "lists":
        return sorted(numbers), sorted(int(v) for v in rng.integers(0, 12 * size, size=size))
    if kind == "coins":
        return sorted(int(c) for c in rng.choice([1, 2, 3, 5, 7, 10, 25], size=3, replace=False)), int(4 * size)
    if kind == "int":
        return (int(rng.integers(1, 200)),)
    words = _sample(rng, MBPP_WORDS, 2)
    return (words[0],) if kind == "str" else tuple(words)


def mbpp_prompt(rng: np.random.Generator, difficulty: float) -> Prompt:
    """Python coding task in MBPP's format; harder means algorithmic tasks, bigger inputs and extra constraints."""
    description, function, arg_kind, solution = _pick(rng, MBPP_TASKS[_tier(rng, difficulty)])
    asserts = []
    for _ in range(3):
        args = _mbpp_args(rng, arg_kind, _count(rng, difficulty, 3, 12))
        asserts.append(f"assert {function}({', '.join(map(repr, args))}) == {solution(*args)!r}")
    constraints = _sample(rng, MBPP_CONSTRAINTS, max(0, _count(rng, difficulty, 0, 3) - 1))
    text = (f"You are an expert Python programmer, and here is your task: Write a Python function to {description}. "
            + "".join(c + " " for c in constraints) + "Your code should pass these tests:\n\n" + "\n".join(asserts))
    return Prompt(text, "code")


# ---------------------------------------------------------------------------------------------- hellaswag
# Per difficulty tier: ("subject | pronoun", setting, steps) captions, or (WikiHow header, None, steps).
HELLASWAG_ACTIVITIES: list[list[tuple[str, str | None, list[str]]]] = [
    [("A man | He", "in a driveway", [
        "sprays the car with a garden hose", "scrubs the hood with a soapy sponge",
        "rinses the soap off the windows", "dries the car with a large towel"]),
     ("A little girl | She", "in front of a bathroom mirror", [
        "puts toothpaste on a pink toothbrush", "brushes her front teeth slowly", "spits into the sink",
        "rinses her mouth with a cup of water"]),
     ("A woman | She", "in a park with her dog", [
        "throws a tennis ball across the grass", "watches the dog chase the ball",
        "takes the ball from the dog's mouth", "pats the dog on the head"]),
     ("A boy | He", "at a kitchen counter", [
        "spreads peanut butter on a slice of bread", "adds a thick layer of jam",
        "presses the two slices together", "cuts the sandwich in half"]),
     ("Two kids | They", "on a sunny beach", [
        "fill a bucket with wet sand", "flip the bucket over to make a tower",
        "decorate the castle with shells", "watch a wave wash the castle away"])],
    [("A young woman | She", "on a small stage", [
        "tunes the strings of a violin", "rests the violin under her chin",
        "plays a slow melody with the bow", "bows to the clapping audience"]),
     ("A gymnast | He", "in a large arena", [
        "salutes the judges", "mounts the balance beam with a jump",
        "performs a back handspring on the beam", "dismounts with a twisting flip"]),
     ("A cook | He", "in a restaurant kitchen", [
        "kneads a ball of pasta dough", "rolls the dough into thin sheets",
        "cuts the sheets into ribbons", "drops the pasta into boiling water"]),
     ("A cyclist | He", "in a repair shop", [
        "removes the wheel from the bike frame", "pries the tire off with a lever",
        "patches the hole in the inner tube", "pumps the tire back up"])],
    [("[header] How to calibrate a telescope finder scope", None,
      ["Point the main telescope at a distant stationary object during the day.",
       "Center the object in the eyepiece at the lowest magnification.",
       "Loosen the alignment screws on the finder bracket.",
       "Turn the screws until the crosshairs rest on the same object.",
       "Repeat the alignment at night on a bright star for finer precision."]),
     ("[header] How to file a provisional patent application", None,
      ["Document the invention with dated drawings and a written description.",
       "Search existing patents and publications for prior art.",
       "Prepare a cover sheet that lists every inventor and their residence.",
       "Submit the specification and pay the filing fee through the patent office portal.",
       "Calendar the twelve-month deadline for the non-provisional application."]),
     ("[header] How to replace the brake pads on a car", None,
      ["Loosen the lug nuts and raise the vehicle safely on jack stands.",
       "Remove the caliper bolts and slide the caliper off the rotor.",
       "Compress the caliper piston with a C-clamp.", "Install the new pads with the wear indicator facing up.",
       "Pump the brake pedal several times before driving to seat the pads."]),
     ("[header] How to maintain a sourdough starter", None,
      ["Discard all but about fifty grams of the starter every morning.",
       "Feed it equal weights of whole wheat flour and lukewarm water.",
       "Mark the level on the jar and note how far it rises within six hours.",
       "Move the jar to the refrigerator once it doubles reliably.",
       "Refresh the refrigerated starter twice before baking with it."]),
     ("[header] How to negotiate a commercial lease renewal", None,
      ["Review the original lease for renewal options and notice deadlines.",
       "Research comparable rents for similar properties in the district.",
       "Request a meeting with the landlord at least six months before expiry.",
       "Propose specific terms on rent escalation and maintenance obligations.",
       "Have an attorney review the amendment before signing."])],
]


def hellaswag_prompt(rng: np.random.Generator, difficulty: float) -> Prompt:
    """Commonsense sentence completion with four endings; harder means longer WikiHow-style procedural contexts."""
    tier = _tier(rng, difficulty)
    subject, setting, steps = _pick(rng, HELLASWAG_ACTIVITIES[tier])
    shown = _count(rng, difficulty, 0 if setting else 1, len(steps) - 1)  # steps shown before the ending
    others = [step for act in HELLASWAG_ACTIVITIES[tier] if act[2] is not steps for step in act[2]]
    distractors = (_sample(rng, steps[:shown], 1) + _sample(rng, others, 3))[:3]
    endings = _sample(rng, [steps[shown]] + distractors, 4)
    if setting is None:
        context = subject + "\n" + " [step] ".join(steps[:shown])
    else:
        subject, pron = subject.split(" | ")
        context = " ".join([f"{subject} is seen {setting}."] + [f"{pron} {step}." for step in steps[:shown]] + [pron])
    text = f"Choose the most plausible continuation.\n\n{context} ...\n{_lettered(endings)}\nAnswer:"
    return Prompt(text, "everyday")


# ---------------------------------------------------------------------------------------------- winogrande
WINOGRANDE_OBJECTS = {  # easy templates and the object pairs that make sense in them
    "The {o1} did not fit into the {o2} because the _ was too big.": [
        ("trophy", "suitcase"), ("couch", "doorway"), ("poster", "envelope"), ("pizza", "oven"),
        ("bicycle", "elevator"), ("painting", "car trunk")],
    "The {o1} did not fit into the {o2} because the _ was too small.": [
        ("trophy", "suitcase"), ("couch", "doorway"), ("foot", "boot"), ("laptop", "backpack"),
        ("turkey", "pan"), ("quilt", "drawer")],
    "{A} poured the juice from the {o1} into the {o2} until the _ was empty.": [
        ("pitcher", "glass"), ("bottle", "cup"), ("carton", "mug"), ("jug", "thermos")],
    "{A} put the {o1} on top of the {o2} because the _ was lighter.": [
        ("pillow", "box"), ("basket", "crate"), ("hat", "suitcase"), ("lamp", "desk")],
    "{A} cleaned the {o1} with the {o2} because the _ was dirty.": [
        ("table", "sponge"), ("window", "cloth"), ("floor", "mop"), ("boots", "brush")],
    "{A} chose the {o1} over the {o2} because the _ was cheaper.": [
        ("jacket", "coat"), ("bike", "scooter"), ("sofa", "armchair"), ("phone", "tablet")],
}
WINOGRANDE_TEMPLATES = [
    list(WINOGRANDE_OBJECTS),
    ["{A} asked {B} for help with the homework because _ was good at math.",
     "{A} lent {B} an umbrella because _ had forgotten one at home.",
     "{A} always beats {B} at chess because _ practices every single day.",
     "{A} thanked {B} for the ride because _ did not own a car.",
     "{A} called {B} for directions because _ had never been to the museum before.",
     "{A} taught {B} how to swim because _ had grown up near the lake.",
     "{A} gave {B} a birthday card because _ had not forgotten the date."],
    ["Even though {A} had rehearsed the keynote for weeks, {B} seemed far more composed at the podium, which "
     "surprised the committee because _ was usually the more anxious speaker.",
     "{A} never quite forgave {B} for the remark at the board meeting, since _ had been the one who insisted on "
     "transparency about the merger in the first place.",
     "Although {A} drafted most of the grant proposal, the review panel credited {B}, so _ quietly resented the "
     "oversight for months without ever raising it.",
     "{A} found {B}'s meticulous budgeting condescending rather than helpful, perhaps because _ had never had to "
     "worry about debt while growing up."],
]


def winogrande_prompt(rng: np.random.Generator, difficulty: float) -> Prompt:
    """Pronoun resolution: a sentence with a blank and two options; harder means subtle social reasoning."""
    tier = _tier(rng, difficulty)
    template = _pick(rng, WINOGRANDE_TEMPLATES[tier])
    (a, _), (b, _) = _sample(rng, PERSONS, 2)
    o1, o2 = _pick(rng, WINOGRANDE_OBJECTS.get(template, [("", "")]))
    sentence = template.format(A=a, B=b, o1=o1, o2=o2)
    first, second = (o1, o2) if template in WINOGRANDE_OBJECTS else (a, b)
    text = f"Fill in the blank in the sentence below.\n{sentence}\nOption 1: {first}\nOption 2: {second}\nAnswer:"
    return Prompt(text, "humanities" if tier == 2 else "everyday")


# ---------------------------------------------------------------------------------------------- mt-bench
# Per difficulty tier: (template, domain).
CHAT_TEMPLATES: list[list[tuple[str, str]]] = [
    [("Write a {form} about {easy}.", "writing"),
     ("Suggest a few names for a new pet {animal} that is {trait}.", "writing"),
     ("Write a friendly email inviting my coworkers to {event} on {day}.", "writing"),
     ("Give me {k} quick tips for {chore}.", "everyday"),
     ("What are some fun things to do in {town} on a weekend?", "everyday"),
     ("Write a thank-you note to a neighbor who helped with {chore}.", "writing"),
     ("What is a good way to explain {concept} to a five-year-old?", "stem"),
     ("If I buy {k} notebooks at $3 each and pay with a $50 bill, how much change do I get?", "stem"),
     ("Write a Python function that {code_easy}.", "code")],
    [("Compose an engaging travel blog post about a recent trip to {place}, highlighting cultural experiences and "
      "must-see attractions.", "writing"),
     ("Write a persuasive product description for {product}, aimed at busy parents.", "writing"),
     ("Pretend you are {persona}. Describe your typical working day in a few paragraphs.", "writing"),
     ("Discuss the main causes and consequences of {history}, and how historians' views of it have changed.",
      "humanities"),
     ("Explain {concept} to a high school student using an everyday analogy.", "stem"),
     ("{A} is older than {B}, and {C} is younger than {B} but older than {D}. Who is the second oldest? Explain "
      "your reasoning step by step.", "stem"),
     ("Write a Python function that {code_mid}, then explain its time and space complexity.", "code")],
    [("Draft {doc} for {audience} about {hard}.", "humanities"),
     ("Write a critical analysis of {hard} for {audience}.", "humanities"),
     ("Design a week-long workshop curriculum on {hard} for {audience}.", "writing"),
     ("Prove that {theorem}, and explain where each hypothesis is used.", "stem"),
     ("Implement {code_hard} in Python, with unit tests, and explain how it behaves in the worst case.", "code")],
]
CHAT_SLOTS = {
    "easy": ["the ocean", "autumn leaves", "a rainy day", "my cat", "friendship", "the first day of spring",
             "a cup of coffee", "the night sky", "grandma's kitchen", "a snowy morning", "the city at dawn"],
    "chore": ["keeping a tidy desk", "watering houseplants", "packing a lunch", "sleeping better", "saving money on "
              "groceries", "staying focused while studying", "making new friends", "cooking rice"],
    "form": ["short poem", "haiku", "limerick", "four-line rhyme", "very short story"],
    "trait": ["very shy", "always hungry", "extremely loud", "a little clumsy", "fluffy and white"],
    "day": ["Friday", "next Tuesday", "the last day of the month", "Saturday afternoon"],
    "animal": ["goldfish", "puppy", "hamster", "parrot", "kitten", "turtle", "rabbit", "hedgehog"],
    "event": ["a potluck lunch", "a birthday party", "a farewell dinner", "a board-game night", "a team picnic"],
    "place": ["Hawaii", "Kyoto", "Lisbon", "Morocco", "Patagonia", "Iceland", "Vietnam", "Oaxaca", "the Scottish "
              "Highlands", "Cape Town"],
    "product": ["a smart water bottle", "a foldable e-bike", "a noise-cancelling baby monitor", "a solar phone "
                "charger", "a self-cleaning lunch box", "an ergonomic backpack"],
    "concept": ["inflation", "photosynthesis", "how vaccines work", "compound interest", "plate tectonics",
                "supply and demand", "the water cycle", "how the internet routes data", "natural selection",
                "black holes"],
    "persona": ["a lighthouse keeper", "a medieval blacksmith", "an astronaut on the space station", "a pirate "
                "captain", "a Victorian detective", "a park ranger in Yellowstone"],
    "history": ["the French Revolution", "the fall of the Western Roman Empire", "the Meiji Restoration",
                "the Cold War arms race", "the printing press in early modern Europe", "the partition of India"],
    "code_easy": ["returns the largest number in a list", "counts the words in a sentence",
                  "checks whether a year is a leap year", "converts a string to title case",
                  "returns the average of a list of numbers"],
    "code_mid": ["finds all pairs in a list that sum to a target value", "groups a list of words into anagram families",
                 "parses a CSV line whose fields may contain quoted commas", "validates a password against five rules",
                 "merges overlapping time intervals"],
    "code_hard": ["a thread-safe LRU cache with time-based expiry", "an interval tree that supports overlap queries",
                  "Dijkstra's shortest-path algorithm for a graph with millions of edges",
                  "a persistent segment tree for range-sum queries", "a lock-free single-producer ring buffer",
                  "a B-tree with deletion and range scans"],
    "theorem": ["there are infinitely many primes of the form 4k + 3", "every finite group of prime order is cyclic",
                "the sum of 1/n^2 converges while the harmonic series diverges",
                "a continuous function on a closed interval attains its maximum",
                "every planar graph is six-colorable", "the square root of 2 is irrational"],
    "doc": ["a policy memo", "a grant proposal", "a briefing note", "an op-ed", "an investor update", "a white paper"],
    "audience": ["a skeptical board of directors", "first-year medical students", "non-technical city council members",
                 "a panel of senior economists", "a parliamentary committee", "union representatives"],
    "hard": ["the trade-offs of carbon border adjustment taxes", "the ethics of algorithmic hiring",
             "the regulation of post-quantum cryptography in banking", "antimicrobial resistance policy",
             "the reproducibility crisis in psychology", "sovereign debt restructuring in emerging markets",
             "liability rules for autonomous vehicles", "the governance of open-source AI models"],
}
CHAT_CONSTRAINTS = {  # hard requests carry several of these, by domain
    "prose": ["use exactly {k} paragraphs", "include a table comparing at least {k} options",
              "present two counterarguments and rebut each of them", "keep every sentence under 20 words",
              "end with a haiku that captures the main point", "write it from the perspective of {persona}",
              "avoid the words 'very', 'really' and 'innovative'", "cite at least {k} quantitative estimates",
              "return the final answer as valid JSON with the keys 'summary' and 'risks'",
              "address the reader in the second person throughout"],
    "stem": ["state every lemma you rely on", "give a second, independent proof",
             "keep the main proof under {k}0 lines", "show where the argument fails if any hypothesis is dropped",
             "typeset every formula in LaTeX"],
    "code": ["state the time complexity of every operation", "include at least {k} edge-case tests",
             "avoid third-party libraries", "make it safe under concurrent access",
             "add type hints and docstrings throughout"],
}
CHAT_FOLLOW_UPS = ["Now rewrite your answer so that a ten-year-old could follow it, keeping every requirement.",
                   "Now critique your own answer: list its three weakest points and revise it to fix them.",
                   "Now cut your answer to half its length without dropping any requirement."]


def mt_bench_prompt(rng: np.random.Generator, difficulty: float) -> Prompt:
    """Open-ended chat, writing, reasoning or coding request; harder means expert topics, several constraints and a
    follow-up turn."""
    tier = _tier(rng, difficulty)
    template, domain = _pick(rng, CHAT_TEMPLATES[tier])
    slots = {key: _pick(rng, values) for key, values in CHAT_SLOTS.items()}
    names = {key: name for key, (name, _) in zip("ABCD", _sample(rng, PERSONS, 4))}
    k = int(rng.integers(3, 6))
    text = template.format(town=_pick(rng, TOWNS), k=k, **slots, **names)
    if tier == 2:
        pool = CHAT_CONSTRAINTS.get(domain, CHAT_CONSTRAINTS["prose"])
        constraints = _sample(rng, pool, _count(rng, difficulty, 2, 6))
        text += " Requirements: " + "; ".join(c.format(k=k, persona=slots["persona"]) for c in constraints) + "."
    if rng.random() < difficulty - 0.4:
        text += "\n\nFollow-up: " + _pick(rng, CHAT_FOLLOW_UPS)
    return Prompt(text, domain)


# ---------------------------------------------------------------------------------------------- arc-challenge
ARC_CATEGORIES = {"a mammal": ["a whale", "a bat", "a dolphin", "a horse"],
                  "a reptile": ["a lizard", "a turtle", "a snake", "a crocodile"],
                  "a renewable energy source": ["wind", "sunlight", "flowing water", "geothermal heat"],
                  "a simple machine": ["a lever", "a pulley", "a ramp", "a wedge"],
                  "a conductor of electricity": ["a copper wire", "an iron nail", "an aluminum can"],
                  "a chemical change": ["iron rusting", "wood burning", "bread baking", "milk souring"]}
ARC_PHENOMENA = {"the Moon shows phases": "different portions of its sunlit half face Earth as it orbits",
                 "coastal towns have milder winters than inland towns": "water heats and cools more slowly than land",
                 "a ball thrown upward slows down": "gravity pulls it back toward Earth",
                 "deep rock layers in a canyon are usually older": "sediments are deposited on top of older layers",
                 "a metal spoon in hot soup feels hot": "metals conduct thermal energy efficiently",
                 "seasons change during the year": "Earth's axis is tilted relative to its orbit"}
ARC_EXPERIMENTS = [("the amount of fertilizer", "the height of bean plants", "pots"),
                   ("the temperature of the water", "how fast sugar dissolves", "beakers"),
                   ("the color of light", "the growth rate of algae", "tanks"),
                   ("the angle of the ramp", "the distance a toy car rolls", "trials")]
ARC_PROCEDURES = ["repeating the investigation several times", "changing two variables at the same time",
                  "using a smaller sample size", "measuring only once at the end",
                  "recording data in a table instead of a graph"]


def arc_challenge_prompt(rng: np.random.Generator, difficulty: float) -> Prompt:
    """Grade-school science multiple choice; harder means explanations of phenomena and experimental design."""
    tier = _tier(rng, difficulty)
    if tier == 0:
        category = _pick(rng, list(ARC_CATEGORIES))
        others = [m for c, members in ARC_CATEGORIES.items() if c != category for m in members]
        stem = f"Which of these is an example of {category}?"
        options = _sample(rng, [_pick(rng, ARC_CATEGORIES[category])] + _sample(rng, others, 3), 4)
    elif tier == 1:
        phenomenon = _pick(rng, list(ARC_PHENOMENA))
        stem = f"Which statement best explains why {phenomenon}?"
        others = [e for p, e in ARC_PHENOMENA.items() if p != phenomenon]
        options = _sample(rng, [ARC_PHENOMENA[phenomenon]] + _sample(rng, others, 3), 4)
    else:
        variable, outcome, unit = _pick(rng, ARC_EXPERIMENTS)
        name, pron = _pick(rng, PERSONS)
        stem = (f"{name} investigates whether {variable} affects {outcome}. {pron.capitalize()} sets up "
                f"{int(rng.integers(3, 7))} {unit} and changes only {variable} between them. {pron.capitalize()} "
                f"measures {outcome} a single time and concludes that {variable} has a strong effect. Which change "
                "to the procedure would most improve the reliability of this conclusion?")
        options = _sample(rng, ARC_PROCEDURES, 4)
        if ARC_PROCEDURES[0] not in options:
            options[int(rng.integers(4))] = ARC_PROCEDURES[0]
    choices = " ".join(f"({letter}) {text}" for letter, text in zip("ABCD", options))
    return Prompt(f"Question: {stem}\nAnswer choices: {choices}\nAnswer:", "stem")


# ---------------------------------------------------------------------------------------------- summarization
# Per difficulty tier: (domain, sentences); the first sentence always leads the passage.
NEWS_TOPICS: list[list[tuple[str, list[str]]]] = [
    [("everyday", [
        "{town} Elementary School held its annual spring fair on Saturday.", "More than {n} families attended.",
        "Students ran booths selling lemonade, cookies and handmade crafts.",
        "The fair raised ${money} for new library books.",
        "Principal {person} thanked the parent volunteers who organized the games.",
        "Organizers hope to make next year's fair even bigger."]),
     ("everyday", [
        "A new playground opened this week in {town}'s Central Park.",
        "The playground has swings, slides and a splash pad.",
        "Children lined up early to be the first to try the zip line.", "The city spent ${money} on the project.",
        "Mayor {person} cut a ribbon at the opening.", "The park is open every day from dawn to dusk."]),
     ("everyday", [
        "A dog that went missing in {town} last winter has been returned to its family.",
        "Volunteers spotted the dog near a farm {k} miles away.", "A microchip helped the shelter find the owners.",
        "{person} said the children cried with joy when they saw their pet again.",
        "The shelter reminds owners to keep their contact details up to date."])],
    [("writing", [
        "{org} launched a budgeting app for small businesses on Tuesday.",
        "The app links bank accounts and sorts expenses automatically.",
        "It costs ${price} per month after a free trial.",
        "Chief executive {person} said that {n} companies tested an early version.",
        "Analysts expect strong competition from established accounting software.",
        "The company plans to add payroll features next year."]),
     ("humanities", [
        "The {town} city council approved a ${money} budget for the coming year.",
        "Spending on road repairs rises by {pct}%.",
        "Two council members voted against the plan, citing higher property taxes.",
        "Council member {person} said the budget protects library hours.",
        "Residents can comment on the plan at a hearing next month.", "The budget takes effect in July."]),
     ("everyday", [
        "The {town} Falcons won the regional basketball final on Sunday night.",
        "Guard {person} scored {k} points, including the winning basket with two seconds left.",
        "The team had lost its first four games of the season.", "More than {n} fans filled the arena.",
        "The coach credited the team's defense and late-season practice schedule.",
        "The Falcons will play in the state tournament next month."])],
    [("stem", [
        "{org} reported results from a phase III randomized controlled trial of its oral anticoagulant.",
        "The trial enrolled {n} patients with atrial fibrillation across {k} countries.",
        "The primary endpoint, stroke or systemic embolism, occurred in {pct}% fewer patients than with warfarin.",
        "Major bleeding was similar between groups, although gastrointestinal bleeding was slightly more common.",
        "Investigators cautioned that patients with severe renal impairment were excluded.",
        "Dr. {person}, the principal investigator, said regulators would receive the data by the end of the year.",
        "Independent experts noted that the non-inferiority margin was wider than in comparable trials.",
        "The company's shares rose {pct}% on the news."]),
     ("humanities", [
        "The central bank held its benchmark rate at {rate}% for a third consecutive meeting.",
        "Policymakers cited persistent services inflation and a tight labor market.",
        "Two members of the committee dissented in favor of a quarter-point cut.",
        "Governor {person} said future decisions would depend on wage growth and energy prices.",
        "Bond yields fell after the statement as traders priced in cuts later in the year.",
        "Economists at {org} warned that the stronger currency could weigh on exporters.",
        "The bank also revised its growth forecast for next year down to {growth}%.",
        "Minutes of the meeting will be published in three weeks."]),
     ("humanities", [
        "An appeals court ruled that {org} must disclose the training data behind its credit-scoring algorithm.",
        "The three-judge panel held that the lender's trade-secret defense did not outweigh applicants' statutory "
        "right to an explanation.", "The decision reverses a lower-court ruling from last year.",
        "Judge {person}, writing for the majority, said opaque models cannot shield discriminatory outcomes.",
        "A dissenting opinion argued that the ruling conflicts with precedent on proprietary information.",
        "Consumer groups estimate that {n} pending complaints could be affected.",
        "{org} said it is weighing an appeal to the state supreme court."]),
     ("stem", [
        "A study of {k} alpine glaciers found that ice loss accelerated by {pct}% over the past decade.",
        "Researchers combined satellite gravimetry with field measurements of surface albedo.",
        "Dust and soot deposits darkened the ice and increased melt during heat waves.",
        "The authors caution that the model does not account for changes in winter snowfall.",
        "Lead author {person} said the findings imply earlier peak runoff for downstream reservoirs.",
        "Engineers at the {town} Water Authority called for revised water-allocation plans."])],
]


def summarization_prompt(rng: np.random.Generator, difficulty: float) -> Prompt:
    """A news passage followed by a summarization request; harder means technical news, longer text, constraints."""
    tier = _tier(rng, difficulty)
    domain, topic = _pick(rng, NEWS_TOPICS[tier])
    shown = _count(rng, difficulty, 3, len(topic))
    body = [topic[0]] + sorted(_sample(rng, topic[1:], shown - 1), key=topic.index)
    person = f"{_pick(rng, PERSONS)[0]} {_pick(rng, SURNAMES)}"
    slots = dict(town=_pick(rng, TOWNS), org=_pick(rng, ORGS), person=person,
                 n=int(rng.integers(40, 4000)), k=int(rng.integers(3, 30)), pct=int(rng.integers(2, 40)),
                 money=f"{int(rng.integers(2, 900)) * 1000:,}", price=int(rng.integers(5, 60)),
                 rate=f"{rng.uniform(1, 6):.2f}", growth=f"{rng.uniform(0.3, 2.5):.1f}")
    passage = " ".join(sentence.format(**slots) for sentence in body)
    instruction = [
        "Summarize the article above in one sentence.",
        "Write a short summary of the article above in two or three sentences.",
        f"Summarize the article above in exactly three bullet points for {_pick(rng, CHAT_SLOTS['audience'])}. "
        "Preserve every numerical figure, name each organization involved, and note any caveats or limitations the "
        "article mentions."][_tier(rng, difficulty)]
    return Prompt(f"Article:\n{passage}\n\n{instruction}", domain)


PromptBuilder = Callable[[np.random.Generator, float], Prompt]
BUILDERS: dict[str, PromptBuilder] = {
    "mmlu": mmlu_prompt, "gsm8k": gsm8k_prompt, "mbpp": mbpp_prompt, "hellaswag": hellaswag_prompt,
    "winogrande": winogrande_prompt, "mt-bench": mt_bench_prompt, "arc-challenge": arc_challenge_prompt,
    "summarization": summarization_prompt,
}
